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
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from tapcast.protocol import ble
from tapcast.protocol.openrecord import OpenRecord, OpenRecordError, verify

log = logging.getLogger(__name__)

Event = tuple[str, dict[str, Any]]


async def handset_report(push: Any, message: ble.Refused | ble.Opened, handset_id: str,
                         handset_key: bytes,
                         record: Callable[..., None]) -> None:
    """Record ``message`` with ``record(*events)`` (the daemon's outbox writer) and, for
    Opened, answer OpenedAck over ``push``. Without the handset's key (a session that
    did not carry it) open records are left with the phone for a later contact."""
    if isinstance(message, ble.Refused):
        reason = message.reason if message.reason in ble.REFUSAL_REASONS else "other"
        record(("refused", {"item_id": message.item_id[:64], "version": message.version,
                            "reason": reason, "handset_id": handset_id}))
        return
    if not handset_key:
        log.info("open records from %s not taken: no handset key in this session", handset_id)
        await push.send(ble.OpenedAck([]))
        return
    events: list[Event] = []
    done: list[int] = []
    refused: dict[int, str] = {}
    for data in message.records[:ble.MAX_OPEN_RECORDS]:
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
        events.append(("open", {"item_id": rec.item_id, "version": rec.version,
                                "handset_id": handset_id, "counter": rec.counter,
                                "received_at": rec.node_id, "opened_at": rec.opened_at}))
        done.append(rec.counter)
    if events:
        record(*events)  # committed to the outbox before the phone may drop anything
    await push.send(ble.OpenedAck(done, refused))


def _counter(data: bytes) -> int | None:
    """The counter a refused record claims, so the phone can drop it (None: unreadable)."""
    try:
        return OpenRecord.decode(data)[0].counter
    except (OpenRecordError, ValueError):
        return None
