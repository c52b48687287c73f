"""Small timing helpers shared by the benchmarks: repeat until a time budget, report stats."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """Per-call times in seconds from repeated runs."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p99(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

    @property
    def best(self) -> float:
        return min(self.samples)


def time_sync(fn: Callable[[], object], *, budget: float = 0.5, min_runs: int = 5) -> Timing:
    """Call ``fn`` repeatedly for about ``budget`` seconds (after one warm-up call)."""
    fn()
    samples: list[float] = []
    deadline = time.perf_counter() + budget
    while len(samples) < min_runs or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return Timing(tuple(samples))


def machine() -> str:
    """One line naming the machine and Python, for published tables."""
    import os

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}, {platform.system()}"
    )


def fmt_us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f}"
