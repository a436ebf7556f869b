"""The node's durable outbox: seq assignment, ordering, ack semantics, durability."""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from node.outbox import Outbox, OutboxError


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    box = Outbox(tmp_path / "outbox.db")
    yield box
    box.close()


def test_add_assigns_seq_1_2_3_and_a_uuid_hex_id(outbox: Outbox) -> None:
    events = [outbox.add("tap", {"n": n}) for n in range(3)]
    assert [e.seq for e in events] == [1, 2, 3]
    assert all(len(e.id) == 32 and int(e.id, 16) >= 0 for e in events)
    assert len({e.id for e in events}) == 3


def test_pending_returns_events_in_seq_order_with_their_data(outbox: Outbox) -> None:
    outbox.add("tap", {"a": 1})
    outbox.add("auth", {"ok": True, "reason": "ok"})
    pending = outbox.pending(10)
    assert [(e.seq, e.kind, e.data) for e in pending] == [
        (1, "tap", {"a": 1}), (2, "auth", {"ok": True, "reason": "ok"})]


def test_pending_honours_limit_and_after(outbox: Outbox) -> None:
    outbox.add_many([("tap", {"i": i}) for i in range(10)])
    assert [e.seq for e in outbox.pending(3)] == [1, 2, 3]
    assert [e.seq for e in outbox.pending(3, after=8)] == [9, 10]


def test_ack_deletes_every_event_up_to_and_including_seq(outbox: Outbox) -> None:
    outbox.add_many([("tap", None)] * 5)
    assert outbox.ack(3) == 3
    assert [e.seq for e in outbox.pending(10)] == [4, 5]
    assert outbox.depth() == 2


def test_seq_is_never_reused_after_everything_was_acked(outbox: Outbox) -> None:
    outbox.add_many([("tap", None)] * 3)
    outbox.ack(3)
    assert outbox.depth() == 0
    assert outbox.add("tap").seq == 4


def test_seq_and_pending_events_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path) as box:
        box.add_many([("tap", None)] * 3)
        box.ack(3)  # all acked: the table is empty but seq 1-3 are spent
        box.add("delivery", {"item_id": "x"})
    with Outbox(path) as box:
        assert [(e.seq, e.kind) for e in box.pending(10)] == [(4, "delivery")]
        assert box.add("tap").seq == 5
        assert box.last_seq() == 5


def test_outbox_uses_wal_and_full_sync_by_default(outbox: Outbox) -> None:
    assert outbox.db.journal_mode == "wal"
    assert outbox.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_unknown_kind_is_refused_and_nothing_is_stored(outbox: Outbox) -> None:
    with pytest.raises(OutboxError, match="unknown event kind 'tapp'"):
        outbox.add_many([("tap", None), ("tapp", None)])
    assert outbox.depth() == 0


def test_data_that_is_not_json_is_refused_with_a_clear_error(outbox: Outbox) -> None:
    with pytest.raises(OutboxError, match="not JSON-serialisable"):
        outbox.add("tap", {"when": object()})
    with pytest.raises(OutboxError, match="must be a dict"):
        outbox.add("tap", ["not", "a", "dict"])  # type: ignore[arg-type]


def test_bad_synchronous_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous must be one of"):
        Outbox(tmp_path / "o.db", synchronous="OFF")


def test_outbox_refuses_use_from_another_thread(outbox: Outbox) -> None:
    """Documented choice: one owner thread (the uplink's loop); misuse fails loudly."""
    errors: list[BaseException] = []

    def other() -> None:
        try:
            outbox.add("tap")
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], sqlite3.ProgrammingError)
