"""Hub storage: each (node, epoch, seq) stored once, contiguous acks that move past holes
the node can no longer fill, incidents, quarantine, counts, event listing."""
from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.db import HubDB, Quarantined, QueryError, StorageError, open_db
from hub.migrate import upgrade
from tapcast.protocol.mqtt import BatchHeader, Event, EventBatch, NodeState


def ev(seq: int, kind: str = "tap", ts: float | None = None, **data: object) -> Event:
    return Event(id=f"e{seq}", seq=seq, kind=kind, ts=1000.0 + seq if ts is None else ts,
                 data=data)


@pytest.fixture
def db(hub_database: str) -> Iterator[HubDB]:
    store = HubDB(hub_database)
    yield store
    store.close()


def test_a_sqlite_database_is_in_wal_mode_so_pages_read_while_ingest_writes(
        tmp_path: Path) -> None:
    upgrade(str(tmp_path / "hub.db"), echo=print)
    assert sqlite3.connect(tmp_path / "hub.db").execute(
        "PRAGMA journal_mode").fetchone() == ("wal",)


def test_same_node_and_seq_is_stored_once(db: HubDB) -> None:
    first = db.write_batch([("n1", ev(1)), ("n1", ev(2))])
    again = db.write_batch([("n1", ev(2)), ("n1", ev(3))])
    assert (first.stored, first.duplicates) == (2, 0)
    assert (again.stored, again.duplicates) == (1, 1)
    assert db.count_events() == 3


def test_duplicate_inside_one_batch_is_stored_once(db: HubDB) -> None:
    result = db.write_batch([("n1", ev(1)), ("n1", ev(1))])
    assert (result.stored, result.duplicates) == (1, 1)


def test_same_seq_on_two_nodes_is_two_events(db: HubDB) -> None:
    assert db.write_batch([("a", ev(1)), ("b", ev(1))]).stored == 2


def test_ack_is_highest_contiguous_seq_and_stops_at_a_gap(db: HubDB) -> None:
    assert db.write_batch([("n1", ev(s)) for s in (1, 2, 3, 5, 6)]).acked == {"n1": 3}
    assert db.acked_seq("n1") == 3


def test_ack_jumps_over_stored_events_when_the_gap_is_filled(db: HubDB) -> None:
    db.write_batch([("n1", ev(s)) for s in (1, 2, 4, 5, 6)])
    assert db.write_batch([("n1", ev(3))]).acked == {"n1": 6}


def test_ack_is_zero_while_seq_one_is_missing(db: HubDB) -> None:
    assert db.write_batch([("n1", ev(2))]).acked == {"n1": 0}


def test_ack_does_not_move_past_a_permanent_gap_on_later_batches(db: HubDB) -> None:
    db.write_batch([("n1", ev(s)) for s in (1, 2, 4)])
    assert db.write_batch([("n1", ev(s)) for s in (5, 6)]).acked == {"n1": 2}


def test_ack_is_reported_for_every_node_in_the_batch(db: HubDB) -> None:
    result = db.write_batch([("a", ev(1)), ("b", ev(1)), ("b", ev(2))])
    assert result.acked == {"a": 1, "b": 2}


def test_a_failed_batch_leaves_nothing_behind(db: HubDB) -> None:
    unencodable = Event(id="x", seq=1, kind="tap", ts=1.0, data={"x": object()})
    with pytest.raises(TypeError):
        db.write_batch([("n1", ev(1)), ("n1", ev(2)), ("n2", unencodable)])
    assert db.count_events() == 0
    assert db.acked_seq("n1") == 0
    assert db.list_nodes(stale_after=60) == ([], None)


def test_events_are_stored_field_for_field(db: HubDB) -> None:
    db.write_batch([("n1", Event(id="abc", seq=1, kind="auth", ts=12.5,
                                 data={"ok": False, "reason": "expired"}))], received=99.0)
    (event,), _ = db.list_events()
    assert event == {"node_id": "n1", "epoch": "e0", "seq": 1, "id": "abc", "kind": "auth",
                     "ts": 12.5, "data": {"ok": False, "reason": "expired"}, "received": 99.0}


