"""The node's best time (tapcast.clock): what a Pi without a real-time clock trusts."""
from __future__ import annotations

from pathlib import Path

from tapcast.clock import FLOOR_FILE, BestTime

T = 1_700_000_000.0
DAY = 86_400.0


class Clocks:
    """Settable system and monotonic clocks and sync flag (the kernel's, in a node)."""

    def __init__(self, system: float, synced: bool) -> None:
        self.system, self.synced, self.mono = system, synced, 1000.0

    def best(self, path: Path) -> BestTime:
        return BestTime(path, system_clock=lambda: self.system,
                        synchronized=lambda: self.synced, monotonic=lambda: self.mono)


def test_a_clock_behind_the_persisted_floor_reads_the_floor(tmp_path: Path) -> None:
    path = tmp_path / FLOOR_FILE
    before = Clocks(T, synced=True)
    best = before.best(path)
    best.now()
    best.persist()
    rebooted = Clocks(T - 3 * DAY, synced=False)  # offline boot, no RTC
    best = rebooted.best(path)
    assert (best.now(), best.trusted, best.source()) == (T, False, "floor")


def test_an_unsynchronised_clock_ahead_is_used_but_never_persisted(tmp_path: Path) -> None:
    path = tmp_path / FLOOR_FILE
    clocks = Clocks(T + 3 * DAY, synced=False)
    best = clocks.best(path)
    assert best.now() == T + 3 * DAY
    best.persist()
    assert not path.exists()


def test_the_floor_never_goes_backwards(tmp_path: Path) -> None:
    path = tmp_path / FLOOR_FILE
    clocks = Clocks(T, synced=True)
    clocks.best(path).persist()
    clocks.system = T - DAY  # synchronised but set back (say, a bad NTP server)
    clocks.best(path).persist()
    assert float(path.read_text()) == T


def test_hub_signed_time_is_trusted_and_advances_with_the_monotonic_clock(
        tmp_path: Path) -> None:
    clocks = Clocks(T - 3 * DAY, synced=False)
    best = clocks.best(tmp_path / FLOOR_FILE)
    best.observe_hub_time(T)
    clocks.mono += 60
    assert (best.now(), best.trusted, best.source()) == (T + 60, True, "hub")
    best.persist()
    assert float((tmp_path / FLOOR_FILE).read_text()) == T + 60


def test_an_unreadable_floor_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / FLOOR_FILE).write_text("not a time\n")
    clocks = Clocks(T, synced=False)
    assert clocks.best(tmp_path / FLOOR_FILE).now() == T


def test_a_non_finite_floor_file_is_ignored(tmp_path: Path) -> None:
    """'inf' parses as a float; taken as the floor it would expire every certificate
    and could never be corrected (the floor only moves forward)."""
    for text in ("inf\n", "nan\n", "1e400\n"):
        (tmp_path / FLOOR_FILE).write_text(text)
        clocks = Clocks(T, synced=True)
        best = clocks.best(tmp_path / FLOOR_FILE)
        assert (best.now(), best.floor) == (T, T), text
