"""Turning a run's records into markdown: tables, the targets and whether they hold."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

START = "<!-- results:start (written by python -m benchmarks --docs; edits here are replaced) -->"
END = "<!-- results:end -->"

_KIND_ORDER = {"raw": 0, "promptstate": 1, "pipeline": 2, "peer": 3, "adapter": 4}


def _f(value: float | None, digits: int = 2) -> str:
    if value is None:
        return ""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def _table(header: list[str], align: str, rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


_BACKEND_ORDER = {"redis": 0, "postgres": 1, "sqlite": 2, "memory": 3}
_BACKEND_TITLE = {
    "redis": "Redis",
    "postgres": "PostgreSQL",
    "sqlite": "SQLite",
    "memory": "In memory",
}


def _turn_rows(records: list[Any]) -> list[Any]:
    return [r for r in records if r.scenario in ("turns", "pipeline", "raw", "peers")]


def headline_table(records: list[Any], history: int = 1000, concurrency: int = 64) -> str:
    rows = [r for r in _turn_rows(records) if r.history == history and r.concurrency == concurrency]
    if not rows:
        return ""
    rows.sort(key=lambda r: (_BACKEND_ORDER.get(r.backend, 9), _KIND_ORDER.get(r.kind, 9), r.store))
    return _table(
        [
            "backend",
            "implementation",
            "reads",
            "turns/s",
            "p50 ms",
            "p99 ms",
            "CPU µs/turn",
            "ratio_vs_raw",
            "ratio_vs_peer",
        ],
        ["---", "---", "---", "---:", "---:", "---:", "---:", "---:", "---:"],
        (
            [
                r.backend,
                r.store,
                r.reads or "",
                _f(r.turns_per_s, 0),
                _f(r.p50_ms, 3),
                _f(r.p99_ms, 3),
                _f(r.cpu_us_per_turn, 0),
                _x(r.ratio_vs_raw),
                _x(r.ratio_vs_peer),
            ]
            for r in rows
        ),
    )


def turns_tables(records: list[Any]) -> str:
    """One table per backend."""
    rows = _turn_rows(records)
    parts = []
    for backend in sorted({r.backend for r in rows}, key=lambda b: _BACKEND_ORDER.get(b, 9)):
        parts += [
            f"#### {_BACKEND_TITLE.get(backend, backend)}",
            "",
            turns_table([r for r in rows if r.backend == backend], with_backend=False),
            "",
        ]
    return "\n".join(parts).rstrip()


def turns_table(records: list[Any], *, with_backend: bool = True) -> str:
    rows = _turn_rows(records)
    rows.sort(
        key=lambda r: (r.backend, r.history, r.concurrency, _KIND_ORDER.get(r.kind, 9), r.store)
    )
    table = _table(
        [
            "backend",
            "implementation",
            "reads",
            "history",
            "sessions",
            "turns/s",
            "p50 ms",
            "p99 ms",
            "CPU µs/turn",
            "ratio_vs_raw",
            "ratio_vs_peer",
        ],
        ["---", "---", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:"],
        (
            [
                r.backend,
                r.store,
                r.reads or "",
                f"{r.history:,}" + (f" (~{r.history_mean:,.0f})" if r.history_mean else ""),
                str(r.concurrency),
                _f(r.turns_per_s, 0),
                _f(r.p50_ms, 3),
                _f(r.p99_ms, 3),
                _f(r.cpu_us_per_turn, 0),
                _x(r.ratio_vs_raw),
                _x(r.ratio_vs_peer),
            ]
            for r in rows
        ),
    )
    if with_backend:
        return table
    # drop the first column
    return "\n".join(
        "| " + line.split(" | ", 1)[1] if line.startswith("| ") else "|" + line.split("|", 2)[2]
        for line in table.splitlines()
    )


def memory_table(records: list[Any]) -> str:
    rows = sorted(
        (r for r in records if r.scenario == "memory"),
        key=lambda r: (r.backend, _KIND_ORDER.get(r.kind, 9), r.store),
    )
    return _table(
        [
            "backend",
            "implementation",
            "messages/session",
            "bytes per message",
            "bytes per message a turn adds",
            "ratio_vs_raw",
            "ratio_vs_peer",
        ],
        ["---", "---", "---:", "---:", "---:", "---:", "---:"],
        (
            [
                r.backend,
                r.store,
                f"{r.history:,}",
                _f(r.value, 0),
                _f(r.extra.get("turn_bytes_per_message"), 0),
                _x(r.ratio_vs_raw),
                _x(r.ratio_vs_peer),
            ]
            for r in rows
        ),
    )


def listing_table(records: list[Any]) -> str:
    rows = [r for r in records if r.scenario == "listing"]
    return _table(
        ["store", "sessions stored", "p50 ms", "p99 ms", "x the smallest"],
        ["---", "---:", "---:", "---:", "---:"],
        (
            [
                r.store,
                f"{r.extra['sessions']:,}",
                _f(r.p50_ms, 3),
                _f(r.p99_ms, 3),
                _x(r.extra.get("x_smallest")),
            ]
            for r in rows
        ),
    )


def serialization_table(records: list[Any]) -> str:
    rows = [r for r in records if r.scenario == "serialization"]
    return _table(
        ["messages", "op", "implementation", "µs per state", "ratio_vs_peer"],
        ["---:", "---", "---", "---:", "---:"],
        (
            [f"{r.history:,}", r.extra["op"], r.store, _f(r.value, 1), _x(r.ratio_vs_peer)]
            for r in rows
        ),
    )


# -- targets ----------------------------------------------------------------------------------


def _slice_spread(slow: Any, fast: Any) -> str:
    """`` (a-b per slice)``: ``slow``'s time per turn / ``fast``'s in each slice of the cell
    (both ran in every slice), or nothing when the slices are not known."""
    mine, theirs = slow.extra.get("slices") or [], fast.extra.get("slices") or []
    ratios = [a / b for a, b in zip(mine, theirs, strict=False) if a and b]
    if len(ratios) < 2:
        return ""
    return f" ({min(ratios):.1f}-{max(ratios):.1f}x per slice)"


def targets(records: list[Any], meta: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """Each target of issues 8 and 14: (target, holds (None: not measured), the numbers)."""
    found: list[tuple[str, bool | None, str]] = []
    turns = [r for r in records if r.scenario == "turns" and r.turns_per_s]

    # 1. within 1.3x of the raw floor, at every history length
    for backend in ("redis", "postgres"):
        mine = [r for r in turns if r.backend == backend and r.ratio_vs_raw is not None]
        title = f"{backend}: promptstate's turn within 1.3x of the raw floor at every history"
        if not mine:
            found.append((title, None, "not measured"))
            continue
        worst: dict[int, Any] = {}
        for r in mine:
            if r.history not in worst or r.ratio_vs_raw > worst[r.history].ratio_vs_raw:
                worst[r.history] = r
        detail = "; ".join(
            f"history {h:,}: worst {w.ratio_vs_raw:.2f}x (at {w.concurrency} sessions)"
            for h, w in sorted(worst.items())
        )
        found.append((title, all(w.ratio_vs_raw <= 1.3 for w in worst.values()), detail))

    # 2. throughput against the peers at history 1,000 and 64 sessions
    wanted = (
        ("openai-agents", "RedisSession", 3.0),
        ("langchain-postgres", "PostgresChatMessageHistory", 5.0),
        ("openai-agents", "SQLAlchemySession", 10.0),
    )
    for lib, cls, factor in wanted:
        title = f"history 1,000, 64 sessions: at least {factor:g}x the turns/s of {lib} {cls}"
        peer = [
            r
            for r in records
            if r.scenario == "peers"
            and cls in r.store
            and r.history == 1000
            and r.concurrency == 64
        ]
        if not peer or peer[0].ratio_vs_peer is None:
            found.append((title, None, "not measured in this run"))
            continue
        speedup = 1.0 / peer[0].ratio_vs_peer
        ours = [
            r
            for r in turns
            if r.backend == peer[0].backend and r.history == 1000 and r.concurrency == 64
        ]
        spread = _slice_spread(peer[0], ours[0]) if ours else ""
        found.append(
            (
                title,
                speedup >= factor,
                f"{speedup:.1f}x{spread} ({peer[0].turns_per_s:,.0f} turns/s for the peer)",
            )
        )

    # 3. turn cost at 10,000 messages at most 1.3x that at 10
    by_store: dict[str, dict[tuple[int, int], Any]] = {}
    for r in turns:
        by_store.setdefault(r.store, {})[(r.history, r.concurrency)] = r
    histories = sorted({r.history for r in turns})
    top = histories[-1] if histories else None
    for store, cells in sorted(by_store.items()):
        title = f"{store}: turn cost at {top:,} messages at most 1.3x that at 10" if top else store
        pairs = [
            (c, cells[(top, c)].time_per_turn / cells[(10, c)].time_per_turn)
            for (h, c) in sorted(cells)
            if h == 10 and top and (top, c) in cells
        ]
        if not pairs or top == 10:
            found.append((title, None, "not measured"))
            continue
        detail = "; ".join(f"{c} sessions: {x:.2f}x" for c, x in pairs)
        mid = [
            (c, cells[(top, c)].time_per_turn / cells[(1000, c)].time_per_turn)
            for (h, c) in sorted(cells)
            if h == 1000 and top and top != 1000 and (top, c) in cells
        ]
        if mid:
            detail += " (against 1,000 messages, where both read a full window of 50: " + (
                "; ".join(f"{c} sessions: {x:.2f}x" for c, x in mid) + ")"
            )
        found.append((title, all(x <= 1.3 for _, x in pairs), detail))

    # 4. issue 14: the pipeline costs what the store costs
    pipes = [r for r in records if r.scenario == "pipeline" and "ratio_vs_store" in r.extra]
    for backend in sorted({r.backend for r in pipes}, key=lambda b: _BACKEND_ORDER.get(b, 9)):
        mine = [r for r in pipes if r.backend == backend]
        worst = max(mine, key=lambda r: r.extra["ratio_vs_store"])
        over = [r for r in mine if r.extra["ratio_vs_store"] > 1.3]
        found.append(
            (
                f"{backend}: Pipeline.execute at most 1.3x the bare store turn in every cell",
                not over,
                f"worst {worst.extra['ratio_vs_store']:.2f}x (history {worst.history:,}, "
                f"{worst.concurrency} sessions); {len(mine) - len(over)} of {len(mine)} cells "
                "within",
            )
        )
        tails = [r for r in mine if r.concurrency in (64, 256) and "p99_vs_store" in r.extra]
        title = f"{backend}: the pipeline's p99 at most 1.5x the store's at 64 and 256 sessions"
        if not tails:
            found.append((title, None, "not measured"))
            continue
        found.append(
            (
                title,
                all(r.extra["p99_vs_store"] <= 1.5 for r in tails),
                "; ".join(
                    f"{r.history:,}/{r.concurrency}: {r.extra['p99_vs_store']:.2f}x" for r in tails
                ),
            )
        )

    # 5. listing among many at most 2x listing among few
    listing = [r for r in records if r.scenario == "listing"]
    for backend in ("redis", "postgres"):
        rows = sorted(
            (r for r in listing if r.backend == backend), key=lambda r: r.extra["sessions"]
        )
        title = f"{backend}: list_by_prefix of 10 among many sessions at most 2x among 1,000"
        if len(rows) < 2:
            found.append((title, None, "not measured"))
            continue
        x = rows[-1].p50_ms / rows[0].p50_ms
        found.append(
            (
                title,
                x <= 2.0,
                f"{rows[0].extra['sessions']:,}: {rows[0].p50_ms:.3f} ms, "
                f"{rows[-1].extra['sessions']:,}: {rows[-1].p50_ms:.3f} ms = {x:.2f}x",
            )
        )
    return found


def pipeline_overhead(records: list[Any]) -> str:
    """The pipeline's time per turn, p99 and CPU per turn over the bare store turn's, per cell."""
    rows = [r for r in records if r.scenario == "pipeline" and "ratio_vs_store" in r.extra]
    if not rows:
        return ""
    rows.sort(key=lambda r: (_BACKEND_ORDER.get(r.backend, 9), r.history, r.concurrency))

    def spread(r: Any) -> str:
        slices = r.extra.get("ratio_vs_store_slices") or []
        if len(slices) < 2:
            return ""
        return f"{min(slices):.2f}-{max(slices):.2f}"

    return _table(
        [
            "backend",
            "history",
            "sessions",
            "time per turn ÷ store",
            "per slice",
            "p99 ÷ store p99",
            "CPU per turn ÷ store",
            "model saw",
        ],
        ["---", "---:", "---:", "---:", "---:", "---:", "---:", "---:"],
        (
            [
                r.backend,
                f"{r.history:,}",
                str(r.concurrency),
                _x(r.extra["ratio_vs_store"]),
                spread(r),
                _x(r.extra.get("p99_vs_store")),
                _x(r.extra.get("cpu_vs_store")),
                r.note.removeprefix("the model saw ").removesuffix(" messages"),
            ]
            for r in rows
        ),
    )


def targets_list(result: Any) -> str:
    lines = []
    for title, holds, detail in targets(result.records, result.meta):
        if holds is None:
            lines.append(f"- {title}: {detail}.")
        else:
            lines.append(f"- {title}: {'holds' if holds else '**missed**'}: {detail}.")
    return "\n".join(lines)


def _load_text(meta: dict[str, Any]) -> str:
    start, end = meta.get("loadavg_start"), meta.get("loadavg_end")
    if not start:
        return ""
    text = f" Load average (1/5/15 min) at the start: {', '.join(f'{x:.2f}' for x in start)}"
    if end:
        text += f"; at the end: {', '.join(f'{x:.2f}' for x in end)}"
    return text + "."


def markdown(result: Any, images: list[Path] | None = None, image_base: str = "") -> str:
    meta = result.meta
    v = meta["versions"]
    parts = [
        f"Run {meta['started']} ({meta['mode']} mode, {meta.get('seconds', 0):.0f} s): "
        f"`{meta['command']}`",
        "",
        f"Machine: {meta['machine']}; {meta['platform']}." + _load_text(meta),
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
    ]
    records = result.records
    if any(r.scenario in ("turns", "pipeline", "raw", "peers") for r in records):
        parts += [
            "",
            "### Turns",
            "",
            "`history` is the length a cell starts from (in brackets: the mean length while it "
            "ran, since every turn adds two); `sessions` is the number of concurrent tasks, "
            "each on its own session. `reads`: `window` = the newest 50 messages, `full` = the "
            "whole history (the library cannot read less). `ratio_vs_raw` (on promptstate rows) "
            "= promptstate's time per turn / the raw floor's on the same server; "
            "`ratio_vs_peer` = promptstate's store time per turn / the peer's (on a peer row: that "
            "peer; on a promptstate store row: the fastest peer of the cell). The framework "
            "adapters (`PromptStateSession`, `PromptStateChatMessageHistory`) are driven exactly "
            "like their framework's own stores; on their rows `ratio_vs_peer` = the adapter's "
            "time per turn / that of the same framework's own store on the same backend "
            "(below 1: switching stores makes the framework's turns faster). "
            "Time per turn = 1 / turns/s of the cell. Above 1 means promptstate is slower.",
            "",
        ]
        headline = headline_table(records)
        if headline:
            parts += ["At history 1,000 and 64 concurrent sessions:", "", headline, ""]
        parts += [turns_tables(records)]
    if images:
        parts += ["", "### Plots", ""]
        parts += [f"![{p.stem.replace('_', ' ')}]({image_base}{p.name})" for p in images]
    if any(r.scenario == "memory" for r in records):
        parts += ["", "### Memory per stored message", "", memory_table(records)]
        parts += [
            "",
            "`ratio_vs_raw` = promptstate's bytes / the raw layout's; `ratio_vs_peer` = "
            "promptstate's bytes / the peer's (above 1: promptstate uses more).",
        ]
    if any(r.scenario == "listing" for r in records):
        parts += ["", "### list_by_prefix (10 matching sessions)", "", listing_table(records)]
    if any(r.scenario == "serialization" for r in records):
        parts += [
            "",
            "### Serialization",
            "",
            serialization_table(records),
            "",
            "`ratio_vs_peer` = promptstate's time / the other's (below 1: promptstate faster).",
        ]
    overhead = pipeline_overhead(records)
    if overhead:
        parts += [
            "",
            "### What the pipeline adds",
            "",
            "`Pipeline.execute` with `MockProvider` against the bare store turn (`load(last=50)` + "
            "`append` of 2) in the same cell: time per turn over the cell, the same ratio in "
            "each slice of the cell (each slice runs both, in alternating order: the range "
            "shows how much the machine moved it), p99 latency, and process CPU per turn "
            "(what the client does, apart from waiting for the server). `model saw` = the "
            "messages the pipeline sent (its window is what `TokenBudget` kept, plus the new "
            "message).",
            "",
            overhead,
        ]
    parts += ["", "### Targets", "", targets_list(result)]
    if result.notes:
        parts += ["", "### Notes from the run", ""]
        parts += [f"- {n}" for n in result.notes]
    for name, (command, output) in result.external.items():
        if not any(line.startswith("|") for line in output.splitlines()):
            output = f"```text\n{output}\n```"  # plain text columns: keep them aligned
        parts += ["", f"### {name}: its own benchmark", "", f"`{command}`", "", output]
    return "\n".join(parts)


def write_docs(result: Any, path: Path, images: list[Path]) -> None:
    """Replace the results section of ``path`` (between the markers) with this run's."""
    rel = ""
    if images:
        try:
            rel = str(images[0].parent.resolve().relative_to(path.parent.resolve())) + "/"
        except ValueError:
            rel = str(images[0].parent.resolve()) + "/"
    body = f"{START}\n\n{markdown(result, images, rel)}\n\n{END}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        text = head + body + tail
    else:
        text = text.rstrip("\n") + "\n\n## Results\n\n" + body + "\n"
    path.write_text(text)
