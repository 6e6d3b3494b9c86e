"""Shared helpers for the benchmarks in bench/: timing, result rows, the machine description.

Every benchmark times our implementation and a baseline in the same run, on the same inputs, and
reports the ratio baseline_time / our_time (> 1 means we are faster). Absolute seconds are printed
too, but only ratios are comparable across machines.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


def best_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Smallest wall time in seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@dataclass
class BenchResult:
    """One line of the results table.

    ``ratio`` = baseline_seconds / ours_seconds (> 1: ours is faster). ``target`` states the goal in
    words, e.g. ">= 5x"; ``target_ratio`` is its number so the table can say whether it was met.
    """

    benchmark: str
    case: str
    ours: str
    baseline: str
    ours_seconds: float
    baseline_seconds: float
    target: str = ""
    target_ratio: float | None = None
    notes: str = ""

    @property
    def ratio(self) -> float:
        return self.baseline_seconds / self.ours_seconds

    def to_dict(self) -> dict:
        row = asdict(self)
        row["ratio"] = round(self.ratio, 3)
        row["target_met"] = None if self.target_ratio is None else bool(self.ratio >= self.target_ratio)
        return row

    def line(self) -> str:
        met = "" if self.target_ratio is None else ("  (target met)" if self.ratio >= self.target_ratio else "  (TARGET MISSED)")
        return (
            f"{self.benchmark:<22} {self.case:<34} ours {self.ours_seconds * 1e3:9.2f} ms  "
            f"baseline {self.baseline_seconds * 1e3:9.2f} ms  ratio {self.ratio:6.2f}x{met}"
        )


@dataclass
class QualityResult:
    """One line of the quality table: a measured figure (not a time), e.g. R^2 after a fixed budget."""

    benchmark: str
    case: str
    metric: str
    value: float
    budget: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return f"{self.benchmark:<22} {self.case:<50} {self.metric:<24} {self.value:10.4f}   ({self.budget})"


def machine_description() -> dict:
    """What the figures were measured on."""
    import numpy
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
