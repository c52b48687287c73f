"""The benchmark runner keeps working: a tiny run on MemoryStore (nothing about speed asserted).

The benchmarks are not part of the package; this module skips where they are absent (an sdist).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import anyio
import pytest

runner = pytest.importorskip("benchmarks.runner")
report = pytest.importorskip("benchmarks.report")

FIELDS = {
    "scenario",
    "store",
    "history",
    "concurrency",
    "turns_per_s",
    "p50_ms",
    "p99_ms",
    "ratio_vs_raw",
    "ratio_vs_peer",
}


@pytest.mark.anyio
async def test_tiny_run_measures_every_scenario_on_memory_store() -> None:
    config = runner.Config.tiny()
    result = await runner.run(config)

    assert {"turns", "memory", "listing", "serialization"} <= {r.scenario for r in result.records}
    turns = [r for r in result.records if r.scenario == "turns"]
    assert {(r.history, r.concurrency) for r in turns} == {(10, 1), (10, 4), (100, 1), (100, 4)}
    for r in turns:
        assert r.store == "promptstate MemoryStore"
        assert r.turns > 0
        assert r.turns_per_s > 0
        assert 0 < r.p50_ms <= r.p99_ms
        assert r.history <= r.history_mean
        assert r.cpu_us_per_turn > 0
        assert len(r.extra["slices"]) == config.rounds
    pipes = [r for r in result.records if r.scenario == "pipeline"]
    assert {(r.history, r.concurrency) for r in pipes} == {(10, 1), (10, 4), (100, 1), (100, 4)}
    for r in pipes:
        store = next(t for t in turns if (t.history, t.concurrency) == (r.history, r.concurrency))
        assert r.extra["ratio_vs_store"] == pytest.approx(store.turns_per_s / r.turns_per_s)
        assert r.extra["p99_vs_store"] == pytest.approx(r.p99_ms / store.p99_ms)
        assert r.extra["cpu_vs_store"] == pytest.approx(r.cpu_us_per_turn / store.cpu_us_per_turn)
        assert len(r.extra["ratio_vs_store_slices"]) == config.rounds
    listing = [r for r in result.records if r.scenario == "listing"]
    assert [r.extra["sessions"] for r in listing] == [100, 1_000]
    memory = [r for r in result.records if r.scenario == "memory"]
    assert all(r.value > 0 for r in memory)
    # no server-backed contender ran, and nothing failed
    assert not [n for n in result.notes if "failed" in n]

    data = json.loads(json.dumps(result.to_json()))
    assert all(set(record) >= FIELDS for record in data["records"])
    text = report.markdown(result)
    assert "#### In memory" in text
    assert "| promptstate MemoryStore | window | 10 " in text
    assert "### Targets" in text
    assert "| CPU | vs raw | vs peer |" in text
    assert "memory: Pipeline.execute at most 1.3x the bare store turn in every cell" in text
    assert result.meta["loadavg_start"]
    assert "Load average" in text


def test_command_line_writes_json_and_docs_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, page = tmp_path / "r.json", tmp_path / "bench.md"
    page.write_text(
        "# Benchmarks\n\nKept.\n\n## Results\n\n"
        + report.START
        + "\nPREVIOUS-RUN-TEXT\n"
        + report.END
        + "\n\n## After\n"
    )

    runner.main(
        [
            "--tiny",
            "--only",
            "turns,listing",
            "--no-progress",
            "--json",
            str(out),
            "--docs",
            str(page),
        ]
    )

    records = json.loads(out.read_text())["records"]
    assert {r["scenario"] for r in records} == {"turns", "listing"}
    text = page.read_text()
    assert text.startswith("# Benchmarks\n\nKept.\n")
    assert text.endswith("## After\n")
    assert "PREVIOUS-RUN-TEXT" not in text
    assert "promptstate MemoryStore" in text
    assert "| implementation | reads | history |" in capsys.readouterr().out


def test_unknown_scenario_is_refused() -> None:
    with pytest.raises(SystemExit, match="unknown scenario"):
        runner.main(["--tiny", "--only", "nonsense"])


def test_progress_bar_counts_steps() -> None:
    stream = io.StringIO()
    progress = runner.Progress(2, stream=stream)
    progress.step("one")
    progress.step("two")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[" + "#" * 14 + "-" * 14 + "] 1/2")
    assert lines[1].startswith("[" + "#" * 28 + "] 2/2")
    assert lines[1].endswith("two")


def test_adapter_rows_compare_with_their_framework_and_are_never_a_peer() -> None:
    def rec(scenario: str, store: str, kind: str, tps: float, backend: str = "redis") -> Any:
        return runner.Record(
            scenario=scenario,
            store=store,
            history=1000,
            concurrency=64,
            turns_per_s=tps,
            backend=backend,
            kind=kind,
        )

    ours = rec("turns", "promptstate RedisStore", "promptstate", 300.0)
    agents_peer = rec("peers", "openai-agents 0.24.0 RedisSession", "peer", 100.0)
    other_peer = rec("peers", "langgraph 1.0 + AsyncPostgresSaver", "peer", 50.0)
    adapter = rec("peers", "openai-agents PromptStateSession + RedisStore", "adapter", 400.0)
    lc_adapter = rec(
        "peers", "langchain PromptStateChatMessageHistory + RedisStore", "adapter", 200.0
    )
    runner.add_ratios([ours, agents_peer, other_peer, adapter, lc_adapter])
    assert adapter.ratio_vs_peer == pytest.approx(100.0 / 400.0)
    assert adapter.extra["peer"] == agents_peer.store
    assert lc_adapter.ratio_vs_peer is None, "compared with another framework's store"
    # The adapter, faster than every peer, is not taken for the fastest peer.
    assert ours.ratio_vs_peer == pytest.approx(100.0 / 300.0)
    assert ours.extra["peer"] == agents_peer.store
    assert agents_peer.ratio_vs_peer == pytest.approx(100.0 / 300.0)


def test_the_session_index_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    bench_index = pytest.importorskip("benchmarks.bench_index")
    bench_index.main(["--tiny", "--stores", "memory"])
    out = capsys.readouterr().out
    assert "| MemoryStore |" in out
    assert "merge / append" in out
    assert "list_by_prefix (10)" in out
    assert "failed" not in out


def test_parts_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    bench = pytest.importorskip("benchmarks.bench_parts")
    bench.main(["--sizes", "1000", "--budget", "0.001"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1,000 ")]
    assert len(rows) == 1
    assert rows[0].endswith("x |")


def test_gc_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    bench = pytest.importorskip("benchmarks.bench_gc")
    bench.main(["--sessions", "4", "--history", "60", "--rounds", "2", "--seconds", "0.05"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    turns = [line.split(" | ")[:2] for line in rows[1:]]
    assert turns == [
        ["| default", "store"],
        ["| default", "pipeline"],
        ["| gc.freeze()", "store"],
        ["| gc.freeze()", "pipeline"],
    ]


def test_ladder_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    bench = pytest.importorskip("benchmarks.bench_ladder")
    anyio.run(bench.main, ["--stores", "memory,sqlite", "--rounds", "2", "--turns", "5"])
    out = capsys.readouterr().out.splitlines()
    layers = [
        "bare",
        "store calls",
        "load, call, save",
        "+ TokenBudget",
        "default stages",
        "+ MockProvider",
    ]
    for store in ("memory", "sqlite"):
        rows = [line.split(" | ") for line in out if line.startswith(f"| {store} |")]
        assert [row[2] for row in rows] == layers
        assert all(row[4].endswith("x") for row in rows)
        assert len({row[1] for row in rows}) == 1  # one window for every layer


def test_peer_targets_give_the_spread_across_slices() -> None:
    def rec(scenario: str, store: str, kind: str, tps: float, slices: list[float]) -> Any:
        return runner.Record(
            scenario=scenario,
            store=store,
            history=1000,
            concurrency=64,
            turns_per_s=tps,
            backend="redis",
            kind=kind,
            extra={"slices": slices},
        )

    ours = rec("turns", "promptstate RedisStore", "promptstate", 300.0, [1.0, 1.5])
    peer = rec("peers", "openai-agents 0.24.0 RedisSession", "peer", 100.0, [3.0, 3.0])
    runner.add_ratios([ours, peer])
    found = {title: (holds, detail) for title, holds, detail in report.targets([ours, peer], {})}
    holds, detail = found[
        "history 1,000, 64 sessions: at least 3x the turns/s of openai-agents RedisSession"
    ]
    assert holds is True
    assert detail.startswith("3.0x (2.0-3.0x per slice)")


def test_a_saved_run_is_reported_again_from_its_json(tmp_path: Path) -> None:
    out, page = tmp_path / "r.json", tmp_path / "bench.md"
    page.write_text("# Benchmarks\n\n" + report.START + "\nOLD\n" + report.END + "\n")
    runner.main(["--tiny", "--only", "turns,pipeline", "--no-progress", "--json", str(out)])
    report.main([str(out), "--docs", str(page)])
    text = page.read_text()
    assert "OLD" not in text
    assert "| Pipeline + MockProvider on MemoryStore | window | 10 " in text
    again = report.load(out)
    assert {r.scenario for r in again.records} == {"turns", "pipeline"}
    assert again.records[0].cpu_us_per_turn is not None


def test_plots_draw_every_kind_of_row(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    plots = pytest.importorskip("benchmarks.plots")

    def rec(store: str, kind: str, history: int, concurrency: int) -> Any:
        return runner.Record(
            scenario="peers" if kind in ("peer", "adapter") else "turns",
            store=store,
            history=history,
            concurrency=concurrency,
            turns_per_s=100.0,
            p50_ms=1.0,
            backend="redis",
            kind=kind,
        )

    records = [
        rec(store, kind, h, c)
        for store, kind in (
            ("promptstate RedisStore", "promptstate"),
            ("openai-agents RedisSession", "peer"),
            ("openai-agents PromptStateSession + RedisStore", "adapter"),
        )
        for h in (10, 1000)
        for c in (1, 16)
    ]
    result = runner.Result(meta={}, records=records, notes=[], external={})
    written = plots.write(result, tmp_path)
    assert [p.name for p in written] == [
        "bench_latency_vs_history.png",
        "bench_throughput_vs_concurrency.png",
    ]
