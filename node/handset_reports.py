"""What a handset reports to the node during a session: items its consent refused
(``Refused``) and the open records it queued since its last contact (``Opened``).

Both become events in the node's outbox, so they reach the hub like every other event
(docs/handset.md): ``refused`` {item_id, version, reason, handset_id}; ``open``
{item_id, version, handset_id, counter, received_at (the node the item came from),
opened_at} for each record whose signature verifies under the key of the handset this
session authenticated; ``open_refused`` {handset_id, counter, reason} for each that
does not (forged, another handset's, malformed). The node acknowledges the records it
dealt with (OpenedAck) only after their events are committed, so a phone drops nothing
the hub may not get.

What one session's handset can put into the outbox is bounded (``SessionReports``): a
refusal per item the node delivered in this session (a refusal of anything else, or a
second one, is dropped), and at most MAX_OPEN_RECORDS open records (an event per
counter; more waits, unacknowledged, for a later contact).
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tapcast.protocol import ble
from tapcast.protocol.openrecord import OpenRecord, OpenRecordError, verify

log = logging.getLogger(__name__)

Event = tuple[str, dict[str, Any]]


@dataclass
class SessionReports:
    """What the handset of one session may still report. ``delivered``: the item ids
    delivered in the session so far (the daemon's TapRecord.delivered, shared)."""

    delivered: list[str]
    refused: Counter[str] = field(default_factory=Counter)
    counters: set[int] = field(default_factory=set)  # open records taken (or refused)
    records_left: int = ble.MAX_OPEN_RECORDS

    def may_refuse(self, item_id: str) -> bool:
        """A refusal per delivery of the item in this session."""
        if self.refused[item_id] >= self.delivered.count(item_id):
            return False
        self.refused[item_id] += 1
        return True


async def handset_report(push: Any, message: ble.Refused | ble.Opened, handset_id: str,
                         handset_key: bytes, record: Callable[..., None],
                         session: SessionReports) -> None:
    """Record ``message`` with ``record(*events)`` (the daemon's outbox writer) and, for
    Opened, answer OpenedAck over ``push``. Without the handset's key (a session that
    did not carry it) open records are left with the phone for a later contact."""
    if isinstance(message, ble.Refused):
        if not session.may_refuse(message.item_id):
            log.info("refusal of %.64r from %s dropped: not delivered in this session "
                     "(or refused already)", message.item_id, handset_id)
            return
        reason = message.reason if message.reason in ble.REFUSAL_REASONS else "other"
        record(("refused", {"item_id": message.item_id, "version": message.version,
                            "reason": reason, "handset_id": handset_id}))
        return
    if not handset_key:
        log.info("open records from %s not taken: no handset key in this session", handset_id)
        await push.send(ble.OpenedAck([]))
        return
    events: list[Event] = []
    done: list[int] = []
    refused: dict[int, str] = {}
    taken = message.records[:min(ble.MAX_OPEN_RECORDS, session.records_left)]
    session.records_left -= len(taken)
    for data in taken:
        try:
            rec = verify(data, handset_id, handset_key)
        except OpenRecordError as exc:
            counter = _counter(data)
            events.append(("open_refused", {"handset_id": handset_id, "counter": counter,
                                            "reason": exc.reason}))
            log.warning("open record from %s refused: %s", handset_id, exc)
            if counter is not None:
                refused[counter] = exc.reason
                done.append(counter)
            continue
        done.append(rec.counter)
        if rec.counter in session.counters:  # repeated in this session: recorded already
            continue
        session.counters.add(rec.counter)
        events.append(("open", {"item_id": rec.item_id, "version": rec.version,
                                "handset_id": handset_id, "counter": rec.counter,
                                "received_at": rec.node_id, "opened_at": rec.opened_at}))
    if events:
        record(*events)  # committed to the outbox before the phone may drop anything
    await push.send(ble.OpenedAck(done, refused))


def _counter(data: bytes) -> int | None:
    """The counter a refused record claims, so the phone can drop it (None: unreadable)."""
    try:
        return OpenRecord.decode(data)[0].counter
    except (OpenRecordError, ValueError):
        return None
