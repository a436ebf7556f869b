"""Content schedules: when an item runs, how much of the display loop it gets, in which
order it is pushed, and how often one handset may receive it.

Why one module for both sides: the hub previews ("is this item live on node X at time
T?") and the node decides, offline, from the schedules in its signed manifest. Both call
these functions, so the preview cannot disagree with the hall.

The rules (docs/content.md, "Schedules", says the same for marketers):

* Time zone. Everything is evaluated in the node's local time zone, an IANA name such as
  "Europe/Berlin" (``tz``). A campaign "from 1 July, 09:00-18:00" means the hall's 1 July
  and the hall's 09:00, wherever the hub runs; the hub previews with the node's zone.
* Windows. ``start``-``end`` in "HH:MM", start inclusive, end exclusive; ``end`` may be
  "24:00". ``end`` before ``start`` runs across midnight (22:00-02:00). ``start == end``
  is refused as ambiguous (empty, or all day?); all day is "00:00"-"24:00", or no
  windows at all.
* The start day. A window across midnight belongs to the day it starts on, and so do
  ``days`` and the date range: with days=[4] (Friday), 22:00-02:00 runs from Friday 22:00
  to Saturday 02:00; Friday 01:00 is Thursday's window. "Friday night" means what the
  marketer said, and a campaign ending on Friday keeps its Friday night.
* Dates. ``starts`` and ``ends`` are inclusive local calendar dates.
* Daylight saving time. Times are wall-clock times, read off the local clock at the
  instant: a window is active while the hall's clock shows a time inside it. So a time in
  the spring gap is never reached (02:00-03:00 is empty that night, 02:30-04:00 begins at
  03:00), and a time in the fall-back hour occurs twice and counts both times (02:00-03:00
  lasts two hours that night). No window is moved or stretched.
* Priority (-100..100) orders pushes after a tap, and breaks ties in the display loop.
* Share (1..100) is the item's weight in the display loop: over ``sum(shares)`` slots of
  the active items, each appears exactly ``share`` times, spread out (smooth weighted
  round-robin), deterministically.
* Cap: at most ``count`` deliveries to one handset per local calendar day, or per local
  ISO week (Monday to Sunday), of the moment of delivery.

Functions assume a schedule that passed :func:`validate` (``decode_schedule`` does that).
"""
from __future__ import annotations

import re
import reprlib
from collections.abc import Iterator, Sequence
from datetime import date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import msgspec

_HHMM = re.compile(r"(?:[01][0-9]|2[0-3]):[0-5][0-9]")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class ScheduleError(ValueError):
    """A malformed or out-of-range schedule; the message names the field and the reason."""


class Window(msgspec.Struct, forbid_unknown_fields=True):
    start: str  # "HH:MM", 00:00..23:59, inclusive
    end: str  # "HH:MM", 00:00..24:00, exclusive; end < start runs across midnight


class Cap(msgspec.Struct, forbid_unknown_fields=True):
    count: int  # 1..1000 deliveries
    per: Literal["day", "week"]  # local calendar day, local ISO week


