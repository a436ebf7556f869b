"""Consent on the phone (handset_app.consent, docs/handset.md "Consent"): the rules
alone, then on real stacks (nfcpy udp tap, bumble air, node daemon and its outbox), and
a refusal's way to the hub (real Mosquitto and ingest)."""
from __future__ import annotations

import hashlib
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from hall.testing.hub import HubServer
from hall.testing.mosquitto import Mosquitto
from hall.virtual import HallNode, VirtualHall
from handset_app.consent import Consent
from handset_app.phone import Phone
from tapcast.protocol import ble
from tests.phone_support import attached, hall_and_phone, pair, tap

__all__ = ["pair"]  # the fixture

pytestmark = pytest.mark.timeout(60)

#: 2026-11-30 23:30 UTC: inside quiet hours 22:00-07:00.
LATE = datetime(2026, 11, 30, 23, 30, tzinfo=timezone.utc).timestamp()
NOON = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc).timestamp()


def at(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, 30, hour, minute, tzinfo=timezone.utc)


# ------------------------------------------------------------------------- the rules


@pytest.mark.parametrize(("start", "end", "hour", "quiet"), [
    ("22:00", "07:00", 23, True), ("22:00", "07:00", 3, True), ("22:00", "07:00", 7, False),
    ("22:00", "07:00", 12, False), ("13:00", "14:00", 13, True), ("13:00", "14:00", 14, False),
    (None, None, 3, False)])
def test_quiet_hours_may_span_midnight(start: str | None, end: str | None, hour: int,
                                       quiet: bool) -> None:
    consent = Consent(quiet_start=start, quiet_end=end)
    reason = consent.refusal("article", "", requested=False, local=at(hour),
                             unrequested_today=0)
    assert (reason == "quiet_hours") is quiet


def test_the_daily_cap_counts_unrequested_items() -> None:
    consent = Consent(daily_cap=2)
    assert consent.refusal("coupon", "", requested=False, local=at(12), unrequested_today=1) is None
    assert consent.refusal("coupon", "", requested=False, local=at(12), unrequested_today=2) == "cap"


def test_a_request_lifts_quiet_hours_and_the_cap_but_not_a_blocked_merchant_or_kind() -> None:
    consent = Consent(kinds={"coupon": False}, blocked_merchants={"Spam Ltd"},
                      quiet_start="00:00", quiet_end="23:59", daily_cap=0)
    ask = {"requested": True, "local": at(12), "unrequested_today": 5}
    assert consent.refusal("article", "", **ask) is None
    assert consent.refusal("article", "Spam Ltd", **ask) == "merchant"
    assert consent.refusal("coupon", "", **ask) == "kind"
    assert consent.refusal("article", "", requested=False, local=at(12),
                           unrequested_today=0) == "quiet_hours"


def test_a_kind_the_phone_does_not_know_is_refused() -> None:
    assert Consent().refusal("spam", "", requested=True, local=at(12),
                             unrequested_today=0) == "kind"


def test_kind_consent_travels_as_flag_bits_and_the_node_reads_them() -> None:
    flags = Consent(kinds={"article": False, "ticket": False}).flags
    assert flags == ble.CONSENT_KINDS_DECLARED | 0x0002 | 0x0004 | 0x0010 == 0x8016
    assert not ble.consent_allows_kind(flags, "article")
    assert ble.consent_allows_kind(flags, "coupon")
    assert ble.consent_allows_kind(0x0003, "article")  # an older phone: no kinds declared


@pytest.mark.parametrize("bad", [
    {"kinds": {"spam": True}}, {"quiet_start": "22:00"}, {"quiet_start": "25:00", "quiet_end": "1:00"},
    {"daily_cap": -1}])
def test_malformed_consent_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        Consent(**bad)


def test_consent_is_kept_on_the_phone(tmp_path: Path) -> None:
    phone = Phone(tmp_path)
    consent = Consent(kinds={"media": False}, blocked_merchants={"A", "B"},
                      quiet_start="22:00", quiet_end="07:00", daily_cap=3)
    phone.set_consent(consent)
    phone.store.close()
    assert Phone(tmp_path).consent() == consent


# -------------------------------------------------------------- on the real stacks


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def refused_events(node: HallNode) -> list[dict]:
    assert node.daemon is not None
    return [e.data for e in node.daemon.outbox.pending(10_000) if e.kind == "refused"]


async def test_a_kind_not_consented_is_refused_at_the_phone_and_the_node_records_it(
        pair: tuple[VirtualHall, Phone]) -> None:
    hall, phone = pair
    phone.set_consent(Consent(kinds={"coupon": False}))
    node = hall.nodes[0]
    rec = await tap(phone, node, ("coffee-coupon", "hours"))
    assert rec.of("on_refused") == [("coffee-coupon", "kind")]
    assert phone.item("coffee-coupon") is None and phone.item("hours") is not None
    assert refused_events(node) == [{"item_id": "coffee-coupon", "version": 0,
                                     "reason": "kind", "handset_id": "phone-1"}]


async def test_the_node_does_not_push_a_kind_the_consent_flags_exclude(
        pair: tuple[VirtualHall, Phone]) -> None:
    hall, phone = pair
    phone.set_consent(Consent(kinds={"article": False}))  # the featured "welcome"
    node = hall.nodes[0]
    rec = await tap(phone, node)
    # the node went past its featured article to the first item of a kind wanted
    assert [e.kind for (e,) in rec.of("on_item")] == ["ticket"]
    assert rec.of("on_refused") == [] and refused_events(node) == []


