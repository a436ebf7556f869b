"""The node's best idea of the time, for certificate validity on a Pi without a clock.

Why: a Raspberry Pi has no real-time clock. Booted offline it starts at the time
fake-hwclock saved at the last shutdown (or 1970 without it), so its clock may be days
behind; a misconfigured one may be ahead. Taps do not need the time at all (freshness
comes from the nonces, see tapcast.protocol.nfc); only certificate validity does.

Best time = the latest of
  * the system clock;
  * the floor: the latest trustworthy time this node has seen, persisted in its data
    dir (``time-floor``) and never moved backwards, so a reboot without network cannot
    take the node back before the last time it knew;
  * the newest hub time seen since start (``observe_hub_time``; the caller checks
    first that it comes from the hub: the uplink takes it from acks whose tag verifies
    under the node's stream key), advanced by the monotonic clock since then.

``trusted`` says whether that value comes from a trustworthy source: the kernel says
the system clock is NTP-synchronised (adjtimex, as ``timedatectl`` reads it), or a
hub time was seen since start. Only trusted time moves the floor: an unsynchronised
clock running days ahead must not be persisted, or the node would carry the error
forward after the clock is corrected.

What the node does with an untrusted time (honest about what it cannot know): expiry is
checked against best time, which is at least the floor (the real time is surely later),
so a certificate that expired before the floor is refused; one that expired in the gap
the node cannot see is accepted. Not-before cannot be checked at all (a clock behind
cannot tell a not-yet-valid certificate from a fresh one) and is skipped.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

FLOOR_FILE = "time-floor"
_TIME_ERROR = 5  # adjtimex(2) clock state: "not synchronised to a reliable server"


@functools.cache
def _libc() -> ctypes.CDLL:
    # Once: find_library runs ldconfig in a subprocess (about 1.5 ms here, more on a Pi),
    # and the sync state is read on every tap.
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def system_clock_synchronized() -> bool:
    """True when the kernel reports the system clock as synchronised (an NTP client such
    as systemd-timesyncd or chrony has set it). False when it cannot tell."""
    try:
        buf = ctypes.create_string_buffer(512)  # struct timex, modes = 0: read only
        state = _libc().adjtimex(buf)
    except (OSError, AttributeError):
        return False
    return 0 <= state != _TIME_ERROR


class BestTime:
    """See the module doc. Thread-safe: the NFC reader thread reads it per tap."""

    def __init__(self, floor_path: str | Path | None = None, *,
                 system_clock: Callable[[], float] = time.time,
                 synchronized: Callable[[], bool] = system_clock_synchronized,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.floor_path = Path(floor_path) if floor_path is not None else None
        self._system = system_clock
        self._synchronized = synchronized
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._hub: tuple[float, float] | None = None  # (hub time, monotonic when seen)
        self._persisted = self._read_floor()
        self.floor = self._persisted

    def _read_floor(self) -> float:
        if self.floor_path is None:
            return 0.0
        try:
            floor = float(self.floor_path.read_text().strip())
            if not math.isfinite(floor):  # "inf" would expire every certificate for good
                raise ValueError(f"not a finite time: {floor}")
            return max(0.0, floor)
        except FileNotFoundError:
            return 0.0
        except (OSError, ValueError) as exc:
            log.warning("time floor %s unreadable (%s); starting without one",
                        self.floor_path, exc)
            return 0.0

    def observe_hub_time(self, ts: float) -> None:
        """The hub's time, from a message the caller has authenticated as the hub's."""
        with self._lock:
            if self._hub is None or ts > self._hub_now():
                self._hub = (float(ts), self._monotonic())
                log.info("best time: hub time %.0f", ts)

    def _hub_now(self) -> float:
        if self._hub is None:
            return 0.0
        ts, seen = self._hub
        return ts + max(0.0, self._monotonic() - seen)

    @property
    def trusted(self) -> bool:
        return self._hub is not None or self._synchronized()

    def now(self) -> float:
        """The latest of system clock, floor and hub time; a trusted reading
        also raises the in-memory floor (``persist`` writes it)."""
        with self._lock:
            system, hub = self._system(), self._hub_now()
            best = max(system, self.floor, hub)
            trusted_now = hub if self._hub is not None else 0.0
            if self._synchronized():
                trusted_now = max(trusted_now, system)
            if trusted_now > self.floor:
                self.floor = trusted_now
            return best

    def source(self) -> str:
        """What best time comes from now: "hub", "system (synchronised)", "system
        (unsynchronised)" or "floor" (the clock is behind the last known time)."""
        system, hub = self._system(), self._hub_now()
        if self._hub is not None and hub >= max(system, self.floor):
            return "hub"
        if self.floor > system and self.floor > hub:
            return "floor"
        return "system (synchronised)" if self._synchronized() else "system (unsynchronised)"

    def persist(self) -> None:
        """Write the floor (atomically) if it moved; never writes a smaller value."""
        if self.floor_path is None:
            return
        self.now()
        with self._lock:
            floor = self.floor
        if floor <= self._persisted:
            return
        tmp = self.floor_path.with_name(self.floor_path.name + ".tmp")
        try:
            tmp.write_text(f"{floor:.0f}\n")
            os.replace(tmp, self.floor_path)
        except OSError as exc:
            log.warning("cannot persist the time floor to %s: %s", self.floor_path, exc)
            return
        self._persisted = floor
