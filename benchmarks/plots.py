"""Plots of a run (matplotlib, the optional ``plots`` group): latency against history length and
throughput against concurrency, one panel per backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

_STYLE = {"raw": ":", "promptstate": "-", "pipeline": "--", "peer": "-."}
_BACKENDS = ("redis", "postgres", "sqlite", "memory")


def _turns(result: Any) -> list[Any]:
    return [
        r
        for r in result.records
        if r.scenario in ("turns", "pipeline", "raw", "peers") and r.turns_per_s
    ]


def _panels(rows: list[Any]) -> list[str]:
    present = {r.backend for r in rows}
    return [b for b in _BACKENDS if b in present]


def _figure(n: int) -> tuple[Any, list[Any]]:
    cols = min(2, n)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(6.4 * cols, 4.6 * nrows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _short(name: str) -> str:
    return (
        name.replace("PostgresChatMessageHistory", "PostgresChatMsgHistory")
        .replace("Pipeline + MockProvider on ", "Pipeline on ")
        .replace(" + AsyncPostgresSaver", "+AsyncPostgresSaver")
    )


def latency_vs_history(result: Any, path: Path, concurrency: int = 1) -> Path | None:
    rows = [r for r in _turns(result) if r.concurrency == concurrency]
    panels = _panels(rows)
    if not panels or len({r.history for r in rows}) < 2:
        return None
    fig, axes = _figure(len(panels))
    for ax, backend in zip(axes, panels, strict=False):
        mine = [r for r in rows if r.backend == backend]
        for store in sorted({r.store for r in mine}):
            pts = sorted((r.history, r.p50_ms, r.kind) for r in mine if r.store == store)
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                _STYLE.get(pts[0][2], "-"),
                marker="o",
                label=_short(store),
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{backend}: median turn latency, {concurrency} session(s)")
        ax.set_xlabel("messages in the session (history)")
        ax.set_ylabel("ms per turn (p50, log)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def throughput_vs_concurrency(result: Any, path: Path, history: int = 1000) -> Path | None:
    rows = _turns(result)
    if not any(r.history == history for r in rows):
        histories = sorted({r.history for r in rows})
        if not histories:
            return None
        history = histories[len(histories) // 2]
    rows = [r for r in rows if r.history == history]
    panels = _panels(rows)
    if not panels or len({r.concurrency for r in rows}) < 2:
        return None
    fig, axes = _figure(len(panels))
    for ax, backend in zip(axes, panels, strict=False):
        mine = [r for r in rows if r.backend == backend]
        for store in sorted({r.store for r in mine}):
            pts = sorted((r.concurrency, r.turns_per_s, r.kind) for r in mine if r.store == store)
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                _STYLE.get(pts[0][2], "-"),
                marker="o",
                label=_short(store),
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{backend}: throughput at history {history:,}")
        ax.set_xlabel("concurrent sessions")
        ax.set_ylabel("turns per second (log)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(result: Any, directory: Path) -> list[Path]:
    """Write the plots into ``directory``; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    made = [
        latency_vs_history(result, directory / "bench_latency_vs_history.png"),
        throughput_vs_concurrency(result, directory / "bench_throughput_vs_concurrency.png"),
    ]
    return [p for p in made if p is not None]