def test_event_without_data_is_stored_with_an_empty_object(db: HubDB) -> None:
    db.write_batch([("n1", Event(id="a", seq=1, kind="tap", ts=1))])
    assert db.list_events()[0][0]["data"] == {}


def test_an_unknown_kind_is_stored_and_counted(db: HubDB) -> None:
    db.write_batch([("n1", ev(1, "impression"))])
    assert db.event_totals()["by_kind"] == {"impression": 1}


def test_same_seq_with_another_id_is_a_conflict_incident_not_a_duplicate(db: HubDB) -> None:
    db.write_batch([("n1", ev(1)), ("n1", ev(2))])
    forged = Event(id="other", seq=2, kind="tap", ts=5.0)
    result = db.write_batch([("n1", forged)])
    assert (result.stored, result.duplicates, result.conflicts) == (0, 0, 1)
    assert db.list_events(node_id="n1")[0][0]["id"] == "e2"  # the first stored is kept
    (incident,) = db.list_incidents()
    assert (incident["kind"], incident["count"]) == ("conflict", 1)


def test_a_hole_below_what_the_node_still_holds_is_lost_for_good_and_passed(db: HubDB) -> None:
    db.write_batch([("n1", ev(s)) for s in (1, 2)])
    result = db.write_batch([("n1", ev(s)) for s in (6, 7)], low=6)  # 3..5 deleted by the node
    assert result.acked == {"n1": 7}
    assert result.lost == 3
    (incident,) = db.list_incidents()
    assert (incident["kind"], incident["count"]) == ("lost", 3)
    assert "3..5" in incident["detail"]


def test_a_hole_the_node_will_still_fill_holds_the_ack(db: HubDB) -> None:
    db.write_batch([("n1", ev(s)) for s in (1, 2)])
    assert db.write_batch([("n1", ev(s)) for s in (6, 7)], low=3).acked == {"n1": 2}
    assert db.list_incidents() == []


def test_stored_events_inside_a_hole_are_not_counted_lost(db: HubDB) -> None:
    db.write_batch([("n1", ev(s)) for s in (1, 4)])
    assert db.write_batch([("n1", ev(6))], low=6).lost == 3  # 2, 3 and 5


