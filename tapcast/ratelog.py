"""One log line per reason per interval, for input that anyone may send.

Why: hostile or broken input (forged acks, garbage batches) can arrive thousands of
times a second; a line per message would fill the disk of a Pi and bury the one line an
operator needs. Counters say how many; the log says that it happens and why, and how
many lines it held back since the last one.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any


class RateLimitedLog:
    """``warn(reason_key, msg, *args)``: logs at most once per ``interval`` seconds per
    key; the next line says how many were held back. Thread-safe (paho's thread and the
    writer may both report)."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0,
                 max_keys: int = 1000, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.clock = clock
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def warn(self, key: str, msg: str, *args: Any, level: int = logging.WARNING) -> bool:
        """True when the line was written."""
        now = self.clock()
        with self._lock:
            last, held = self._last.get(key, (float("-inf"), 0))
            if now - last < self.interval:
                self._last[key] = (last, held + 1)
                return False
            if len(self._last) >= self.max_keys and key not in self._last:
                self._last.clear()  # bounded: hostile keys cannot grow it without end
            self._last[key] = (now, 0)
        if held:
            msg += f" (and {held} more like it in the last {self.interval:.0f} s)"
        self.logger.log(level, msg, *args)
        return True
