"""Shared by the benchmarks: percentiles, a live progress line, result records.

Every result is reported as a ratio to a floor measured in the same run on the same
machine, so numbers from a loaded laptop and a quiet CI box can be compared.
"""
from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path("var/benchmarks")


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (1..99), interpolated as the demo's summary does."""
    if len(values) < 2:
        raise ValueError(f"need at least 2 samples for a percentile, got {len(values)}")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


@dataclass
class Result:
    name: str
    unit: str
    value: float
    floor: float | None = None
    target: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return None if not self.floor else self.value / self.floor


class Progress:
    """One live line on a terminal (plain lines every 10% elsewhere)."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done = label, total, 0
        self.tty = sys.stderr.isatty()
        self._last_decile = -1
        self._t0 = time.monotonic()

    def step(self, n: int = 1) -> None:
        self.done += n
        if self.tty:
            width = 30
            filled = int(width * self.done / self.total)
            sys.stderr.write(f"\r{self.label:28} [{'#' * filled}{'.' * (width - filled)}] "
                             f"{self.done}/{self.total}")
            sys.stderr.flush()
        else:
            decile = 10 * self.done // self.total
            if decile != self._last_decile:
                self._last_decile = decile
                print(f"{self.label}: {self.done}/{self.total}", file=sys.stderr)

    def close(self) -> None:
        if self.tty:
            sys.stderr.write(f"  {time.monotonic() - self._t0:.1f}s\n")


def save(results: list[Result], name: str) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": [{**asdict(r), "ratio": r.ratio} for r in results],
    }, indent=2))
    return path


def table(results: list[Result]) -> str:
    rows = ["| measure | value | floor (same run) | ratio | target |", "|---|---|---|---|---|"]
    for r in results:
        floor = f"{r.floor:.2f} {r.unit}" if r.floor else "-"
        ratio = f"{r.ratio:.2f}" if r.ratio else "-"
        rows.append(f"| {r.name} | {r.value:.2f} {r.unit} | {floor} | {ratio} | {r.target} |")
    return "\n".join(rows)