async def test_quiet_hours_refuse_what_comes_unasked_and_a_request_passes(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with hall_and_phone(mosquitto, tmp_path, clock=Clock(LATE)) as (hall, phone):
        phone.set_consent(Consent(quiet_start="22:00", quiet_end="07:00"))
        node = hall.nodes[0]
        rec = await tap(phone, node, ("hours",))
        assert rec.of("on_refused") == [("welcome", "quiet_hours")]
        assert [e.item_id for e in phone.inbox()] == ["hours"]
        assert [e["reason"] for e in refused_events(node)] == ["quiet_hours"]


async def test_the_daily_cap_holds_until_the_next_local_day(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    clock = Clock(NOON)
    async with hall_and_phone(mosquitto, tmp_path, clock=clock) as (hall, phone):
        phone.set_consent(Consent(daily_cap=1))
        node = hall.nodes[0]
        assert (await tap(phone, node)).of("on_refused") == []
        assert (await tap(phone, node)).of("on_refused") == [("welcome", "cap")]
        clock.now += 86400  # the next day
        assert (await tap(phone, node)).of("on_refused") == []


async def test_a_blocked_merchant_is_refused_even_when_asked_for(
        pair: tuple[VirtualHall, Phone]) -> None:
    hall, phone = pair
    phone.set_consent(Consent(blocked_merchants={"The City Daily"}))
    rec = await tap(phone, hall.nodes[0], ("e-paper",))
    assert rec.of("on_refused") == [("e-paper", "merchant")]
    assert phone.item("e-paper") is None


@pytest.mark.slow
async def test_a_refusal_reaches_the_hub_and_its_funnel(
        mosquitto: Mosquitto, running_hub: HubServer, tmp_path: Path) -> None:
    from hub import get_db

    async with hall_and_phone(mosquitto, tmp_path, hub=running_hub) as (hall, phone):
        phone.set_consent(Consent(kinds={"coupon": False}))
        await tap(phone, hall.nodes[0], ("coffee-coupon",))
        assert await hall.drain(15.0)
    db = get_db(running_hub.app)
    [event] = [r for r in db.query("select kind, data from events") if r["kind"] == "refused"]
    assert '"reason":"kind"' in event["data"].replace(" ", "")
    today = int(time.time() // 86400)
    totals = db.funnel("coffee-coupon", today - 1, today + 1)["totals"]
    assert totals["refused"] == 1 and totals["request"] == 1


# ------------------------------------------------- the phone's own zone (review)

@pytest.mark.parametrize("tz", [None, "Europe/Berlin"])
@pytest.mark.parametrize(("at_utc", "midnight_utc"), [
    # 2026-03-29, clocks 02:00 CET -> 03:00 CEST: the day began at 23:00 UTC the day before
    ("2026-03-29T08:00", "2026-03-28T23:00"),
    # 2026-10-25, clocks 03:00 CEST -> 02:00 CET: the day began at 22:00 UTC the day before
    ("2026-10-25T20:00", "2026-10-24T22:00"),
    ("2026-10-25T00:30", "2026-10-24T22:00"),  # 01:30 CEST, or 02:30 CEST
])
def test_the_caps_day_begins_at_local_midnight_across_dst_in_the_phones_own_zone(
        monkeypatch: pytest.MonkeyPatch, tz: str | None, at_utc: str, midnight_utc: str) -> None:
    """tz None is the phone's own zone (the app's default): its day must begin at the
    local midnight of that date, not at the offset of the moment asked about."""
    from handset_app.consent import day_start, local_time

    def utc(text: str) -> float:
        return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()

    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        assert day_start(local_time(utc(at_utc), tz)) == utc(midnight_utc)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_quiet_hours_across_midnight_hold_on_the_dst_night_in_the_phones_own_zone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from handset_app.consent import local_time

    consent = Consent(quiet_start="22:00", quiet_end="07:00")
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        for hhmm, quiet in (("2026-03-28T20:59", False), ("2026-03-28T21:00", True),
                            ("2026-03-29T04:59", True), ("2026-03-29T05:00", False)):
            at = datetime.fromisoformat(hhmm).replace(tzinfo=timezone.utc).timestamp()
            assert consent.in_quiet_hours(local_time(at, None)) is quiet, hhmm
    finally:
        monkeypatch.undo()
        time.tzset()


async def test_the_cap_holds_to_the_last_second_of_the_day_and_frees_at_midnight(
        pair: tuple[VirtualHall, Phone]) -> None:
    """The phone's own count (kept items, by the phone's clock) at the day's boundary:
    cap 1, one item at 23:59:59 takes it, another then is refused, one at 00:00:00 of
    the next day is kept."""
    hall, phone = pair
    phone.set_consent(Consent(daily_cap=1))
    now = [at(23, 59).timestamp() + 59]
    phone.clock = lambda: now[0]

    def item(item_id: str) -> ble.ContentItem:
        return ble.ContentItem(id=item_id, title=item_id, kind="article", body=item_id,
                               sha256=hashlib.sha256(item_id.encode()).hexdigest())

    async with attached(hall, phone) as (node, rec):
        await node.send(item("late"))
        await rec.wait("on_item", lambda e: e.item_id == "late")
        await node.send(item("later"))
        await rec.wait("on_refused", lambda i, r: i == "later" and r == "cap")
        now[0] += 1  # 00:00:00, 1 December
        await node.send(item("next-day"))
        await rec.wait("on_item", lambda e: e.item_id == "next-day")
        await node.close("done")
    assert sorted(e.item_id for e in phone.inbox()) == ["late", "next-day"]
