"""Review of the hub's open counting (hub/db.py ``_Writer.stream_batches``, table
``handset_opens``): an open counts in the funnel once per (handset, counter) across
re-sends, nodes, batches and two ingest workers; a malformed open event is stored like
any event and never fails the writer's transaction; many opens in one transaction."""
from __future__ import annotations

import threading

import pytest

from hub.db import HubDB
from tapcast.protocol.mqtt import Event
from tests.test_hub_db import db

__all__ = ["db"]  # the fixture

DAY = 20_000
TS = DAY * 86400.0 + 100


def open_ev(seq: int, counter: object, handset: object = "h-1", item: object = "coffee",
            **extra: object) -> Event:
    data = {"item_id": item, "version": 1, "handset_id": handset, "counter": counter,
            "received_at": "node-1", "opened_at": 1, **extra}
    return Event(id=f"o{seq}-{counter!r:.20}", seq=seq, kind="open", ts=TS, data=data)


def opens(db: HubDB, item: str = "coffee") -> int:
    return db.funnel(item, DAY, DAY)["totals"]["open"]


def test_an_open_counts_once_per_handset_and_counter_across_batches_and_nodes(db: HubDB) -> None:
    db.write_batch([("n1", open_ev(1, 1)), ("n1", open_ev(2, 1)), ("n1", open_ev(3, 2))])
    db.write_batch([("n2", open_ev(1, 1)), ("n2", open_ev(2, 2)), ("n2", open_ev(3, 1, "h-2"))])
    assert opens(db) == 3  # (h-1, 1), (h-1, 2), (h-2, 1)
    assert db.count_events() == 6  # every delivery stays in the log


@pytest.mark.parametrize("bad", [
    {"counter": "1"}, {"counter": 1.0}, {"counter": True}, {"counter": 0}, {"counter": -5},
    {"counter": 2**53}, {"counter": 2**63 + 5}, {"counter": None},
    {"handset": "h/1"}, {"handset": "h" * 65}, {"handset": ""}, {"handset": ["h-1"]},
    {"item": "../x"}, {"item": "x" * 65}, {"item": None}, {"item": {"a": 1}},
])
def test_a_malformed_open_is_stored_not_counted_and_the_batch_goes_through(
        db: HubDB, bad: dict) -> None:
    result = db.write_batch([("n1", open_ev(1, 1)), ("n1", open_ev(2, **{"counter": 7, **bad})),
                             ("n1", open_ev(3, 2))])
    assert result.stored == 3 and db.acked_seq("n1") == 3
    assert opens(db) == 2


def test_an_open_event_without_data_fields_is_stored(db: HubDB) -> None:
    db.write_batch([("n1", Event(id="x", seq=1, kind="open", ts=TS, data={})),
                    ("n1", open_ev(2, 1))])
    assert db.count_events() == 2 and opens(db) == 1


def test_thousands_of_opens_in_one_transaction(db: HubDB) -> None:
    """A transaction holds up to ``mqtt.batch_size`` events plus one message (4000 +
    1000 by default, more when configured): the opens' insert must not hit the
    database's limit on bound parameters (SQLite 32766, PostgreSQL 65535)."""
    n = 14_000
    db.write_batch([("n1", open_ev(i, i)) for i in range(1, n + 1)])
    assert opens(db) == n


@pytest.mark.parametrize("hub_database", ["postgresql"], indirect=True)
def test_two_ingest_workers_count_the_same_open_once(hub_database: str) -> None:
    """Two writers (as two ingest workers on PostgreSQL) storing the same records
    through different nodes at the same moment: each (handset, counter) once."""
    dbs = [HubDB(hub_database), HubDB(hub_database)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for round_ in range(20):
                barrier.wait()
                dbs[i].write_batch([(f"n{i}", open_ev(round_ * 10 + k + 1, round_ * 10 + k + 1))
                                    for k in range(10)])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors
        assert opens(dbs[0]) == 200
    finally:
        for d in dbs:
            d.close()
