"""Plots of a run (matplotlib, the optional ``plots`` group): latency against history length and
throughput against concurrency, one panel per backend.

The figures are drawn for the docs' content column (about 700 CSS pixels): one panel per
row, 800 pixels wide, with text at least 10 points, so that a legend stays readable where
the page shows the image. Redraw them from a saved run without measuring again::

    python -m benchmarks.plots docs/benchmarks-results.json docs/img
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

_STYLE = {"raw": ":", "promptstate": "-", "pipeline": "--", "peer": "-.", "adapter": "-"}
_BACKENDS = ("redis", "postgres", "sqlite", "memory")
_KIND_ORDER = {"raw": 0, "promptstate": 1, "pipeline": 2, "peer": 3, "adapter": 4}
_FIXED = {"raw": "#555555", "promptstate": "#1f77b4", "pipeline": "#6baed6"}
_PEER_COLORS = ("#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")
#: promptstate's framework adapters (kind ``adapter``): blue-greens, apart from the peers.
_ADAPTER_COLORS = ("#17becf", "#08519c", "#41ab5d", "#bcbd22")


def _turns(result: Any) -> list[Any]:
    return [
        r
        for r in result.records
        if r.scenario in ("turns", "pipeline", "raw", "peers") and r.turns_per_s
    ]


def _panels(rows: list[Any]) -> list[str]:
    present = {r.backend for r in rows}
    return [b for b in _BACKENDS if b in present]


def _colors(rows: list[Any]) -> dict[str, str]:
    """One colour per implementation, the same in every panel: grey and blues for ours."""
    peers = sorted({r.store for r in rows if r.kind == "peer"})
    colors = {name: _PEER_COLORS[i % len(_PEER_COLORS)] for i, name in enumerate(peers)}
    adapters = sorted({r.store for r in rows if r.kind == "adapter"})
    for i, name in enumerate(adapters):
        colors[name] = _ADAPTER_COLORS[i % len(_ADAPTER_COLORS)]
    for r in rows:
        if r.kind in _FIXED:
            colors[r.store] = _FIXED[r.kind]
    return colors


def _ordered(rows: list[Any]) -> list[str]:
    kinds = {r.store: r.kind for r in rows}
    return sorted(kinds, key=lambda name: (_KIND_ORDER.get(kinds[name], 9), name))


def _short(name: str) -> str:
    return (
        name.replace("PostgresChatMessageHistory", "PostgresChatMsgHistory")
        .replace("Pipeline + MockProvider on ", "Pipeline on ")
        .replace(" + AsyncPostgresSaver", "+AsyncPostgresSaver")
    )


#: Text sizes in points, chosen for an 800-pixel figure shown about 700 pixels wide.
_FONTS = {
    "font.size": 11,
    "axes.titlesize": 13,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
}


def _figure(n: int) -> tuple[Any, list[Any]]:
    fig, axes = plt.subplots(n, 1, figsize=(8.0, 5.4 * n), squeeze=False)
    return fig, [row[0] for row in axes]


def _axes(ax: Any, ticks: list[int], base: float) -> None:
    ax.set_xscale("log", base=base)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.6g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)


def _lines(ax: Any, rows: list[Any], colors: dict[str, str], x: str, y: str) -> None:
    for store in _ordered(rows):
        pts = sorted((getattr(r, x), getattr(r, y), r.kind) for r in rows if r.store == store)
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            _STYLE.get(pts[0][2], "-"),
            marker="o",
            color=colors[store],
            label=_short(store),
        )


def latency_vs_history(result: Any, path: Path, concurrency: int = 1) -> Path | None:
    rows = [r for r in _turns(result) if r.concurrency == concurrency]
    panels = _panels(rows)
    histories = sorted({r.history for r in rows})
    if not panels or len(histories) < 2:
        return None
    fig, axes = _figure(len(panels))
    colors = _colors(rows)
    for ax, backend in zip(axes, panels, strict=True):
        _lines(ax, [r for r in rows if r.backend == backend], colors, "history", "p50_ms")
        ax.set_title(f"{backend}: median turn latency, {concurrency} session(s)")
        ax.set_xlabel("messages in the session (history)")
        ax.set_ylabel("ms per turn (p50, log scale)")
        _axes(ax, histories, 10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
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
    levels = sorted({r.concurrency for r in rows})
    if not panels or len(levels) < 2:
        return None
    fig, axes = _figure(len(panels))
    colors = _colors(rows)
    for ax, backend in zip(axes, panels, strict=True):
        _lines(ax, [r for r in rows if r.backend == backend], colors, "concurrency", "turns_per_s")
        ax.set_title(f"{backend}: throughput at history {history:,}")
        ax.set_xlabel("concurrent sessions")
        ax.set_ylabel("turns per second (log scale)")
        _axes(ax, levels, 2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write(result: Any, directory: Path) -> list[Path]:
    """Write the plots into ``directory``; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    with plt.rc_context(_FONTS):
        made = [
            latency_vs_history(result, directory / "bench_latency_vs_history.png"),
            throughput_vs_concurrency(result, directory / "bench_throughput_vs_concurrency.png"),
        ]
    return [p for p in made if p is not None]


def from_json(path: Path) -> Any:
    """A run saved with ``--json``, in the shape :func:`write` reads."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return SimpleNamespace(records=[SimpleNamespace(**r) for r in data["records"]])


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m benchmarks.plots RESULTS.json DIRECTORY")
    for written in write(from_json(Path(sys.argv[1])), Path(sys.argv[2])):
        print(written)
