"""Shared by the benchmarks: percentiles, a live progress line, result records.

Every result is reported as a ratio to a floor measured in the same run on the same
machine, so numbers from a loaded laptop and a quiet CI box can be compared. A
percentile is reported with its sample count and a bootstrap confidence interval
(DESIGN.md, "Benchmarks"): a p99 of 30 samples says little, and the interval shows it.
"""
from __future__ import annotations

import functools
import heapq
import json
import logging
import math
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path("var/benchmarks")


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (1..99), interpolated as the demo's summary does."""
    if len(values) < 2:
        raise ValueError(f"need at least 2 samples for a percentile, got {len(values)}")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _fast_percentile(values: list[float], q: int) -> float:
    """``percentile(values, q)`` from the two order statistics it interpolates, found
    with a heap instead of a full sort: the bootstrap takes 1000 of these."""
    m = len(values) - 1
    j, delta = divmod(q * m, 100)  # statistics.quantiles' "inclusive" method
    if q >= 50:
        top = heapq.nlargest(len(values) - j, values)
        low, high = top[-1], top[-2]
    else:
        bottom = heapq.nsmallest(j + 2, values)
        low, high = bottom[j], bottom[j + 1]
    return (low * (100 - delta) + high * delta) / 100


def bootstrap_ci(samples: Sequence[float],
                 stat: int | Callable[[list[float]], float] = 99, n: int = 1000,
                 confidence: float = 0.95, seed: int | None = 0) -> tuple[float, float]:
    """(low, high): a percentile-bootstrap confidence interval for ``stat`` of the
    population ``samples`` came from. ``stat`` is a percentile (1..99, interpolated as
    :func:`percentile`) or a function of a list. ``n`` resamples; a fixed ``seed`` makes
    the interval reproducible (None: a fresh one each call).

    Why: a tail percentile from a few hundred samples moves a lot from run to run; the
    interval says how much, so a ratio is not read as more exact than it is."""
    values = list(samples)
    if len(values) < 2:
        raise ValueError(f"need at least 2 samples for a bootstrap, got {len(values)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    if n < 1:
        raise ValueError(f"need at least 1 resample, got {n}")
    if isinstance(stat, int):
        if not 1 <= stat <= 99:
            raise ValueError(f"percentile must be 1..99, got {stat}")
        func: Callable[[list[float]], float] = functools.partial(_fast_percentile, q=stat)
    else:
        func = stat
    rng = random.Random(seed)
    k = len(values)
    stats = sorted(func(rng.choices(values, k=k)) for _ in range(n))
    alpha = (1 - confidence) / 2
    low = stats[max(0, math.floor(alpha * n))]
    high = stats[min(n - 1, math.ceil((1 - alpha) * n) - 1)]
    return low, high


def sample_stats(samples: Sequence[float], q: int = 99, *, scale: float = 1.0,
                 prefix: str = "", seed: int | None = 0) -> dict[str, Any]:
    """The ``extra`` keys a percentile row carries: ``{prefix}n`` (sample count) and
    ``{prefix}ci95`` (bootstrap 95% interval of the q-th percentile, times ``scale``).
    ``prefix="floor_"`` for the floor's samples; :func:`table` shows both."""
    low, high = bootstrap_ci(samples, q, seed=seed)
    return {f"{prefix}n": len(samples), f"{prefix}ci95": (low * scale, high * scale)}


@dataclass
class Result:
    """One figure. ``extra`` may carry ``n`` / ``floor_n`` (sample counts) and ``ci95``
    / ``floor_ci95`` ((low, high) of a percentile, in ``unit``): :func:`table` shows
    them next to the value and the floor (see :func:`sample_stats`)."""

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


def _stats_note(extra: dict[str, Any], prefix: str) -> str:
    parts = []
    if f"{prefix}n" in extra:
        parts.append(f"n={extra[f'{prefix}n']}")
    if f"{prefix}ci95" in extra:
        low, high = extra[f"{prefix}ci95"]
        parts.append(f"95% CI {low:.2f}-{high:.2f}")
    return f" ({', '.join(parts)})" if parts else ""


def table(results: list[Result]) -> str:
    """Markdown rows for docs/performance.md; a row's sample count and confidence
    interval (``extra``: n, ci95, floor_n, floor_ci95) follow its value and floor."""
    rows = ["| measure | value | floor (same run) | ratio | target |", "|---|---|---|---|---|"]
    for r in results:
        value = f"{r.value:.2f} {r.unit}{_stats_note(r.extra, '')}"
        floor = f"{r.floor:.2f} {r.unit}{_stats_note(r.extra, 'floor_')}" if r.floor else "-"
        ratio = f"{r.ratio:.2f}" if r.ratio else "-"
        rows.append(f"| {r.name} | {value} | {floor} | {ratio} | {r.target} |")
    return "\n".join(rows)


def warnings_only() -> None:
    """Log warnings and worse only: nfcpy sets its logger to INFO on import, and a
    benchmark's screen is for its progress line and results."""
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    logging.basicConfig(level=logging.WARNING, handlers=[handler])


def run_and_report(run: Callable[[], list[Result]],
                   render: Callable[[list[Result]], str] | None = None, *,
                   raw: bool = False) -> list[Result]:
    """A benchmark from the command line: warnings only, then the markdown table, the
    benchmark's own one-line-per-figure ``render`` and, with ``raw``, every extra."""
    warnings_only()
    found = run()
    print(table(found))
    if render is not None:
        print()
        print(render(found))
    if raw:
        print(json.dumps({r.name: r.extra for r in found}, indent=1, default=str))
    return found