def test_a_database_restored_from_an_older_copy_resumes_the_node(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    upgrade(str(path), echo=print)
    with HubDB(path) as live:
        live.write_batch([("n1", ev(s)) for s in range(1, 4)])
    backup = tmp_path / "backup.db"
    sqlite3.connect(path).execute(f"VACUUM INTO '{backup}'")
    with HubDB(path) as live:
        live.write_batch([("n1", ev(s)) for s in range(4, 11)])  # acked: the node deleted them
    for stale in (path, path.with_name("hub.db-wal"), path.with_name("hub.db-shm")):
        stale.unlink(missing_ok=True)
    backup.rename(path)
    with HubDB(path) as restored:
        result = restored.write_batch([("n1", ev(11))], low=11)  # all the node still holds
        assert result.acked == {"n1": 11}
        assert result.lost == 7


def test_a_new_epoch_is_a_new_stream_and_an_incident(db: HubDB) -> None:
    db.write_batch([("n1", ev(s)) for s in (1, 2, 3)], epoch="old")
    result = db.write_batch([("n1", ev(1))], epoch="new")  # data dir wiped: seq 1 again
    assert (result.stored, result.duplicates) == (1, 0)
    assert result.acks == [("n1", "new", 1)]
    assert db.acked_seq("n1") == 1
    assert [i["kind"] for i in db.list_incidents()] == ["new_epoch"]


def test_a_quarantined_batch_is_kept_once_and_acked_past(db: HubDB) -> None:
    db.write_batch([("n1", ev(s)) for s in (1, 2)], epoch="e1")
    q = Quarantined("n1", b"t1.x.{...}", "bad kind", BatchHeader("n1", "e1", 3, 3, 5))
    assert db.write(quarantined=[q]).acks == [("n1", "e1", 5)]
    assert db.write(quarantined=[q]).quarantined == 0  # a re-send is not kept twice
    assert db.incident_totals() == {"quarantined": 1, "quarantined_batches": 1}
    assert db.write_batch([("n1", ev(6))], epoch="e1", low=6).acked == {"n1": 6}


def test_a_quarantined_batch_after_a_hole_waits_for_the_hole(db: HubDB) -> None:
    db.write_batch([("n1", ev(1))], epoch="e1")
    q = Quarantined("n1", b"payload", "bad", BatchHeader("n1", "e1", 2, 4, 5))
    assert db.write(quarantined=[q]).acks == [("n1", "e1", 1)]


def test_auth_counts_as_ok_only_for_json_true(db: HubDB) -> None:
    db.write_batch([("n1", ev(1, "auth", ok=1)), ("n1", ev(2, "auth", ok="yes")),
                    ("n1", ev(3, "auth", ok=True))])
    assert (db.event_totals()["auth_ok"], db.event_totals()["auth_rejected"]) == (1, 2)


def test_counts_per_kind_and_auth_verdicts_count_only_stored_rows(db: HubDB) -> None:
    batch = [("n1", ev(1, "tap")), ("n1", ev(2, "auth", ok=True)),
             ("n1", ev(3, "auth", ok=False, reason="expired")), ("n1", ev(4, "delivery"))]
    db.write_batch(batch)
    db.write_batch(batch)  # re-sent: must not count twice
    assert db.event_totals() == {"total": 4, "by_kind": {"auth": 2, "delivery": 1, "tap": 1},
                                 "auth_ok": 1, "auth_rejected": 1}


def test_node_is_online_only_while_heard_recently_and_not_reported_offline(db: HubDB) -> None:
    db.write_batch([], statuses=[("n1", "online", 100.0)], seen={"n1": 100.0})
    assert db.get_node("n1", stale_after=30, now=120.0)["status"] == "online"
    assert db.get_node("n1", stale_after=30, now=200.0)["status"] == "offline"
    db.write_batch([], statuses=[("n1", "offline", 121.0)])
    assert db.get_node("n1", stale_after=30, now=122.0)["status"] == "offline"


def test_state_sets_zone_version_and_queue_depth(db: HubDB) -> None:
    state = NodeState(node_id="n1", ts=50.0, version="2.0", zone="hall", uptime=1.0,
                      outbox_depth=12)
    db.write_batch([], states=[("n1", state, 60.0)])
    node = db.get_node("n1", stale_after=30, now=70.0)
    assert node is not None
    assert (node["zone"], node["version"], node["outbox_depth"], node["last_seen"]) == \
        ("hall", "2.0", 12, 60.0)


def test_unknown_node_is_none(db: HubDB) -> None:
    assert db.get_node("nope", stale_after=30) is None


def test_events_list_newest_first_with_filters(db: HubDB) -> None:
    db.write_batch([("a", ev(1, "tap")), ("a", ev(2, "auth", ok=True)), ("b", ev(1, "tap"))])
    events, _ = db.list_events()
    assert [(e["node_id"], e["seq"]) for e in events] == [("b", 1), ("a", 2), ("a", 1)]
    assert [e["seq"] for e in db.list_events(node_id="a", kind="tap")[0]] == [1]
    assert [e["seq"] for e in db.list_events(node_id="a", since_seq=1)[0]] == [2]
    assert db.list_events(kind="auth")[0][0]["data"] == {"ok": True}


def test_events_pages_cover_everything_once(db: HubDB) -> None:
    db.write_batch([("n1", ev(s)) for s in range(1, 8)])
    seen, cursor = [], None
    while True:
        page, cursor = db.list_events(limit=3, cursor=cursor)
        seen += [e["seq"] for e in page]
        if cursor is None:
            break
    assert seen == [7, 6, 5, 4, 3, 2, 1]


def test_one_nodes_pages_follow_its_storage_order(db: HubDB) -> None:
    """Newest stored first: seqs restart in a new outbox epoch, storage order does not."""
    db.write_batch([("n1", ev(s)) for s in (3, 4)] + [("n2", ev(1))])
    db.write_batch([("n1", ev(s)) for s in (1, 2)])  # arrived late: older seqs
    first, cursor = db.list_events(node_id="n1", limit=3)
    rest, end = db.list_events(node_id="n1", limit=3, cursor=cursor)
    assert [e["seq"] for e in first + rest] == [2, 1, 4, 3] and end is None


def test_cursor_from_another_listing_is_refused(db: HubDB) -> None:
    db.write_batch([("n1", ev(s)) for s in (1, 2, 3)])
    _, cursor = db.list_events(limit=1)
    with pytest.raises(QueryError, match="different filters"):
        db.list_events(node_id="n1", cursor=cursor)


@pytest.mark.parametrize("kwargs,message", [
    ({"limit": 0}, "limit must be between"),
    ({"limit": 10_000}, "limit must be between"),
    ({"since_seq": 3}, "since_seq needs node_id"),
    ({"cursor": "%%%"}, "not one this API returned"),
])
def test_bad_listing_arguments_raise_query_error(db: HubDB, kwargs: dict, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        db.list_events(**kwargs)


def test_a_database_url_of_another_kind_is_refused_with_what_would_do() -> None:
    with pytest.raises(StorageError, match="SQLite .* or PostgreSQL") as refused:
        open_db("mysql://hub:secret@db/tapcast")
    assert "secret" not in str(refused.value)


def test_an_unreachable_postgresql_names_the_server_not_the_password() -> None:
    with pytest.raises(StorageError, match="127.0.0.1:1/tapcast: cannot open it") as refused:
        open_db("postgresql://hub:secret@127.0.0.1:1/tapcast")
    assert "secret" not in str(refused.value)


def test_database_folder_that_cannot_be_created_names_path_and_reason(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StorageError, match=r"cannot create its folder .*file/sub: "
                                           r"Not a directory"):
        open_db(str(tmp_path / "file" / "sub" / "hub.db"))


def test_database_that_is_not_sqlite_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "hub.db").write_text("not a database, " * 100)
    with pytest.raises(StorageError, match=r"hub\.db: cannot open it: file is not a database"):
        open_db(str(tmp_path / "hub.db"))


def test_memory_database_is_refused_because_processes_share_the_file() -> None:
    with pytest.raises(StorageError, match="give a SQLite file path"):
        HubDB(":memory:")


def test_reopening_keeps_data(hub_database: str) -> None:
    with HubDB(hub_database) as first:
        first.write_batch([("n1", ev(1))])
    with HubDB(hub_database) as again:
        assert again.count_events() == 1 and again.acked_seq("n1") == 1


def test_event_data_too_deep_to_store_keeps_the_event_and_says_so(db: HubDB) -> None:
    deep: dict = {}
    for _ in range(100_000):
        deep = {"a": deep}
    result = db.write_batch([("n1", Event(id="x", seq=1, kind="tap", ts=1.0, data=deep))])
    assert result.stored == 1 and result.acked == {"n1": 1}
    assert db.list_events()[0][0]["data"] == {"_dropped": "data nested too deeply to store"}


def test_time_filters_bound_the_hub_time_each_event_was_stored(db: HubDB) -> None:
    for received, seq in ((100.0, 1), (200.0, 2), (300.0, 3)):
        db.write_batch([("n1", ev(seq))], received=received)
    assert [e["seq"] for e in db.list_events(since=100.0)[0]] == [3, 2]
    assert [e["seq"] for e in db.list_events(until=200.0)[0]] == [2, 1]
    assert [e["seq"] for e in db.list_events(since=150.0, until=250.0)[0]] == [2]
    assert db.list_events(since=300.0) == ([], None)
    assert db.list_events(until=99.0) == ([], None)


def test_time_filters_page_like_the_rest(db: HubDB) -> None:
    for seq in range(1, 8):
        db.write_batch([("n1", ev(seq))], received=float(seq))
    first, cursor = db.list_events(since=2.0, until=6.0, limit=3)
    rest, end = db.list_events(since=2.0, until=6.0, limit=3, cursor=cursor)
    assert [e["seq"] for e in first + rest] == [6, 5, 4, 3] and end is None


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_time_filters_find_every_bound_over_transactions_and_gaps_in_storage_order(
        db: HubDB, seed: int) -> None:
    """The time bounds come from a binary search over ``pos`` (no index on ``received``):
    many events share a transaction's time, and positions have gaps (PostgreSQL's
    sequence skips on a rollback); every bound must match a plain filter."""
    import random

    from sqlalchemy import delete

    from hub.schema import events

    rng = random.Random(seed)
    seq, at, times = 0, 10.0, []
    for _ in range(40):  # transactions of 1-4 events, at rising hub times (some equal)
        at += rng.choice((0.0, 0.5, 1.0, 3.0))
        batch = []
        for _ in range(rng.randint(1, 4)):
            seq += 1
            batch.append(("n1", ev(seq)))
        db.write_batch(batch, received=at)
        times.append(at)
    with db.engine.begin() as conn:  # gaps in storage order
        gone = rng.sample(range(1, seq + 1), seq // 5)
        conn.execute(delete(events).where(events.c.seq.in_(gone)))
    stored = {e["seq"]: e["received"] for e in db.list_events(limit=500)[0]}
    for t in sorted({*times, 9.0, times[-1] + 1, *(x + 0.25 for x in times)}):
        since = [e["seq"] for e in db.list_events(since=t, limit=500)[0]]
        until = [e["seq"] for e in db.list_events(until=t, limit=500)[0]]
        assert since == sorted((s for s, r in stored.items() if r > t), reverse=True), t
        assert until == sorted((s for s, r in stored.items() if r <= t), reverse=True), t


def test_kind_filter_finds_a_rare_kind_among_many(db: HubDB) -> None:
    db.write_batch([("n1", ev(s)) for s in range(1, 200)] + [("n1", ev(200, "error"))])
    assert [e["seq"] for e in db.list_events(kind="error")[0]] == [200]


def state(node_id: str, zone: str, version: str) -> NodeState:
    return NodeState(node_id=node_id, ts=50.0, version=version, zone=zone, uptime=1.0,
                     outbox_depth=0)


@pytest.fixture
def fleet(db: HubDB) -> HubDB:
    """Seven nodes: n0..n6 in zones a/b, versions 1/2; n5 and n6 not heard lately."""
    for i in range(7):
        node = f"n{i}"
        db.write(states=[(node, state(node, "ab"[i % 2], "12"[i // 4]),
                          100.0 if i < 5 else 10.0)])
    return db


def test_nodes_are_listed_a_page_at_a_time_by_id(fleet: HubDB) -> None:
    first, cursor = fleet.list_nodes(stale_after=30, now=110.0, limit=4)
    rest, end = fleet.list_nodes(stale_after=30, now=110.0, limit=4, cursor=cursor)
    assert [n["node_id"] for n in first] == ["n0", "n1", "n2", "n3"]
    assert [n["node_id"] for n in rest] == ["n4", "n5", "n6"] and end is None


@pytest.mark.parametrize("filters,expected", [
    ({"zone": "a"}, ["n0", "n2", "n4", "n6"]),
    ({"version": "2"}, ["n4", "n5", "n6"]),
    ({"status": "offline"}, ["n5", "n6"]),
    ({"status": "online", "zone": "b"}, ["n1", "n3"]),
    ({"zone": "nowhere"}, []),
])
def test_nodes_are_filtered_by_zone_version_and_status(fleet: HubDB, filters: dict,
                                                       expected: list[str]) -> None:
    nodes, _ = fleet.list_nodes(stale_after=30, now=110.0, **filters)
    assert [n["node_id"] for n in nodes] == expected


def test_a_filtered_listing_pages_within_its_filter(fleet: HubDB) -> None:
    first, cursor = fleet.list_nodes(stale_after=30, now=110.0, zone="a", limit=2)
    rest, end = fleet.list_nodes(stale_after=30, now=110.0, zone="a", limit=2, cursor=cursor)
    assert [n["node_id"] for n in first + rest] == ["n0", "n2", "n4", "n6"] and end is None


def test_node_totals_count_online_and_offline(fleet: HubDB) -> None:
    fleet.write(statuses=[("n0", "offline", 105.0)])
    assert fleet.node_totals(stale_after=30, now=110.0) == {
        "total": 7, "online": 4, "offline": 3}


def test_a_node_cursor_from_another_listing_is_refused(fleet: HubDB) -> None:
    cursor = "bm9kZTox"  # base64 of "node:1": an events cursor, not a nodes one
    with pytest.raises(QueryError, match="not one this API returned"):
        fleet.list_nodes(stale_after=30, cursor=cursor)


def test_fleet_totals_are_maintained_not_summed_per_node(db: HubDB) -> None:
    db.write_batch([(f"n{i}", ev(1, "auth", ok=True)) for i in range(40)]
                   + [(f"n{i}", ev(2, "tap")) for i in range(40)])
    assert db.query("SELECT sum(n) AS n FROM kind_totals WHERE kind = 'auth'") == [{"n": 40}]
    assert db.event_totals() == {"total": 80, "by_kind": {"auth": 40, "tap": 40},
                                 "auth_ok": 40, "auth_rejected": 0}


def test_two_batches_of_a_node_in_one_write_lose_nothing_whatever_their_lows(
        db: HubDB) -> None:
    """The second batch may say low=6 while the first, in the same write, carries 1..5."""
    first = EventBatch(node_id="n1", epoch="e0", low=1, first=1, last=5,
                       events=[ev(s) for s in range(1, 6)])
    second = EventBatch(node_id="n1", epoch="e0", low=6, first=6, last=8,
                        events=[ev(s) for s in range(6, 9)])
    result = db.write([first, second])
    assert (result.stored, result.lost, result.acked) == (8, 0, {"n1": 8})
    assert db.list_incidents() == []


def _write_overlapping(database: str, offset: int, barrier: threading.Barrier) -> None:
    with HubDB(database) as mine:
        barrier.wait()
        for start in range(1 + offset, 200, 10):  # every writer re-sends the others' seqs
            mine.write_batch([(f"n{k}", ev(s)) for k in range(5)
                              for s in range(start, start + 15)], low=1)


def test_concurrent_writers_store_each_event_once_and_ack_to_the_end(
        hub_database: str) -> None:
    """Several ingest workers over one database: the stream locks keep the ids read,
    the inserts and the ack walk of one writer from racing another's."""
    barrier = threading.Barrier(3)
    threads = [threading.Thread(target=_write_overlapping, args=(hub_database, k, barrier))
               for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    with HubDB(hub_database) as db:
        assert db.count_events() == 5 * 207
        assert db.query("SELECT count(*) AS n FROM events") == [{"n": 5 * 207}]
        assert {db.acked_seq(f"n{k}") for k in range(5)} == {207}  # 193 + 14
        assert db.list_incidents() == []
