"""Rows, timing and output shared by the benchmark sections (no torch, no rclpy here)."""
from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mask3d_ros.model.backends import minkowski_version


@dataclass
class Row:
    """One measurement beside its baseline from the same run.

    ``ratio`` is baseline / value: for times, how many times faster than the baseline (above 1 is
    better); for memory, how many times less.
    """

    name: str
    value: float
    unit: str
    baseline: str
    baseline_value: float | None
    notes: str = ""
    peak_rss_mb: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline_value is None or not self.value:
            return None
        return self.baseline_value / self.value

    def as_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def race(runs: dict[str, Callable[[], object]], repeats: int, warmup: bool = True) -> dict[str, list[float]]:
    """Milliseconds of every run of each closure, interleaved so load spikes hit all alike.

    ``warmup``: one untimed call each first (allocator, lazily built maps, first-call imports).
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values() if warmup else ():
        run()
    for _ in range(max(1, repeats)):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def percentile(values, q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation (numpy's); NaN for no values."""
    values = list(values)
    return float(np.percentile(values, q)) if values else math.nan


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> dict:
    """What the numbers depend on: CPU, cores, load, torch and its threads, GPU, backends."""
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": cuda,
        "backends": "torch" + (f", MinkowskiEngine {minkowski_version()}" if minkowski_version() else ""),
    }


def describe_machine(machine: dict) -> str:
    """One line for above the table."""
    load = machine.get("load_average")
    return (f"Machine: {machine['cpu']}, {machine['cores']} cores"
            f"{'' if load is None else f' (load average {load[0]:.2f} at start)'}; Python {machine['python']},"
            f" torch {machine['torch']} ({machine['torch_threads']} threads); GPU: {machine['cuda'] or 'none'};"
            f" sparse backends: {machine['backends']}")


def _number(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


HEADER = ("benchmark", "value", "unit", "baseline", "baseline value", "ratio (baseline / value)",
          "peak RSS growth MB", "notes")


def markdown_table(rows: list[Row]) -> str:
    """The rows as one markdown table."""
    lines = ["| " + " | ".join(HEADER) + " |", "|---|---:|---|---|---:|---:|---:|---|"]
    for row in rows:
        ratio = row.ratio
        cells = (row.name, _number(row.value), row.unit, row.baseline, _number(row.baseline_value),
                 "" if ratio is None else f"{ratio:.2f}x", _number(row.peak_rss_mb, 0), row.notes)
        lines.append("| " + " | ".join(str(cell).replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines)


def write_json(path: Path, machine: dict, rows: list[Row], notes: list[str], settings: dict) -> None:
    """The same rows, machine-readably."""
    document = {"machine": machine, "settings": settings, "rows": [row.as_dict() for row in rows],
                "notes": notes}
    Path(path).write_text(json.dumps(document, indent=2, default=str) + "\n")