class Schedule(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    starts: str | None = None  # "YYYY-MM-DD", inclusive, node's local date
    ends: str | None = None  # "YYYY-MM-DD", inclusive
    days: list[int] = []  # 0=Monday .. 6=Sunday; empty: every day
    windows: list[Window] = []  # empty: all day
    priority: int = 0  # -100..100; higher is pushed first
    share: int = 1  # 1..100: weight in the display loop
    cap: Cap | None = None  # per handset


# ------------------------------------------------------------------- validation


def validate(schedule: Schedule) -> Schedule:
    """Return ``schedule`` if it follows the rules, else raise ScheduleError. Checks the
    types too, since a Schedule built in Python is not type-checked by msgspec."""
    if not isinstance(schedule, Schedule):
        raise ScheduleError(f"expected a Schedule, got {reprlib.repr(schedule)}")
    starts = _date(schedule.starts, "starts")
    ends = _date(schedule.ends, "ends")
    if starts is not None and ends is not None and ends < starts:
        raise ScheduleError(f"ends: {schedule.ends} is before starts {schedule.starts}")
    if not isinstance(schedule.days, list):
        raise ScheduleError(f"days: expected a list, got {reprlib.repr(schedule.days)}")
    for day in schedule.days:
        _int(day, 0, 6, "days", " (0=Monday .. 6=Sunday)")
    if len(set(schedule.days)) != len(schedule.days):
        raise ScheduleError(f"days: a day is listed twice in {schedule.days}")
    if not isinstance(schedule.windows, list):
        raise ScheduleError(f"windows: expected a list, got {reprlib.repr(schedule.windows)}")
    for i, window in enumerate(schedule.windows):
        where = f"windows[{i}]"
        if not isinstance(window, Window):
            raise ScheduleError(f"{where}: expected a Window, got {reprlib.repr(window)}")
        _hhmm(window.start, f"{where}.start", allow_24=False)
        _hhmm(window.end, f"{where}.end", allow_24=True)
        if window.start == window.end:
            raise ScheduleError(f"{where}: start == end ({window.start}) is ambiguous "
                                "(empty or all day?); all day is 00:00-24:00")
    _int(schedule.priority, -100, 100, "priority")
    _int(schedule.share, 1, 100, "share")
    cap = schedule.cap
    if cap is not None:
        if not isinstance(cap, Cap):
            raise ScheduleError(f"cap: expected a Cap, got {reprlib.repr(cap)}")
        _int(cap.count, 1, 1000, "cap.count")
        if cap.per not in ("day", "week"):
            raise ScheduleError(f"cap.per: expected 'day' or 'week', got {reprlib.repr(cap.per)}")
    return schedule


def decode_schedule(data: bytes | str | dict[str, Any]) -> Schedule:
    """Decode a schedule from JSON (bytes or str) or from a decoded JSON object, and
    validate it. Anything malformed raises ScheduleError, never another exception: the
    node reads these from manifests and must refuse an item, not crash its loop."""
    try:
        if isinstance(data, (bytes, bytearray, memoryview, str)):
            schedule = msgspec.json.decode(data, type=Schedule)
        else:
            schedule = msgspec.convert(data, Schedule)
    except msgspec.MsgspecError as exc:  # DecodeError and ValidationError
        raise ScheduleError(f"malformed schedule: {exc}") from None
    except UnicodeEncodeError:  # a str with lone surrogates is not JSON text
        raise ScheduleError("malformed schedule: not valid Unicode text") from None
    return validate(schedule)


def _int(value: object, low: int, high: int, field: str, note: str = "") -> None:
    if type(value) is not int:  # bool is an int subclass and is refused
        raise ScheduleError(f"{field}: expected an integer, got {reprlib.repr(value)}")
    if not low <= value <= high:
        raise ScheduleError(f"{field}: {reprlib.repr(value)} is out of range {low}..{high}{note}")


def _hhmm(value: object, field: str, *, allow_24: bool) -> None:
    if not isinstance(value, str) or not (_HHMM.fullmatch(value) or (allow_24 and value == "24:00")):
        limit = "24:00" if allow_24 else "23:59"
        raise ScheduleError(f"{field}: expected a time 'HH:MM' from 00:00 to {limit}, "
                            f"got {reprlib.repr(value)}")


def _date(value: object, field: str) -> date | None:
    if value is None:
        return None
    if isinstance(value, str) and _DATE.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise ScheduleError(f"{field}: expected a date 'YYYY-MM-DD', got {reprlib.repr(value)}")


# ------------------------------------------------------------------- evaluation


def active(schedule: Schedule, at: float, tz: str) -> bool:
    """Whether the item runs at unix time ``at`` on a node in time zone ``tz``."""
    local = datetime.fromtimestamp(at, ZoneInfo(tz))
    minute = local.hour * 60 + local.minute  # window bounds are whole minutes
    return any(_runs_on(schedule, day) for day in _start_days(schedule.windows, local.date(), minute))


def _minutes(hhmm: str) -> int:
    return int(hhmm[:2]) * 60 + int(hhmm[3:])


def _start_days(windows: Sequence[Window], today: date, minute: int) -> Iterator[date]:
    """The days whose windows cover this local minute: today, and yesterday for the
    after-midnight part of a window across midnight (it belongs to the day it started)."""
    if not windows:
        yield today
        return
    for window in windows:
        start, end = _minutes(window.start), _minutes(window.end)
        if start < end:
            if start <= minute < end:
                yield today
        else:
            if minute >= start:
                yield today
            if minute < end:
                yield today - timedelta(days=1)


def _runs_on(schedule: Schedule, day: date) -> bool:
    """Whether windows starting on ``day`` count: the date range and days of the week."""
    if schedule.starts is not None and day < date.fromisoformat(schedule.starts):
        return False
    if schedule.ends is not None and day > date.fromisoformat(schedule.ends):
        return False
    return not schedule.days or day.weekday() in schedule.days


def cap_allows(cap: Cap | None, deliveries: Sequence[float], at: float, tz: str) -> bool:
    """Whether one more delivery at ``at`` stays within ``cap``, given the unix times
    this handset already got the item: fewer than ``count`` of them in the local day (or
    local ISO week, Monday start) of ``at``."""
    if cap is None:
        return True
    zone = ZoneInfo(tz)
    period = _period(cap.per, at, zone)
    used = sum(1 for t in deliveries if _period(cap.per, t, zone) == period)
    return used < cap.count


def _period(per: str, at: float, zone: ZoneInfo) -> date:
    """The first local day of the cap period holding ``at``."""
    day = datetime.fromtimestamp(at, zone).date()
    return day - timedelta(days=day.weekday()) if per == "week" else day


def push_order(entries: Sequence[tuple[str, Schedule]], at: float, tz: str) -> list[str]:
    """The ids of the items active at ``at``, by priority (highest first), then id: the
    order in which a node pushes after a tap."""
    return [item_id for item_id, _ in _live(entries, at, tz)]


def display_loop(entries: Sequence[tuple[str, Schedule]], at: float, tz: str,
                 slots: int) -> list[str]:
    """The item ids for the next ``slots`` positions of the display loop, among the items
    active at ``at``; empty when none is.

    Every active item is shown (a high priority does not silence the rest), each in
    proportion to its share: smooth weighted round-robin (nginx's upstream balancer).
    Each step every item gains its share and the one with the most is shown and pays
    the sum of shares. Over ``sum(shares)`` slots each item appears exactly ``share``
    times, spread out rather than in runs; then the cycle repeats. Ties go to the higher
    priority, then the smaller id, so equal shares play in push order. Deterministic
    (same input, in any order, same output): hub preview and node agree.
    """
    if slots < 0:
        raise ValueError(f"slots must be >= 0, got {slots}")
    live = _live(entries, at, tz)
    if not live or slots == 0:
        return []
    shares = [schedule.share for _, schedule in live]
    total = sum(shares)
    credit = [0] * len(live)
    cycle: list[str] = []
    for _ in range(min(slots, total)):  # cost: steps x items, at most 100 x items^2
        for i, share in enumerate(shares):
            credit[i] += share
        best = max(range(len(live)), key=credit.__getitem__)  # max keeps the first of equals
        credit[best] -= total
        cycle.append(live[best][0])
    return [cycle[i % len(cycle)] for i in range(slots)]


def _live(entries: Sequence[tuple[str, Schedule]], at: float,
          tz: str) -> list[tuple[str, Schedule]]:
    """The active entries by priority (highest first), then id. An id listed twice is
    refused: which schedule would count is not defined, so it is a bug in the caller."""
    seen: set[str] = set()
    for item_id, _ in entries:
        if item_id in seen:
            raise ValueError(f"item {item_id!r} is listed twice")
        seen.add(item_id)
    live = [(item_id, schedule) for item_id, schedule in entries if active(schedule, at, tz)]
    return sorted(live, key=lambda entry: (-entry[1].priority, entry[0]))
