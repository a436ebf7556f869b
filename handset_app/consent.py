"""The customer's consent, kept and enforced on the phone (docs/handset.md, "Consent").

Why on the phone: the phone is the one place the customer controls. A node only learns
the per-kind part (the NFC answer's consent flags, to save air time); whatever a node
pushes anyway is checked here against every rule before anything is kept.

Rules, in order:
1. ``merchant``: its merchant is blocked;
2. ``kind``: its kind is not allowed (or not one of the five the phone knows);
3. ``quiet_hours``: it arrives unrequested within the quiet hours (local time, may span
   midnight);
4. ``cap``: it arrives unrequested and the daily cap of unrequested items (local day) is
   reached.
An item the customer requested in the session is consented by that request as far as
quiet hours and the cap go (those rules are about being disturbed, and asking is not
being disturbed); a blocked merchant and a disallowed kind still refuse it: they are the
customer's standing "never", which one tap in a catalogue does not lift (the app shows
such entries as refused before anyone asks).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, time as dtime
from zoneinfo import ZoneInfo

from tapcast.protocol import ble

log = logging.getLogger(__name__)

KINDS = tuple(ble.CONSENT_KIND_BITS)  # article, coupon, media, ticket, goods


def _parse_hhmm(value: str | None, what: str) -> dtime | None:
    if value is None or value == "":
        return None
    try:
        hours, minutes = value.split(":")
        return dtime(int(hours), int(minutes))
    except (ValueError, TypeError):
        raise ValueError(f"{what} {value!r} is not a time of day as HH:MM") from None


@dataclass
class Consent:
    """The customer's own rules. ``kinds``: kind -> allowed (a kind not named is
    allowed); ``quiet_start``/``quiet_end``: "HH:MM" local time, both or neither; a
    start after the end spans midnight ("22:00" to "07:00"); ``daily_cap``: unrequested
    items kept per local day (None: no cap)."""

    kinds: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(KINDS, True))
    blocked_merchants: set[str] = field(default_factory=set)
    quiet_start: str | None = None
    quiet_end: str | None = None
    daily_cap: int | None = None

    def __post_init__(self) -> None:
        self.check()
        self.kinds = {kind: bool(self.kinds.get(kind, True)) for kind in KINDS}
        self.blocked_merchants = set(self.blocked_merchants)

    def check(self) -> None:
        """ValueError naming the rule that is not well formed."""
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown kind(s) {sorted(unknown)}: use {', '.join(KINDS)}")
        start = _parse_hhmm(self.quiet_start, "quiet_start")
        end = _parse_hhmm(self.quiet_end, "quiet_end")
        if (start is None) != (end is None):
            raise ValueError("quiet hours need both a start and an end (or neither)")
        if self.daily_cap is not None and (type(self.daily_cap) is not int or self.daily_cap < 0):
            raise ValueError(f"daily_cap must be a whole number >= 0, not {self.daily_cap!r}")

    @property
    def flags(self) -> int:
        """The uint16 consent flags the phone sends in its NFC answer."""
        return ble.consent_flags(self.kinds)

    def in_quiet_hours(self, local: datetime) -> bool:
        start = _parse_hhmm(self.quiet_start, "quiet_start")
        end = _parse_hhmm(self.quiet_end, "quiet_end")
        if start is None or end is None or start == end:
            return False
        now = local.time().replace(tzinfo=None)
        if start < end:
            return start <= now < end
        return now >= start or now < end  # spans midnight

    def refusal(self, kind: str, merchant: str, *, requested: bool, local: datetime,
                unrequested_today: int) -> str | None:
        """Why the item is refused (a ble.REFUSAL_REASONS entry), or None when it may be
        kept. ``unrequested_today``: unrequested items already kept this local day."""
        refused = self.refuses_request(kind, merchant)
        if refused is not None or requested:
            return refused
        if self.in_quiet_hours(local):
            return "quiet_hours"
        if self.daily_cap is not None and unrequested_today >= self.daily_cap:
            return "cap"
        return None

    def refuses_request(self, kind: str, merchant: str) -> str | None:
        """Why an item of ``kind`` from ``merchant`` would be refused even when asked
        for (the catalogue can say so before the customer asks), or None."""
        if merchant and merchant in self.blocked_merchants:
            return "merchant"
        # a kind the phone does not know is none the customer consented to
        return None if self.kinds.get(kind, False) else "kind"

    # ----------------------------------------------------------- storage
    def to_json(self) -> str:
        return json.dumps({"kinds": self.kinds, "blocked_merchants": sorted(self.blocked_merchants),
                           "quiet_start": self.quiet_start, "quiet_end": self.quiet_end,
                           "daily_cap": self.daily_cap}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Consent:
        raw = json.loads(text)
        return cls(kinds={**dict.fromkeys(KINDS, True), **raw.get("kinds", {})},
                   blocked_merchants=set(raw.get("blocked_merchants", [])),
                   quiet_start=raw.get("quiet_start"), quiet_end=raw.get("quiet_end"),
                   daily_cap=raw.get("daily_cap"))


def local_time(at: float, tz: str | None) -> datetime:
    """``at`` (unix seconds) as an aware local time: in ``tz`` (an IANA name) or the
    phone's own zone when None."""
    if tz is None:
        return datetime.fromtimestamp(at).astimezone()
    return datetime.fromtimestamp(at, ZoneInfo(tz))


def day_start(local: datetime) -> float:
    """Unix time of the local midnight that began ``local``'s day. The phone's own zone
    (local_time with tz None) comes as a fixed offset, the one of ``local``'s moment:
    midnight is then taken by the system's rules for the zone (naive local time), or a
    day that changed to or from summer time would begin an hour off."""
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if not isinstance(local.tzinfo, ZoneInfo) and \
            local.utcoffset() == local.astimezone().utcoffset():  # the system's zone
        midnight = midnight.replace(tzinfo=None)  # timestamp() by the system's zone rules
    return midnight.timestamp()
