"""Content schedules (tapcast.schedule): windows across midnight belong to the day they
start on, days and dates are the node's local ones, DST is wall-clock, caps count per
local day or ISO week, the display loop gives each item its share, and anything
malformed is refused with ScheduleError only."""
from __future__ import annotations

import json
import random
from collections import Counter
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import assume, given, settings, strategies as st

from tapcast.schedule import (
    Cap, Schedule, ScheduleError, Window, active, cap_allows, decode_schedule, display_loop,
    push_order, validate,
)

ZONES = ["Europe/Berlin", "America/New_York", "Pacific/Auckland", "UTC"]
zones = st.sampled_from(ZONES)
dates = st.dates(date(2020, 1, 1), date(2030, 12, 31))
minutes = st.integers(0, 1439)
instants = st.integers(1_577_836_800, 1_924_991_999)  # 2020..2030
day_sets = st.lists(st.integers(0, 6), unique=True, max_size=7)


def hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def local(tz: str, text: str, fold: int = 0) -> float:
    """Unix time at which a node in ``tz`` shows the wall-clock time ``text``."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz), fold=fold).timestamp()


def wall_instant(tz: str, day: date, minute: int) -> float:
    """Unix time at which the node's clock shows ``day`` and ``minute``; in a hypothesis
    test, drops the local times that never occur (the spring gap)."""
    at = local(tz, f"{day.isoformat()}T{hhmm(minute)}")
    back = datetime.fromtimestamp(at, ZoneInfo(tz))
    assume((back.date(), back.hour * 60 + back.minute) == (day, minute))
    return at


def local_date(at: float, tz: str) -> date:
    return datetime.fromtimestamp(at, ZoneInfo(tz)).date()


windows = (st.tuples(st.integers(0, 1439), st.integers(0, 1440))
           .filter(lambda w: w[0] != w[1])
           .map(lambda w: Window(hhmm(w[0]), hhmm(w[1]))))
caps = st.builds(Cap, st.integers(1, 1000), st.sampled_from(["day", "week"]))


@st.composite
def schedules(draw: st.DrawFn) -> Schedule:
    """Any valid schedule."""
    starts, ends = draw(st.none() | dates), draw(st.none() | dates)
    if starts and ends and ends < starts:
        starts, ends = ends, starts
    return Schedule(starts=starts and starts.isoformat(), ends=ends and ends.isoformat(),
                    days=draw(day_sets), windows=draw(st.lists(windows, max_size=3)),
                    priority=draw(st.integers(-100, 100)), share=draw(st.integers(1, 100)),
                    cap=draw(st.none() | caps))


# ------------------------------------------------------------------- windows


@settings(max_examples=300)
@given(zones, dates, minutes, st.integers(1, 1439), st.integers(0, 1439), day_sets)
def test_a_window_across_midnight_covers_the_evening_of_its_start_day_and_the_morning_after(
        tz: str, day: date, minute: int, start: int, end: int, days: list[int]) -> None:
    assume(end < start)
    schedule = Schedule(days=days, windows=[Window(hhmm(start), hhmm(end))])

    def listed(d: date) -> bool:
        return not days or d.weekday() in days

    expected = (minute >= start and listed(day)) or (minute < end and listed(day - timedelta(days=1)))
    assert active(schedule, wall_instant(tz, day, minute), tz) == expected


@settings(max_examples=200)
@given(zones, dates, minutes, st.integers(0, 1439), st.integers(1, 1440))
def test_a_same_day_window_includes_its_start_and_excludes_its_end(
        tz: str, day: date, minute: int, start: int, end: int) -> None:
    assume(start < end)
    schedule = Schedule(windows=[Window(hhmm(start), hhmm(end))])
    assert active(schedule, wall_instant(tz, day, minute), tz) == (start <= minute < end)


def test_a_friday_night_window_runs_into_saturday_morning_not_friday_morning() -> None:
    tz = "Europe/Berlin"
    friday_night = Schedule(days=[4], windows=[Window("22:00", "02:00")])
    assert active(friday_night, local(tz, "2024-07-05T23:00"), tz)  # Friday
    assert active(friday_night, local(tz, "2024-07-06T01:00"), tz)  # Saturday, Friday's night
    assert not active(friday_night, local(tz, "2024-07-05T01:00"), tz)  # Thursday's night
    assert not active(friday_night, local(tz, "2024-07-06T02:00"), tz)  # end is exclusive
    assert not active(friday_night, local(tz, "2024-07-06T22:00"), tz)  # Saturday


def test_no_windows_and_00_00_to_24_00_are_both_all_day() -> None:
    tz = "UTC"
    for schedule in (Schedule(), Schedule(windows=[Window("00:00", "24:00")])):
        assert active(schedule, local(tz, "2024-07-01T00:00"), tz)
        assert active(schedule, local(tz, "2024-07-01T23:59:59"), tz)


def test_an_item_is_active_in_any_of_its_windows() -> None:
    tz = "America/New_York"
    schedule = Schedule(windows=[Window("08:00", "10:00"), Window("17:00", "19:00")])
    assert active(schedule, local(tz, "2024-07-01T09:00"), tz)
    assert active(schedule, local(tz, "2024-07-01T18:00"), tz)
    assert not active(schedule, local(tz, "2024-07-01T12:00"), tz)


# ------------------------------------------------------------------- days of the week


@settings(max_examples=200)
@given(zones, instants, day_sets)
def test_days_of_week_decide_an_all_day_schedule_by_the_local_weekday(
        tz: str, at: int, days: list[int]) -> None:
    expected = not days or local_date(at, tz).weekday() in days
    assert active(Schedule(days=days), at, tz) == expected


@settings(max_examples=300)
@given(zones, instants, day_sets, st.lists(windows, min_size=1, max_size=3))
def test_active_implies_the_start_day_of_the_window_is_in_days(
        tz: str, at: int, days: list[int], window_list: list[Window]) -> None:
    assume(days)
    if active(Schedule(days=days, windows=window_list), at, tz):
        now = datetime.fromtimestamp(at, ZoneInfo(tz))
        minute = now.hour * 60 + now.minute
        after_midnight = any(
            w.end <= w.start and minute < int(w.end[:2]) * 60 + int(w.end[3:]) for w in window_list)
        yesterday = (now.date() - timedelta(days=1)).weekday()
        assert now.weekday() in days or (after_midnight and yesterday in days)


# ------------------------------------------------------------------- date range


def test_the_date_range_is_inclusive_on_both_ends() -> None:
    tz = "Europe/Berlin"
    schedule = Schedule(starts="2024-07-01", ends="2024-07-02")
    assert not active(schedule, local(tz, "2024-06-30T23:59"), tz)
    assert active(schedule, local(tz, "2024-07-01T00:00"), tz)
    assert active(schedule, local(tz, "2024-07-02T23:59"), tz)
    assert not active(schedule, local(tz, "2024-07-03T00:00"), tz)


def test_the_date_range_is_in_the_node_zone_not_utc() -> None:
    at = datetime(2024, 6, 30, 13, 0, tzinfo=ZoneInfo("UTC")).timestamp()  # 1 July 01:00 in Auckland
    from_july = Schedule(starts="2024-07-01")
    until_june = Schedule(ends="2024-06-30")
    assert active(from_july, at, "Pacific/Auckland")
    assert not active(from_july, at, "UTC")
    assert not active(until_june, at, "Pacific/Auckland")
    assert active(until_june, at, "UTC")
    at = datetime(2024, 7, 1, 2, 0, tzinfo=ZoneInfo("UTC")).timestamp()  # 30 June 22:00 in New York
    assert not active(from_july, at, "America/New_York")
    assert active(from_july, at, "UTC")


@settings(max_examples=200)
@given(zones, instants, dates, dates)
def test_an_all_day_schedule_runs_from_starts_to_ends_in_local_dates(
        tz: str, at: int, first: date, last: date) -> None:
    first, last = min(first, last), max(first, last)
    schedule = Schedule(starts=first.isoformat(), ends=last.isoformat())
    assert active(schedule, at, tz) == (first <= local_date(at, tz) <= last)


def test_a_window_across_midnight_on_the_last_day_runs_past_the_end_date() -> None:
    tz = "Pacific/Auckland"
    schedule = Schedule(ends="2024-07-05", windows=[Window("22:00", "02:00")])
    assert active(schedule, local(tz, "2024-07-06T01:00"), tz)
    assert not active(schedule, local(tz, "2024-07-06T23:00"), tz)


def test_the_night_before_starts_is_not_active_after_midnight() -> None:
    tz = "Pacific/Auckland"
    schedule = Schedule(starts="2024-07-06", windows=[Window("22:00", "02:00")])
    assert not active(schedule, local(tz, "2024-07-06T01:00"), tz)  # the night of 5 July
    assert active(schedule, local(tz, "2024-07-06T22:00"), tz)


# ------------------------------------------------------------------- daylight saving time


def active_minutes(schedule: Schedule, tz: str, day: str) -> list[float]:
    """Every minute (as unix time) of the UTC day ``day`` plus a margin at which
    ``schedule`` is active."""
    begin = datetime.fromisoformat(day).replace(tzinfo=ZoneInfo("UTC")).timestamp() - 6 * 3600
    steps = (begin + 60 * i for i in range(36 * 60))
    return [t for t in steps if active(schedule, t, tz)]


def test_a_window_in_the_spring_gap_is_never_reached() -> None:
    tz = "Europe/Berlin"  # 2024-03-31: 02:00 CET jumps to 03:00 CEST
    gap = Schedule(starts="2024-03-31", ends="2024-03-31", windows=[Window("02:00", "03:00")])
    assert active_minutes(gap, tz, "2024-03-31") == []
    half = Schedule(starts="2024-03-31", ends="2024-03-31", windows=[Window("02:30", "04:00")])
    assert not active(half, local(tz, "2024-03-31T01:59"), tz)
    assert active(half, local(tz, "2024-03-31T03:00"), tz)  # one minute later in real time
    assert len(active_minutes(half, tz, "2024-03-31")) == 60


def test_the_repeated_fall_back_hour_counts_both_times() -> None:
    tz = "Europe/Berlin"  # 2024-10-27: 03:00 CEST falls back to 02:00 CET
    schedule = Schedule(starts="2024-10-27", ends="2024-10-27", windows=[Window("02:00", "03:00")])
    assert active(schedule, local(tz, "2024-10-27T02:30", fold=0), tz)  # CEST reading
    assert active(schedule, local(tz, "2024-10-27T02:30", fold=1), tz)  # CET reading
    assert len(active_minutes(schedule, tz, "2024-10-27")) == 120
    tz = "America/New_York"  # 2024-11-03: 02:00 EDT falls back to 01:00 EST
    schedule = Schedule(windows=[Window("01:00", "02:00")], starts="2024-11-03", ends="2024-11-03")
    assert len(active_minutes(schedule, tz, "2024-11-03")) == 120


# ------------------------------------------------------------------- caps


deliveries_around = st.integers(1_600_000_000, 1_900_000_000).flatmap(
    lambda at: st.tuples(st.just(at), st.lists(st.integers(at - 15 * 86400, at + 15 * 86400),
                                               max_size=20)))


@settings(max_examples=200)
@given(zones, deliveries_around, st.integers(1, 5))
def test_a_daily_cap_allows_iff_fewer_than_count_deliveries_fell_on_the_local_day(
        tz: str, at_and_deliveries: tuple[int, list[int]], count: int) -> None:
    at, deliveries = at_and_deliveries
    same_day = sum(1 for t in deliveries if local_date(t, tz) == local_date(at, tz))
    assert cap_allows(Cap(count, "day"), deliveries, at, tz) == (same_day < count)


@settings(max_examples=200)
@given(zones, deliveries_around, st.integers(1, 5))
def test_a_weekly_cap_allows_iff_fewer_than_count_deliveries_fell_in_the_local_iso_week(
        tz: str, at_and_deliveries: tuple[int, list[int]], count: int) -> None:
    at, deliveries = at_and_deliveries
    week = local_date(at, tz).isocalendar()[:2]
    same_week = sum(1 for t in deliveries if local_date(t, tz).isocalendar()[:2] == week)
    assert cap_allows(Cap(count, "week"), deliveries, at, tz) == (same_week < count)


def test_no_cap_always_allows() -> None:
    assert cap_allows(None, [1_700_000_000.0] * 5000, 1_700_000_000.0, "UTC")


def test_a_daily_cap_counts_the_node_local_day() -> None:
    tz = "America/New_York"
    delivered = [local(tz, "2024-07-01T19:00")]  # 23:00 UTC, 1 July
    at = local(tz, "2024-07-01T21:00")  # 01:00 UTC, 2 July: another day in UTC only
    assert not cap_allows(Cap(1, "day"), delivered, at, tz)
    assert cap_allows(Cap(1, "day"), delivered, local(tz, "2024-07-02T00:00"), tz)


def test_a_weekly_cap_week_starts_on_monday_and_spans_new_year() -> None:
    tz = "Europe/Berlin"
    sunday_night = [local(tz, "2024-07-07T23:30")]
    assert cap_allows(Cap(1, "week"), sunday_night, local(tz, "2024-07-08T00:10"), tz)
    assert not cap_allows(Cap(1, "week"), sunday_night, local(tz, "2024-07-01T00:00"), tz)
    monday_before_new_year = [local(tz, "2024-12-30T10:00")]  # ISO week 2025-W01
    assert not cap_allows(Cap(1, "week"), monday_before_new_year, local(tz, "2025-01-05T20:00"), tz)


# ------------------------------------------------------------------- display loop and pushes


NEVER = Schedule(ends="2000-01-01")


@st.composite
def loop_entries(draw: st.DrawFn) -> list[tuple[str, Schedule, bool]]:
    """Items with unique ids, each (id, schedule, whether it is active in 2020..2030)."""
    rows = draw(st.lists(st.tuples(st.text("abcdef", min_size=1, max_size=3), st.booleans(),
                                   st.integers(-100, 100), st.integers(1, 100)),
                         unique_by=lambda row: row[0], max_size=8))
    return [(item_id, Schedule(priority=priority, share=share, ends=None if live else "2000-01-01"), live)
            for item_id, live, priority, share in rows]


@settings(max_examples=150)
@given(loop_entries(), instants, zones)
def test_over_sum_of_shares_slots_each_active_item_appears_exactly_its_share(
        rows: list[tuple[str, Schedule, bool]], at: int, tz: str) -> None:
    entries = [(item_id, schedule) for item_id, schedule, _ in rows]
    shares = {item_id: schedule.share for item_id, schedule, live in rows if live}
    loop = display_loop(entries, at, tz, sum(shares.values()))
    assert Counter(loop) == Counter(shares)


@settings(max_examples=150)
@given(loop_entries(), instants, st.integers(0, 300))
def test_inactive_items_never_appear_in_the_loop(
        rows: list[tuple[str, Schedule, bool]], at: int, slots: int) -> None:
    loop = display_loop([(item_id, schedule) for item_id, schedule, _ in rows], at, "UTC", slots)
    assert set(loop) <= {item_id for item_id, _, live in rows if live}
    assert len(loop) == (slots if any(live for _, _, live in rows) else 0)


@settings(max_examples=100)
@given(loop_entries(), instants, st.integers(0, 300), st.randoms(use_true_random=False))
def test_the_loop_is_deterministic_whatever_the_order_of_entries(
        rows: list[tuple[str, Schedule, bool]], at: int, slots: int, rng: random.Random) -> None:
    entries = [(item_id, schedule) for item_id, schedule, _ in rows]
    shuffled = list(entries)
    rng.shuffle(shuffled)
    first = display_loop(entries, at, "UTC", slots)
    assert display_loop(entries, at, "UTC", slots) == first
    assert display_loop(shuffled, at, "UTC", slots) == first
    assert push_order(shuffled, at, "UTC") == push_order(entries, at, "UTC")


def test_equal_shares_play_in_priority_order_then_by_id() -> None:
    entries = [("c", Schedule(priority=0)), ("b", Schedule(priority=0)),
               ("low", Schedule(priority=-3)), ("top", Schedule(priority=5))]
    assert display_loop(entries, 0, "UTC", 8) == ["top", "b", "c", "low"] * 2


def test_the_loop_spreads_an_item_out_rather_than_running_it_together() -> None:
    entries = [("a", Schedule(share=2)), ("b", Schedule(share=2)), ("c", Schedule(share=1))]
    assert display_loop(entries, 0, "UTC", 5) == ["a", "b", "c", "a", "b"]
    entries = [("a", Schedule(share=5)), ("b", Schedule(share=1)), ("c", Schedule(share=1))]
    assert display_loop(entries, 0, "UTC", 7) == ["a", "a", "b", "a", "c", "a", "a"]


def test_the_loop_repeats_its_cycle_past_sum_of_shares() -> None:
    entries = [("a", Schedule(share=2)), ("b", Schedule(share=1))]
    assert display_loop(entries, 0, "UTC", 7) == ["a", "b", "a"] * 2 + ["a"]


def test_nothing_active_gives_an_empty_loop_and_no_pushes() -> None:
    at = local("UTC", "2024-07-01T12:00")
    assert display_loop([("a", NEVER)], at, "UTC", 10) == []
    assert display_loop([], at, "UTC", 10) == []
    assert push_order([("a", NEVER)], at, "UTC") == []


def test_an_item_listed_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        display_loop([("a", Schedule()), ("a", Schedule(share=3))], 0, "UTC", 4)


def test_push_order_is_the_active_items_by_priority_then_id() -> None:
    tz = "Europe/Berlin"
    evening = Schedule(priority=100, windows=[Window("18:00", "23:00")])
    entries = [("z", Schedule(priority=1)), ("a", Schedule(priority=1)), ("late", evening),
               ("old", NEVER), ("news", Schedule(priority=7, share=50))]
    assert push_order(entries, local(tz, "2024-07-01T12:00"), tz) == ["news", "a", "z"]
    assert push_order(entries, local(tz, "2024-07-01T19:00"), tz) == ["late", "news", "a", "z"]


# ------------------------------------------------------------------- validate and decode


@pytest.mark.parametrize("fields, message", [
    ({"starts": "2024-13-01"}, "starts: expected a date"),
    ({"starts": "20240101"}, "starts: expected a date"),
    ({"ends": "2024-7-01"}, "ends: expected a date"),
    ({"ends": "2024-02-30"}, "ends: expected a date"),
    ({"starts": "2024-07-02", "ends": "2024-07-01"}, "ends: 2024-07-01 is before starts"),
    ({"days": [7]}, "days: 7 is out of range 0..6"),
    ({"days": [-1]}, "days: -1 is out of range"),
    ({"days": [1, 3, 1]}, "days: a day is listed twice"),
    ({"days": [True]}, "days: expected an integer"),
    ({"windows": [Window("24:00", "02:00")]}, r"windows\[0\].start: expected a time"),
    ({"windows": [Window("9:00", "17:00")]}, r"windows\[0\].start: expected a time"),
    ({"windows": [Window("09:00", "12:60")]}, r"windows\[0\].end: expected a time"),
    ({"windows": [Window("09:00", "24:01")]}, r"windows\[0\].end: expected a time"),
    ({"windows": [Window("09:00", "17:00:00")]}, r"windows\[0\].end: expected a time"),
    ({"windows": [Window("00:00", "01:00"), Window("10:00", "10:00")]}, r"windows\[1\]: start == end"),
    ({"windows": [Window("00:00", "00:00")]}, "all day is 00:00-24:00"),
    ({"priority": 101}, "priority: 101 is out of range -100..100"),
    ({"priority": -101}, "priority: -101 is out of range"),
    ({"share": 0}, "share: 0 is out of range 1..100"),
    ({"share": 101}, "share: 101 is out of range"),
    ({"cap": Cap(0, "day")}, "cap.count: 0 is out of range 1..1000"),
    ({"cap": Cap(1001, "week")}, "cap.count: 1001 is out of range"),
    ({"cap": Cap(1, "month")}, "cap.per: expected 'day' or 'week'"),  # type: ignore[arg-type]
])
def test_validate_refuses_a_malformed_schedule_with_a_clear_message(fields: dict, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        validate(Schedule(**fields))


@settings(max_examples=200)
@given(schedules())
def test_a_valid_schedule_survives_validation_and_a_json_round_trip(schedule: Schedule) -> None:
    assert validate(schedule) is schedule
    encoded = msgspec.json.encode(schedule)
    assert decode_schedule(encoded) == schedule
    assert decode_schedule(encoded.decode()) == schedule
    assert decode_schedule(json.loads(encoded)) == schedule


def test_decode_schedule_refuses_unknown_fields_and_wrong_types() -> None:
    with pytest.raises(ScheduleError, match="unknown field `colour`"):
        decode_schedule(b'{"colour": "red"}')
    with pytest.raises(ScheduleError, match="unknown field `from`"):
        decode_schedule({"windows": [{"start": "09:00", "end": "10:00", "from": 1}]})
    with pytest.raises(ScheduleError, match=r"\$.priority"):
        decode_schedule('{"priority": "high"}')
    with pytest.raises(ScheduleError, match="out of range"):
        decode_schedule('{"priority": 100000000000000000000000}')


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
near_times = st.sampled_from(["00:00", "24:00", "23:59", "12:30", "1:00", "25:00", ""]) | json_values
near_windows = st.fixed_dictionaries({}, optional={"start": near_times, "end": near_times, "x": json_values})
schedule_shaped = st.fixed_dictionaries({}, optional={
    "starts": st.sampled_from(["2024-07-01", "2024-02-30", "0000-01-01", "2024-W01"]) | json_values,
    "ends": st.sampled_from(["2024-06-30", "9999-12-31"]) | json_values,
    "days": st.lists(st.integers(-2, 8), max_size=8) | json_values,
    "windows": st.lists(near_windows, max_size=3) | json_values,
    "priority": st.integers(-102, 102) | json_values,
    "share": st.integers(-1, 102) | json_values,
    "cap": st.fixed_dictionaries({}, optional={"count": st.integers(-1, 1002) | json_values,
                                               "per": st.sampled_from(["day", "week", "month"])}) | json_values,
    "extra": json_values,
})


def decodes_or_refuses(data: object) -> None:
    try:
        schedule = decode_schedule(data)  # type: ignore[arg-type]
    except ScheduleError:
        return
    assert validate(schedule) is schedule


@settings(max_examples=400)
@given(json_values | schedule_shaped)
def test_decode_schedule_raises_only_schedule_error_for_any_json_value(value: object) -> None:
    decodes_or_refuses(value)
    text = json.dumps(value)  # NaN and Infinity come out as non-JSON words: refused too
    decodes_or_refuses(text)
    decodes_or_refuses(text.encode())


@settings(max_examples=300)
@given(st.binary(max_size=64) | st.text(st.characters(exclude_categories=()), max_size=32))
def test_decode_schedule_raises_only_schedule_error_for_any_bytes_or_text(data: bytes | str) -> None:
    decodes_or_refuses(data)


def test_decode_schedule_raises_schedule_error_for_text_with_lone_surrogates() -> None:
    with pytest.raises(ScheduleError, match="not valid Unicode"):
        decode_schedule('{"starts": "\ud800"}')
