"""benchmarks.common: the bootstrap interval every reported percentile carries, and the
table that shows it. Pure arithmetic: no broker, no radio."""
from __future__ import annotations

import math
import random
import statistics

import pytest

from benchmarks.common import (
    Result,
    _fast_percentile,
    bootstrap_ci,
    percentile,
    sample_stats,
    table,
)


def _exponential(n: int, seed: int = 7) -> list[float]:
    rng = random.Random(seed)
    return [rng.expovariate(1.0) for _ in range(n)]


@pytest.mark.parametrize("q", [1, 10, 49, 50, 51, 90, 99])
@pytest.mark.parametrize("size", [2, 3, 17, 100, 1001])
def test_fast_percentile_matches_percentile(q: int, size: int) -> None:
    values = _exponential(size, seed=size)
    assert _fast_percentile(values, q) == pytest.approx(percentile(values, q), rel=1e-12)


def test_same_seed_same_interval() -> None:
    values = _exponential(500)
    assert bootstrap_ci(values, 99, seed=3) == bootstrap_ci(values, 99, seed=3)
    assert bootstrap_ci(values) == bootstrap_ci(values)  # the default seed is fixed too
    assert bootstrap_ci(values, 99, seed=3) != bootstrap_ci(values, 99, seed=4)


def test_interval_contains_the_sample_p99_and_the_true_one() -> None:
    values = _exponential(2000)
    low, high = bootstrap_ci(values, 99)
    assert low < high
    assert low <= percentile(values, 99) <= high
    true_p99 = math.log(100)  # Exp(1)'s p99
    assert low <= true_p99 <= high


def test_interval_narrows_with_more_samples() -> None:
    small = bootstrap_ci(_exponential(200), 99)
    large = bootstrap_ci(_exponential(5000), 99)
    assert large[1] - large[0] < small[1] - small[0]


def test_constant_data_gives_a_zero_width_interval() -> None:
    assert bootstrap_ci([12.5] * 300, 99) == (12.5, 12.5)
    assert bootstrap_ci([12.5] * 300, 50) == (12.5, 12.5)


def test_any_statistic() -> None:
    values = _exponential(1000)
    low, high = bootstrap_ci(values, statistics.fmean, n=500)
    assert low <= statistics.fmean(values) <= high
    assert high - low < 0.2  # the mean of 1000 Exp(1) has a standard error near 0.03


def test_wider_confidence_gives_a_wider_interval() -> None:
    values = _exponential(1000)
    low90, high90 = bootstrap_ci(values, 50, confidence=0.90)
    low99, high99 = bootstrap_ci(values, 50, confidence=0.99)
    assert low99 <= low90 and high90 <= high99


@pytest.mark.parametrize("kwargs", [{"samples": [1.0]}, {"stat": 0}, {"stat": 100},
                                    {"confidence": 1.0}, {"n": 0}])
def test_refuses_what_it_cannot_answer(kwargs: dict) -> None:
    args = {"samples": [1.0, 2.0, 3.0], **kwargs}
    with pytest.raises(ValueError):
        bootstrap_ci(**args)


def test_rows_carry_count_and_interval() -> None:
    product, floor = _exponential(300, seed=1), _exponential(300, seed=2)
    extra = {**sample_stats(product, 99, scale=1000.0),
             **sample_stats(floor, 99, scale=1000.0, prefix="floor_")}
    assert extra["n"] == 300 and extra["floor_n"] == 300
    low, high = extra["ci95"]
    assert low <= percentile(product, 99) * 1000 <= high
    row = Result("x p99", "ms", percentile(product, 99) * 1000,
                 percentile(floor, 99) * 1000, "", extra)
    text = table([row])
    assert "n=300, 95% CI" in text
    assert text.count("n=300") == 2  # value and floor
    # rows without samples look as they did
    assert table([Result("rate", "events/s", 2.0, 4.0)]).splitlines()[-1] == \
        "| rate | 2.00 events/s | 4.00 events/s | 0.50 |  |"
