"""Hostile input costs a counter and a few log lines: one line per reason per interval,
and the next one says how many were held back."""
from __future__ import annotations

import logging

import pytest

from tapcast.ratelog import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_a_reason_is_logged_once_per_interval(caplog: pytest.LogCaptureFixture,
                                              clock: Clock) -> None:
    rl = RateLimitedLog(logging.getLogger("t.ratelog"), interval=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="t.ratelog"):
        assert rl.warn("forged", "forged %d", 1)
        assert not any(rl.warn("forged", "forged %d", i) for i in range(2, 50))
    assert lines(caplog) == ["forged 1"]


def test_the_next_line_counts_what_was_held_back(caplog: pytest.LogCaptureFixture,
                                                 clock: Clock) -> None:
    rl = RateLimitedLog(logging.getLogger("t.ratelog"), interval=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="t.ratelog"):
        rl.warn("forged", "forged")
        for _ in range(3):
            rl.warn("forged", "forged")
        clock.now += 10.0
        assert rl.warn("forged", "forged")
    assert lines(caplog) == ["forged", "forged (and 3 more like it in the last 10 s)"]


def test_reasons_are_limited_independently_at_their_own_level(
        caplog: pytest.LogCaptureFixture, clock: Clock) -> None:
    rl = RateLimitedLog(logging.getLogger("t.ratelog"), clock=clock)
    with caplog.at_level(logging.WARNING, logger="t.ratelog"):
        rl.warn("a", "first a")
        rl.warn("b", "first b", level=logging.ERROR)
    assert [(r.getMessage(), r.levelno) for r in caplog.records] == [
        ("first a", logging.WARNING), ("first b", logging.ERROR)]


def test_many_distinct_reasons_cannot_grow_it_without_end(clock: Clock) -> None:
    rl = RateLimitedLog(logging.getLogger("t.ratelog"), max_keys=10, clock=clock)
    for i in range(1000):
        rl.warn(f"key-{i}", "x")
    assert len(rl._last) <= 10
