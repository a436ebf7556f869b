"""Hub storage: nodes, event streams, events (each (node, epoch, seq) stored once),
incidents and quarantined batches, on SQLite or PostgreSQL through SQLAlchemy Core.

The tables are in hub/schema.py, their migrations in hub/migrations (``tapcast hub db
upgrade``); ``open_db`` refuses a database that is not at the newest revision. Why the
writes are shaped as they are:

* ``events`` has UNIQUE (node_id, epoch, seq): a node re-sends everything the hub has
  not acked, so duplicates are normal traffic. The writer reads the ids already stored
  for the seqs a batch covers: the same (node, epoch, seq) with the same id is a
  duplicate and dropped, with a different id a *conflict*, recorded as an incident and
  never stored over the first.
* One parse: the writer stores exactly the values ``decode_batch`` validated (msgspec,
  bounded seqs and times), never re-reading the JSON text with the database's parser.
* ``streams`` holds, per (node, epoch), ``acked_seq``: the highest seq such that every
  seq up to it is stored or known lost. A batch carries ``low``, the lowest seq the node
  still holds, so a hole below ``low`` will never be filled: the hub records a "lost"
  incident with the count and moves past it. ``nodes.acked_seq`` mirrors the node's
  current epoch for the API.
* Several writers at once (``hub ingest`` workers on a shared subscription): a write
  transaction first locks every stream row it touches (``SELECT ... FOR UPDATE`` on
  PostgreSQL, in sorted order so two writers never wait on each other in a circle; on
  SQLite ``BEGIN IMMEDIATE`` serialises writers anyway). Holding the stream's lock, the
  ids read for duplicate/conflict checks and the contiguous-ack walk cannot be raced
  by another writer. The nodes and counts rows are updated last, also sorted.
* ``event_counts`` (per node and kind, plus how many carried ``data.ok = true``) and
  ``kind_totals`` (the fleet's, in a few shards) are updated in the same transaction,
  so no page or API call scans ``events`` to count.
* A transaction runs the same dozen statements whatever the number of streams it
  touches (``_Statements``: built once, run over all streams at once); only rare paths
  (a hole, a quarantined batch, seqs stored out of order) cost a statement per stream.
* Events are listed newest first by ``pos`` (storage order), per node through the
  index on (node_id, pos), per kind through (kind, pos); time filters become ``pos``
  bounds by a binary search over the primary key (no index on ``received``: it cost
  the writer a tenth of its rate). Nodes are listed a page at a time by id, filtered on indexes.
* SQLite commits with ``synchronous=FULL`` and PostgreSQL with its default
  ``synchronous_commit``: a commit is durable before the ingest acks it; a batch of
  messages per transaction amortises the flush.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import logging
import re
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
from sqlalchemy import (BigInteger, Connection, Engine, String, bindparam, case, cast, func,
                        literal_column, select, text, update)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from tapcast.protocol.mqtt import MAX_EVENT_DATA, BatchHeader, Event, EventBatch, NodeState

from hub.dbengine import StorageError, make_engine, reason, shown_url, writer
from hub.migrate import check_current
from hub.schema import (FUNNEL_STAGES, KIND_TOTAL_SHARDS, event_counts, events,
                        funnel_daily, funnel_totals, incidents, kind_totals, nodes,
                        quarantine, streams)

log = logging.getLogger(__name__)

__all__ = ["HubDB", "open_db", "BatchResult", "Quarantined", "QueryError", "StorageError",
           "MAX_EVENTS_LIMIT", "encode_cursor", "decode_cursor"]

MAX_EVENTS_LIMIT = 500
MAX_NODES_LIMIT = 500
NODE_STATUSES = ("online", "offline")

_encode = msgspec.json.Encoder().encode


class QueryError(ValueError):
    """A query parameter is wrong; the message says what to fix."""


class Quarantined(NamedTuple):
    """An authentic batch (its tag verified) whose events did not decode: kept verbatim.
    With its header (epoch and seq range) the hub acks past it; without, it cannot."""

    node_id: str
    payload: bytes
    reason: str
    header: BatchHeader | None


@dataclass(frozen=True)
class BatchResult:
    stored: int  # rows actually inserted
    duplicates: int  # events already stored with the same id (re-sent by a node)
    acked: dict[str, int]  # node_id -> acked_seq after the write, for every node touched
    acks: list[tuple[str, str, int]] = field(default_factory=list)  # (node, epoch, seq)
    conflicts: int = 0  # same (node, epoch, seq) as a stored event, another id: refused
    lost: int = 0  # seqs found lost for good (below a batch's low, never stored)
    quarantined: int = 0  # batches newly put in quarantine
    incidents: int = 0  # incident rows written


def open_db(setting: str | Path) -> HubDB:
    """Open the hub database named by ``HubConfig.hub.database`` (a SQLite path or a
    PostgreSQL URL). Raises StorageError, whose one line names the setting, the
    database and the reason (unreachable, not migrated, not a database...)."""
    return HubDB(setting)


class HubDB:
    """The hub store over one SQLAlchemy engine (a pool: safe from several threads)."""

    def __init__(self, setting: str | Path) -> None:
        self.engine: Engine = make_engine(str(setting))
        self.where = shown_url(self.engine.url)
        self.dialect = self.engine.dialect.name
        self._writer = writer(self.engine)
        self._sql = _Statements(self.dialect)
        try:
            with self.engine.connect() as conn:
                check_current(conn, self.where)
        except StorageError:
            self.engine.dispose()
            raise
        except SQLAlchemyError as exc:
            self.engine.dispose()
            raise StorageError(f"hub database {self.where}: cannot open it: "
                               f"{reason(exc)}") from exc

    @property
    def path(self) -> Path | None:
        """The SQLite file (None on PostgreSQL)."""
        return Path(self.engine.url.database or "") if self.dialect == "sqlite" else None

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> HubDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Rows of a read-only SQL statement as dicts (tools and tests; the app uses the
        methods below)."""
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(text(sql), params or {})]

    # ----------------------------------------------------------------- writes

    def write_batch(self, events_: Sequence[tuple[str, Event]], *, epoch: str = "e0",
                    low: int = 1, **kwargs: Any) -> BatchResult:
        """``write`` for ``(node_id, Event)`` pairs (tests, tools): one EventBatch per
        node, in the given ``epoch``, saying the node still holds everything from
        ``low`` on."""
        by_node: dict[str, list[Event]] = {}
        for node_id, event in events_:
            by_node.setdefault(node_id, []).append(event)
        batches = [EventBatch(node_id=node_id, epoch=epoch, low=min(low, evs[0].seq),
                              first=evs[0].seq, last=max(e.seq for e in evs), events=evs)
                   for node_id, evs in by_node.items()]
        return self.write(batches, **kwargs)

    def write(self, batches: Sequence[EventBatch] = (), *,
              quarantined: Sequence[Quarantined] = (),
              states: Iterable[tuple[str, NodeState, float | None]] = (),
              statuses: Iterable[tuple[str, str, float | None]] = (),
              seen: dict[str, float] | None = None,
              received: float | None = None) -> BatchResult:
        """Store event batches (already decoded and validated by ``decode_batch``),
        quarantined batches, node states and statuses in ONE transaction, then advance
        ``acked_seq`` for every stream touched.

        ``states``/``statuses`` carry the time they were heard live (None for a retained
        message replayed by the broker, which says nothing about the node being alive
        now); ``seen`` is the latest live time per node for the whole batch."""
        received = time.time() if received is None else received
        grouped: dict[tuple[str, str], list[EventBatch]] = {}
        for batch in batches:
            grouped.setdefault((batch.node_id, batch.epoch), []).append(batch)
        keys = set(grouped)
        keys.update((q.node_id, q.header.epoch) for q in quarantined if q.header is not None)
        with self._writer.begin() as conn:
            w = _Writer(conn, received, self._sql)
            w.lock_streams(sorted(keys))
            for q in quarantined:
                w.quarantine(q)
            w.stream_batches(grouped)
            w.flush_events()
            acks = [(node_id, epoch, w.advance(node_id, epoch)) for node_id, epoch in w.order]
            w.flush_streams()
            w.update_nodes(acks, statuses=statuses, states=states, seen=seen or {})
        total = sum(len(b.events) for b in batches)
        return BatchResult(stored=len(w.rows), duplicates=total - len(w.rows) - w.conflicts,
                           acked={node_id: seq for node_id, _, seq in acks}, acks=acks,
                           conflicts=w.conflicts, lost=w.lost, quarantined=w.quarantined,
                           incidents=w.incidents)

    # ------------------------------------------------------------------ reads

    def list_incidents(self, *, node_id: str | None = None, limit: int = 50,
                       before: int | None = None) -> list[dict[str, Any]]:
        """Incidents newest first (lost events, conflicts, quarantined batches, new
        epochs): what an operator must look at, with counts. ``before``: only incidents
        with a smaller ``id`` (the next, older page). Up to one more than a page: the
        API asks for that to know whether there is a next page."""
        if not 1 <= limit <= MAX_EVENTS_LIMIT + 1:
            raise QueryError(f"limit must be between 1 and {MAX_EVENTS_LIMIT}, got {limit}")
        q = select(incidents.c.id, incidents.c.node_id, incidents.c.epoch, incidents.c.kind,
                   incidents.c.count, incidents.c.detail, incidents.c.at)
        if node_id is not None:
            q = q.where(incidents.c.node_id == node_id)
        if before is not None:
            q = q.where(incidents.c.id < before)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(
                q.order_by(incidents.c.id.desc()).limit(limit))]

    def incident_totals(self) -> dict[str, int]:
        """Incidents per kind, and how many batches sit in quarantine."""
        with self.engine.connect() as conn:
            out = {kind: int(n) for kind, n in conn.execute(
                select(incidents.c.kind, func.count()).group_by(incidents.c.kind)
                .order_by(incidents.c.kind))}
            out["quarantined_batches"] = int(conn.execute(
                select(func.count()).select_from(quarantine)).scalar_one())
        return out

    def acked_seq(self, node_id: str) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(select(nodes.c.acked_seq)
                                 .where(nodes.c.node_id == node_id)).scalar()
        return int(value or 0)

    def count_events(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.coalesce(func.sum(event_counts.c.n), 0)))
                       .scalar_one())

    def list_nodes(self, *, stale_after: float, now: float | None = None,
                   zone: str | None = None, version: str | None = None,
                   status: str | None = None, cursor: str | None = None,
                   limit: int = 50) -> tuple[list[dict[str, Any]], str | None]:
        """One page of nodes sorted by id, with a computed online/offline status, and the
        cursor of the next page (None on the last). Filters: ``zone``, ``version``
        (each on an index with node_id, so a page costs an index range), ``status``
        (online: reported online and heard within ``stale_after``). Work per call is
        one page, never the fleet (a ``status`` filter that matches few nodes is the
        exception: it walks node ids until the page is full)."""
        if not 1 <= limit <= MAX_NODES_LIMIT:
            raise QueryError(f"limit must be between 1 and {MAX_NODES_LIMIT}, got {limit}")
        if status is not None and status not in NODE_STATUSES:
            raise QueryError(f"status must be one of {', '.join(NODE_STATUSES)}")
        now = time.time() if now is None else now
        q = select(nodes).order_by(nodes.c.node_id).limit(limit + 1)
        if cursor is not None:
            q = q.where(nodes.c.node_id > decode_key_cursor(cursor, "nodes"))
        if zone is not None:
            q = q.where(nodes.c.zone == zone)
        if version is not None:
            q = q.where(nodes.c.version == version)
        if status is not None:
            online = _online(now - stale_after)
            q = q.where(online if status == "online" else ~online)
        rows = self._nodes(q, stale_after, now)
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, encode_key_cursor("nodes", rows[-1]["node_id"]) if more else None

    def get_node(self, node_id: str, *, stale_after: float,
                 now: float | None = None) -> dict[str, Any] | None:
        found = self._nodes(select(nodes).where(nodes.c.node_id == node_id), stale_after,
                            time.time() if now is None else now)
        return found[0] if found else None

    def node_totals(self, *, stale_after: float, now: float | None = None) -> dict[str, int]:
        """Nodes in all, online and offline. Two counts on indexes (the primary key, and
        last_seen for the online ones): no rows are read, but the online count does
        walk one index entry per online node (about 2 ms per 10,000 here)."""
        now = time.time() if now is None else now
        with self.engine.connect() as conn:
            total = int(conn.execute(select(func.count()).select_from(nodes)).scalar_one())
            online = int(conn.execute(select(func.count()).select_from(nodes)
                                      .where(_online(now - stale_after))).scalar_one())
        return {"total": total, "online": online, "offline": total - online}

    def _nodes(self, query: Any, stale_after: float, now: float) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = [r._mapping for r in conn.execute(query)]
            counts: dict[str, dict[str, Any]] = {}
            if rows:
                for nid, kind, n, ok in conn.execute(select(event_counts).where(
                        event_counts.c.node_id.in_([r["node_id"] for r in rows]))):
                    c = counts.setdefault(nid, _no_counts())
                    c["total"] += n
                    c["by_kind"][kind] = n
                    if kind == "auth":
                        c["auth_ok"], c["auth_rejected"] = ok, n - ok
        out = []
        for row in rows:
            state = msgspec.json.decode(row["state"]) if row["state"] else None
            last_seen = row["last_seen"]
            fresh = last_seen is not None and now - last_seen <= stale_after
            out.append({
                "node_id": row["node_id"],
                "status": "online" if row["status"] != "offline" and fresh else "offline",
                "reported_status": row["status"],
                "last_seen": last_seen,
                "zone": row["zone"],
                "version": row["version"],
                "outbox_depth": state["outbox_depth"] if state else None,
                "acked_seq": row["acked_seq"],
                "events": counts.get(row["node_id"]) or _no_counts(),
                "state": state,
            })
        return out

    def funnel(self, item_keys: str | Sequence[str], first_day: int, last_day: int, *,
               top_nodes: int = 20) -> dict[str, Any]:
        """The funnel of an item (or of several together: a campaign's) over days
        ``first_day``..``last_day`` (days since 1970-01-01, UTC): totals and each day
        from the maintained totals (a row per item, day and stage), the fleet's taps per
        day beside them, and the ``top_nodes`` nodes that delivered them most, with each
        one's taps (this part reads the items' rows per node in the range)."""
        keys = [item_keys] if isinstance(item_keys, str) else sorted(set(item_keys))
        if not 0 <= last_day - first_day < MAX_FUNNEL_DAYS:
            raise QueryError(f"a funnel covers 1 to {MAX_FUNNEL_DAYS} days")
        days = range(first_day, last_day + 1)
        by_day = {d: dict.fromkeys(FUNNEL_STAGES, 0) for d in days}
        top: list[str] = []
        by_node: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for key, day, stage, n in conn.execute(
                    select(funnel_totals.c.item_key, funnel_totals.c.day,
                           funnel_totals.c.stage, funnel_totals.c.n)
                    .where(funnel_totals.c.item_key.in_([*keys, "*"]),
                           funnel_totals.c.day.between(first_day, last_day))):
                if stage in by_day[day] and (key != "*") == (stage != "tap"):
                    by_day[day][stage] += int(n)
            if keys:
                per_node = func.sum(funnel_daily.c.n)
                ranked = conn.execute(
                    select(funnel_daily.c.node_id, per_node.label("n"))
                    .where(funnel_daily.c.item_key.in_(keys),
                           funnel_daily.c.day.between(first_day, last_day),
                           funnel_daily.c.stage == "delivery")
                    .group_by(funnel_daily.c.node_id)
                    .order_by(per_node.desc(), funnel_daily.c.node_id).limit(top_nodes)
                ).all()
                top = [r.node_id for r in ranked]
                by_node = {n: dict.fromkeys(FUNNEL_STAGES, 0) for n in top}
            if top:
                for node_id, stage, n in conn.execute(
                        select(funnel_daily.c.node_id, funnel_daily.c.stage,
                               func.sum(funnel_daily.c.n))
                        .where(funnel_daily.c.item_key.in_([*keys, "*"]),
                               funnel_daily.c.day.between(first_day, last_day),
                               funnel_daily.c.node_id.in_(top))
                        .group_by(funnel_daily.c.node_id, funnel_daily.c.stage)):
                    if stage in by_node[node_id]:  # "*" holds the node's taps only
                        by_node[node_id][stage] = int(n)
        totals = dict.fromkeys(FUNNEL_STAGES, 0)
        for counts in by_day.values():
            for stage, n in counts.items():
                totals[stage] += n
        return {"items": keys, "stages": list(FUNNEL_STAGES), "totals": totals,
                "by_day": [{"day": _day_text(d), **by_day[d]} for d in days],
                "by_node": [{"node_id": n, **by_node[n]} for n in top]}

    def event_totals(self) -> dict[str, Any]:
        """Counts over all nodes: total, per kind, auth verdicts ok/rejected (from the
        maintained totals: a few rows per kind, whatever the fleet's size)."""
        by_kind: dict[str, int] = {}
        auth_ok = 0
        with self.engine.connect() as conn:
            for kind, n, ok in conn.execute(
                    select(kind_totals.c.kind, func.sum(kind_totals.c.n),
                           func.sum(kind_totals.c.ok))
                    .group_by(kind_totals.c.kind).order_by(kind_totals.c.kind)):
                by_kind[kind] = int(n)
                if kind == "auth":
                    auth_ok = int(ok)
        return {"total": sum(by_kind.values()), "by_kind": by_kind,
                "auth_ok": auth_ok, "auth_rejected": by_kind.get("auth", 0) - auth_ok}

    def list_events(self, *, node_id: str | None = None, kind: str | None = None,
                    since_seq: int | None = None, since: float | None = None,
                    until: float | None = None, cursor: str | None = None,
                    limit: int = 50) -> tuple[list[dict[str, Any]], str | None]:
        """Events newest first, in storage order (``pos``).
        Returns (events, next_cursor); pass next_cursor back as ``cursor`` for the next
        (older) page; None on the last page. ``since_seq`` needs ``node_id`` (seqs are
        per node, and restart at 1 in a new outbox epoch) and is an exclusive lower
        bound. ``since`` (exclusive) and ``until`` (inclusive) bound the hub time the
        event was stored (``received``: the hub's clock, not the node's).

        Cost: one page on an index whatever the table's size. ``node_id`` and ``kind``
        each have an index ordered by ``pos``; the time bounds are turned into ``pos``
        bounds first by a binary search over ``pos`` (``_pos_bound``: storage order
        follows the hub's clock, to within one write transaction of concurrent ingest
        workers), then checked on each row."""
        if not 1 <= limit <= MAX_EVENTS_LIMIT:
            raise QueryError(f"limit must be between 1 and {MAX_EVENTS_LIMIT}, got {limit}")
        if since_seq is not None and node_id is None:
            raise QueryError("since_seq needs node_id: seqs are numbered per node")
        listing = "node" if node_id is not None else "all"  # a cursor is for one of them
        before = None if cursor is None else decode_cursor(cursor, listing)
        q = select(events.c.pos, events.c.node_id, events.c.epoch, events.c.seq, events.c.id,
                   events.c.kind, events.c.ts, events.c.data, events.c.received)
        for column, op, value in ((events.c.node_id, "eq", node_id), (events.c.kind, "eq", kind),
                                  (events.c.seq, "gt", since_seq), (events.c.pos, "lt", before),
                                  (events.c.received, "gt", since),
                                  (events.c.received, "le", until)):
            if value is not None:
                q = q.where(column == value if op == "eq" else column > value if op == "gt"
                            else column <= value if op == "le" else column < value)
        with self.engine.connect() as conn:
            if since is not None:  # nothing before the first event stored after `since`
                low = _pos_bound(conn, since, after=True)
                if low is None:
                    return [], None
                q = q.where(events.c.pos >= low)
            if until is not None:  # nothing after the last event stored by `until`
                high = _pos_bound(conn, until, after=False)
                if high is None:
                    return [], None
                q = q.where(events.c.pos <= high)
            rows = [dict(r._mapping) for r in conn.execute(
                q.order_by(events.c.pos.desc()).limit(limit + 1))]
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(listing, rows[-1]["pos"]) if more else None
        for row in rows:
            del row["pos"]
            row["data"] = msgspec.json.decode(row["data"])
        return rows, next_cursor


class _Statements:
    """The writer's statements, built once per dialect: building a SQLAlchemy statement
    costs far more than running it, and a transaction runs the same dozen each time,
    each over every row it concerns (executemany, expanding IN), never once per stream."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        #: whether a funnel item key is one (a regex per event cost the writer 2%);
        #: bounded, since item keys come from nodes
        self.item_key_ok = functools.lru_cache(maxsize=10_000)(_item_key_ok)
        self.insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        self.create_streams_pg = text(
            "INSERT INTO streams (node_id, epoch, first_seen) "
            "SELECT k.node_id, k.epoch, :at FROM unnest(CAST(:nodes AS varchar[]), "
            "CAST(:epochs AS varchar[])) WITH ORDINALITY AS k(node_id, epoch, i) ORDER BY k.i "
            "ON CONFLICT (node_id, epoch) DO NOTHING RETURNING node_id, epoch")
        # FOR UPDATE locks rows as the sort emits them: in key order, in every writer.
        self.lock_streams_pg = text(
            "SELECT s.node_id, s.epoch, s.acked_seq, s.high FROM streams AS s JOIN unnest("
            "CAST(:nodes AS varchar[]), CAST(:epochs AS varchar[])) AS k(node_id, epoch) "
            "ON s.node_id = k.node_id AND s.epoch = k.epoch "
            "ORDER BY s.node_id, s.epoch FOR UPDATE OF s")
        self.previous_epochs = select(nodes.c.node_id, nodes.c.epoch).where(
            nodes.c.node_id.in_(bindparam("ids", expanding=True)))
        # PostgreSQL plans a long row-value IN list as a scan of the table; joined to
        # the keys as arrays (unnest) it probes the unique index once per key.
        self.stored_pg = text(
            "SELECT e.node_id, e.epoch, e.seq, e.id FROM events AS e JOIN unnest("
            "CAST(:nodes AS varchar[]), CAST(:epochs AS varchar[]), CAST(:seqs AS bigint[])"
            ") AS k(node_id, epoch, seq) "
            "ON e.node_id = k.node_id AND e.epoch = k.epoch AND e.seq = k.seq")

        self.count_between = select(func.count()).select_from(events).where(
            events.c.node_id == bindparam("node"), events.c.epoch == bindparam("epoch"),
            events.c.seq > bindparam("lo"), events.c.seq < bindparam("hi"))
        # PostgreSQL: psycopg's executemany sends a statement per row (pipelined); the
        # rows as one set of arrays are one statement.
        self.insert_events_pg = text(
            "INSERT INTO events (node_id, epoch, seq, id, kind, ts, data, received) "
            "SELECT * FROM unnest(CAST(:node_id AS varchar[]), CAST(:epoch AS varchar[]), "
            "CAST(:seq AS bigint[]), CAST(:id AS varchar[]), CAST(:kind AS varchar[]), "
            "CAST(:ts AS double precision[]), CAST(:data AS text[]), "
            "CAST(:received AS double precision[]))")
        self.insert_incidents = incidents.insert()
        counts = self.insert(event_counts)
        self.add_counts = counts.on_conflict_do_update(
            index_elements=["node_id", "kind"],
            set_={"n": event_counts.c.n + counts.excluded.n,
                  "ok": event_counts.c.ok + counts.excluded.ok})
        totals = self.insert(kind_totals)
        self.add_totals = totals.on_conflict_do_update(
            index_elements=["shard", "kind"],
            set_={"n": kind_totals.c.n + totals.excluded.n,
                  "ok": kind_totals.c.ok + totals.excluded.ok})
        funnel = self.insert(funnel_daily)
        self.add_funnel = funnel.on_conflict_do_update(
            index_elements=["item_key", "day", "node_id", "stage"],
            set_={"n": funnel_daily.c.n + funnel.excluded.n})
        self.add_funnel_pg = text(
            "INSERT INTO funnel_daily (item_key, day, node_id, stage, n) SELECT * FROM "
            "unnest(CAST(:item_key AS varchar[]), CAST(:day AS integer[]), "
            "CAST(:node_id AS varchar[]), CAST(:stage AS varchar[]), CAST(:n AS bigint[])) "
            "AS v(item_key, day, node_id, stage, n) ORDER BY item_key, day, node_id, stage "
            "ON CONFLICT (item_key, day, node_id, stage) DO UPDATE SET "
            "n = funnel_daily.n + excluded.n")
        funnel_day = self.insert(funnel_totals)
        self.add_funnel_totals = funnel_day.on_conflict_do_update(
            index_elements=["item_key", "day", "stage"],
            set_={"n": funnel_totals.c.n + funnel_day.excluded.n})
        self.add_funnel_totals_pg = text(
            "INSERT INTO funnel_totals (item_key, day, stage, n) SELECT * FROM "
            "unnest(CAST(:item_key AS varchar[]), CAST(:day AS integer[]), "
            "CAST(:stage AS varchar[]), CAST(:n AS bigint[])) AS v(item_key, day, stage, n) "
            "ORDER BY item_key, day, stage ON CONFLICT (item_key, day, stage) DO UPDATE SET "
            "n = funnel_totals.n + excluded.n")
        self.update_streams = update(streams).where(
            streams.c.node_id == bindparam("s_node"), streams.c.epoch == bindparam("s_epoch")
        ).values(acked_seq=bindparam("s_acked"), lost=streams.c.lost + bindparam("s_lost"),
                 high=bindparam("s_high"))
        # PostgreSQL: the same four writes as one statement each over arrays (psycopg's
        # executemany costs a pipelined statement per row). Rows go in key order, so
        # two writers lock the counts, totals and node rows in the same order.
        self.add_counts_pg = text(
            "INSERT INTO event_counts (node_id, kind, n, ok) SELECT * FROM unnest("
            "CAST(:node_id AS varchar[]), CAST(:kind AS varchar[]), CAST(:n AS bigint[]), "
            "CAST(:ok AS bigint[])) AS v(node_id, kind, n, ok) ORDER BY node_id, kind "
            "ON CONFLICT (node_id, kind) DO UPDATE SET n = event_counts.n + excluded.n, "
            "ok = event_counts.ok + excluded.ok")
        self.add_totals_pg = text(
            "INSERT INTO kind_totals (shard, kind, n, ok) SELECT * FROM unnest("
            "CAST(:shard AS integer[]), CAST(:kind AS varchar[]), CAST(:n AS bigint[]), "
            "CAST(:ok AS bigint[])) AS v(shard, kind, n, ok) ORDER BY shard, kind "
            "ON CONFLICT (shard, kind) DO UPDATE SET n = kind_totals.n + excluded.n, "
            "ok = kind_totals.ok + excluded.ok")
        self.update_streams_pg = text(  # rows this transaction locked already
            "UPDATE streams AS s SET acked_seq = v.acked, lost = s.lost + v.lost, "
            "high = v.high FROM unnest(CAST(:s_node AS varchar[]), "
            "CAST(:s_epoch AS varchar[]), CAST(:s_acked AS bigint[]), "
            "CAST(:s_lost AS bigint[]), CAST(:s_high AS bigint[])) "
            "AS v(node_id, epoch, acked, lost, high) "
            "WHERE s.node_id = v.node_id AND s.epoch = v.epoch")
        self.upsert_nodes_pg = text(
            "INSERT INTO nodes (node_id, status, status_at, last_seen, state, zone, version, "
            "epoch, acked_seq) SELECT * FROM unnest(CAST(:n_id AS varchar[]), "
            "CAST(:n_status AS varchar[]), CAST(:n_status_at AS double precision[]), "
            "CAST(:n_last_seen AS double precision[]), CAST(:n_state AS text[]), "
            "CAST(:n_zone AS varchar[]), CAST(:n_version AS varchar[]), "
            "CAST(:n_epoch AS varchar[]), CAST(:n_acked AS bigint[])) AS v(node_id, status, "
            "status_at, last_seen, state, zone, version, epoch, acked_seq) ORDER BY node_id "
            "ON CONFLICT (node_id) DO UPDATE SET "
            "status = coalesce(excluded.status, nodes.status), "
            "status_at = coalesce(excluded.status_at, nodes.status_at), "
            "state = coalesce(excluded.state, nodes.state), "
            "zone = coalesce(excluded.zone, nodes.zone), "
            "version = coalesce(excluded.version, nodes.version), "
            "epoch = coalesce(excluded.epoch, nodes.epoch), "
            # a new epoch starts at what the mirror says for it (0 without one)
            "acked_seq = CASE WHEN excluded.epoch IS NOT NULL THEN excluded.acked_seq "
            "ELSE nodes.acked_seq END, "
            "last_seen = CASE WHEN excluded.last_seen IS NULL THEN nodes.last_seen "
            "WHEN nodes.last_seen IS NULL OR excluded.last_seen > nodes.last_seen "
            "THEN excluded.last_seen ELSE nodes.last_seen END")
        self.mirror_pg = text(  # rows the upsert above locked already
            "UPDATE nodes SET acked_seq = v.seq FROM unnest(CAST(:m_node AS varchar[]), "
            "CAST(:m_epoch_ AS varchar[]), CAST(:m_seq_ AS bigint[])) AS v(node_id, epoch, seq) "
            "WHERE nodes.node_id = v.node_id AND nodes.epoch = v.epoch")
        self.mirror = update(nodes).where(
            nodes.c.node_id == bindparam("m_node"), nodes.c.epoch == bindparam("m_epoch_")
        ).values(acked_seq=bindparam("m_seq_"))
        # One upsert shape for every node row a transaction writes (a new epoch, the
        # acked mirror, status, state, liveness): NULL means "leave it", last_seen only
        # moves forward, and acked_seq follows the mirror when its epoch is current.
        up = self.insert(nodes).values(
            node_id=bindparam("n_id"), status=bindparam("n_status"),
            status_at=bindparam("n_status_at"), last_seen=bindparam("n_last_seen"),
            state=bindparam("n_state"), zone=bindparam("n_zone"),
            version=bindparam("n_version"), epoch=bindparam("n_epoch"),
            acked_seq=bindparam("n_acked"))
        x = up.excluded
        m_epoch = cast(bindparam("m_epoch", type_=String), String)
        m_seq = cast(bindparam("m_seq", type_=BigInteger), BigInteger)
        self.upsert_nodes = up.on_conflict_do_update(index_elements=["node_id"], set_={
            "status": func.coalesce(x.status, nodes.c.status),
            "status_at": func.coalesce(x.status_at, nodes.c.status_at),
            "state": func.coalesce(x.state, nodes.c.state),
            "zone": func.coalesce(x.zone, nodes.c.zone),
            "version": func.coalesce(x.version, nodes.c.version),
            "epoch": func.coalesce(x.epoch, nodes.c.epoch),
            "acked_seq": case(
                (m_epoch.is_not(None) & (func.coalesce(x.epoch, nodes.c.epoch) == m_epoch),
                 m_seq),
                (x.epoch.is_not(None), literal_column("0")),  # not a parameter: _qmark
                else_=nodes.c.acked_seq),
            "last_seen": case(
                (x.last_seen.is_(None), nodes.c.last_seen),
                (nodes.c.last_seen.is_(None) | (x.last_seen > nodes.c.last_seen), x.last_seen),
                else_=nodes.c.last_seen),
        })

    # The hot statements below take the driver's own paths where SQLAlchemy's per-row
    # work would cost more than the database's: on SQLite (in process, statements
    # cached) sqlite3's own executemany and one small indexed query per stream, on the
    # transaction's own connection; on PostgreSQL (a round trip each) one statement
    # over arrays for all streams.

    def create_streams(self, conn: Connection, keys: list[tuple[str, str]],
                       received: float) -> set[tuple[str, str]]:
        """Create the streams that do not exist yet; the ones created now."""
        if self.dialect == "postgresql":
            # ON CONFLICT DO NOTHING RETURNING names exactly the rows this statement
            # inserted, even with another writer inserting the same stream meanwhile.
            return {tuple(r) for r in conn.execute(self.create_streams_pg, {  # type: ignore[misc]
                "nodes": [k[0] for k in keys], "epochs": [k[1] for k in keys],
                "at": received})}
        # SQLite: BEGIN IMMEDIATE holds the file's write lock, so what is missing now
        # is what this transaction creates.
        raw = _sqlite(conn)
        exists = "SELECT 1 FROM streams WHERE node_id = ? AND epoch = ?"
        missing = [k for k in keys if raw.execute(exists, k).fetchone() is None]
        if missing:
            raw.executemany("INSERT INTO streams (node_id, epoch, first_seen) VALUES (?, ?, ?)",
                            [(n, e, received) for n, e in missing])
        return set(missing)

    def lock(self, conn: Connection, keys: list[tuple[str, str]]
             ) -> Iterable[tuple[str, str, int, int]]:
        """(node, epoch, acked_seq, high) of the streams, locked in key order."""
        if self.dialect == "postgresql":
            return conn.execute(self.lock_streams_pg, {"nodes": [k[0] for k in keys],
                                                       "epochs": [k[1] for k in keys]}).all()
        raw = _sqlite(conn)
        sql = "SELECT node_id, epoch, acked_seq, high FROM streams WHERE node_id = ? AND epoch = ?"
        return [raw.execute(sql, k).fetchone() for k in keys]

    def many(self, conn: Connection, name: str, rows: list[dict[str, Any]]) -> None:
        """Run the statement ``name`` over ``rows`` (dicts of its parameters): SQLite
        executemany, or PostgreSQL's one statement over arrays (``name`` + ``_pg``)."""
        if not rows:
            return
        if self.dialect == "postgresql":
            conn.execute(getattr(self, f"{name}_pg"),
                         {key: [r[key] for r in rows] for key in rows[0]})
        else:
            sql, names = self._qmark(name)
            _sqlite(conn).executemany(sql, [tuple(map(r.__getitem__, names)) for r in rows])

    @functools.cache  # noqa: B019 - one per dialect's statements, kept as long as they are
    def _qmark(self, name: str) -> tuple[str, tuple[str, ...]]:
        """SQLite: statement ``name`` compiled once to its SQL with ``?`` and the order
        of its parameters, for sqlite3's own executemany (SQLAlchemy's per-row
        parameter work cost more than SQLite's for these small upserts). Only
        statements whose values need no conversion (text and numbers) go this way."""
        compiled = getattr(self, name).compile(dialect=sqlite.dialect())
        names = tuple(compiled.positiontup or ())
        unnamed = [n for n in names if n.startswith("param_")]
        if unnamed:  # a literal bound as an anonymous parameter: no row names it
            raise TypeError(f"statement {name} has anonymous parameters {unnamed}")
        return str(compiled), names

    def insert_rows(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        """Insert new event rows (all of one transaction), each a tuple in
        ``EVENT_COLUMNS`` order."""
        if self.dialect == "postgresql":
            conn.execute(self.insert_events_pg, dict(zip(EVENT_COLUMNS,
                                                         map(list, zip(*rows)))))
        else:
            _sqlite(conn).executemany(_INSERT_EVENTS_SQLITE, rows)

    def stored_ids(self, conn: Connection, grouped: dict[tuple[str, str], list[EventBatch]]
                   ) -> Iterable[tuple[str, str, int, str]]:
        """(node, epoch, seq, id) of the stored events among the batches' (PostgreSQL)
        or in each stream's seq range (SQLite; the caller matches the seqs it has)."""
        if self.dialect == "postgresql":
            keys = [(n, ep, e.seq) for (n, ep), group in grouped.items()
                    for b in group for e in b.events]
            return conn.execute(self.stored_pg, {"nodes": [k[0] for k in keys],
                                                 "epochs": [k[1] for k in keys],
                                                 "seqs": [k[2] for k in keys]}).all()
        ranges = {key: (min(b.first for b in group), max(b.last for b in group))
                  for key, group in grouped.items()}
        sql = ("SELECT node_id, epoch, seq, id FROM events "
               "WHERE node_id = ? AND epoch = ? AND seq BETWEEN ? AND ?")
        raw = _sqlite(conn)
        found: list[tuple[str, str, int, str]] = []
        for (node_id, epoch), (lo, hi) in ranges.items():
            found += raw.execute(sql, (node_id, epoch, lo, hi)).fetchall()
        return found


class _Writer:
    """The per-transaction work of ``HubDB.write`` on one connection: stream locks and
    bookkeeping, holes, duplicates and conflicts, quarantine, node rows. Statements run
    over all streams at once; only rare paths (a hole, a quarantined batch, a stream
    whose stored seqs run past this batch) cost a statement per stream."""

    MAX_DETAIL_SEQS = 10  # seqs named in one incident's detail

    def __init__(self, conn: Connection, received: float, sql: _Statements) -> None:
        self.conn = conn
        self.received = received
        self.sql = sql
        self.rows: list[tuple[Any, ...]] = []  # new events, in EVENT_COLUMNS order
        self.counts: dict[tuple[str, str], tuple[int, int]] = {}
        self.funnel: dict[tuple[str, int, str, str], int] = {}  # (item, day, node, stage)
        self.acked: dict[tuple[str, str], int] = {}  # locked streams -> acked_seq
        self.high: dict[tuple[str, str], int] = {}  # locked streams -> highest stored seq
        self.lost_in: dict[tuple[str, str], int] = {}  # seqs found lost now, per stream
        self.fresh: dict[tuple[str, str], set[int]] = {}  # seqs stored, or inserted now
        self.new_epochs: dict[str, str] = {}  # node -> epoch of a stream created now
        self.order: list[tuple[str, str]] = []  # streams written, in order
        self.pending_incidents: list[dict[str, Any]] = []
        self.conflicts = self.lost = self.quarantined = self.incidents = 0

    def incident(self, node_id: str, epoch: str | None, kind: str, count: int,
                 detail: str) -> None:
        self.pending_incidents.append({"node_id": node_id, "epoch": epoch, "kind": kind,
                                       "count": count, "detail": detail, "at": self.received})
        self.incidents += 1
        log.warning("incident on node %s: %s (%d): %s", node_id, kind, count, detail)

    def lock_streams(self, keys: list[tuple[str, str]]) -> None:
        """Create missing streams and lock every one this transaction touches, in sorted
        order (PostgreSQL: row locks held to commit; SQLite: the file lock already is).
        A multi-row INSERT ... ON CONFLICT DO NOTHING RETURNING names the streams
        created now (a new outbox epoch); RETURNING, because what drivers report as
        rowcount for skipped rows differs."""
        if not keys:
            return
        created = self.sql.create_streams(self.conn, keys, self.received)
        for node_id, epoch, acked, high in self.sql.lock(self.conn, keys):
            self.acked[(node_id, epoch)] = int(acked)
            self.high[(node_id, epoch)] = int(high)
        if created:
            previous = dict(self.conn.execute(self.sql.previous_epochs,
                                              {"ids": sorted({n for n, _ in created})}).all())
            for node_id, epoch in sorted(created):
                before = previous.get(node_id)
                if before is not None and before != epoch:
                    self.incident(node_id, epoch, "new_epoch", 0,
                                  f"outbox epoch {epoch} follows {before} (a new data dir: "
                                  f"what the old one had not sent is gone)")
                self.new_epochs[node_id] = epoch

    def touch(self, node_id: str, epoch: str) -> int:
        key = (node_id, epoch)
        if key not in self.order:
            self.order.append(key)
        return self.acked[key]

    def skip_to(self, node_id: str, epoch: str, acked: int, low: int, why: str) -> int:
        """The node holds nothing below ``low`` any more: seqs acked+1..low-1 that are
        not stored will never come. Record them as lost and move the ack past them."""
        if low <= acked + 1:
            return acked
        have = self.conn.execute(self.sql.count_between, {
            "node": node_id, "epoch": epoch, "lo": acked, "hi": low}).scalar_one()
        missing = (low - 1 - acked) - int(have)
        if missing > 0:
            self.lost += missing
            key = (node_id, epoch)
            self.lost_in[key] = self.lost_in.get(key, 0) + missing
            self.incident(node_id, epoch, "lost", missing,
                          f"seqs {acked + 1}..{low - 1}: {missing} never reached the hub and "
                          f"the node no longer holds them ({why})")
        self.acked[(node_id, epoch)] = low - 1
        return low - 1

    def stream_batches(self, grouped: dict[tuple[str, str], list[EventBatch]]) -> None:
        """Every stream's batches: holes below ``low``, then one query for the ids
        already stored under all incoming (node, epoch, seq), then the new rows."""
        keys = sorted(grouped)
        for node_id, epoch in keys:
            group = grouped[(node_id, epoch)]
            acked = self.touch(node_id, epoch)
            # Below the lowest seq the node still holds, and below everything it sent
            # in this transaction (a node's batches of one write may say different lows).
            low = min(max(b.low for b in group), min(b.first for b in group))
            self.skip_to(node_id, epoch, acked, low,
                         "below the lowest seq the node still holds")
        by_stream: dict[tuple[str, str], dict[int, str]] = {key: {} for key in keys}
        for n, ep, seq, i in self.sql.stored_ids(self.conn, grouped):
            by_stream[(n, ep)][seq] = i
        received = self.received
        rows, counts, funnel = self.rows, self.counts, self.funnel
        append = rows.append
        item_ok = self.sql.item_key_ok
        opens: list[tuple[str, Any]] = []
        # The loop below runs once per event and was the writer's largest share of
        # Python time: per event only what must be per event; sets and counts per stream.
        for node_id, epoch in keys:
            stored = by_stream[(node_id, epoch)]  # stored already or now: seq -> id
            clashes: list[int] = []
            kinds: dict[str, int] = {}
            auth_ok = 0
            for batch in grouped[(node_id, epoch)]:
                for e in batch.events:
                    seq = e.seq
                    if seq in stored:
                        if stored[seq] != e.id:
                            clashes.append(seq)
                        continue
                    try:
                        data = _encode(e.data)
                    except (RecursionError, OverflowError):  # absurdly deep: keep the event
                        data = _encode({"_dropped": "data nested too deeply to store"})
                    if len(data) > MAX_EVENT_DATA:  # bounded like the rest; keep the event
                        data = _encode({"_truncated": len(data)})
                    stored[seq] = e.id
                    kind = e.kind
                    append((node_id, epoch, seq, e.id, kind, e.ts, data.decode(), received))
                    kinds[kind] = kinds.get(kind, 0) + 1
                    if kind == "auth":
                        if e.data.get("ok") is True:
                            auth_ok += 1
                    elif kind == "open":  # counted below, once per (handset, counter)
                        opens.append((node_id, e))
                    elif kind in _FUNNEL:
                        if kind == "tap":
                            item = "*"
                        else:
                            item = e.data.get("item_id")
                            if type(item) is not str:
                                continue
                            if not item_ok(item):
                                continue
                        at = (item, int(e.ts // 86400), node_id, kind)
                        funnel[at] = funnel.get(at, 0) + 1
            # the contiguous walk (advance) goes through everything stored
            self.fresh.setdefault((node_id, epoch), set()).update(stored)
            for kind, n in kinds.items():
                before, ok = counts.get((node_id, kind), (0, 0))
                counts[(node_id, kind)] = (before + n, ok + (auth_ok if kind == "auth" else 0))
            if clashes:
                self.conflicts += len(clashes)
                shown = ", ".join(map(str, clashes[:self.MAX_DETAIL_SEQS]))
                more = " ..." if len(clashes) > self.MAX_DETAIL_SEQS else ""
                self.incident(node_id, epoch, "conflict", len(clashes),
                              f"seqs {shown}{more} arrived with other ids than the events "
                              "stored under them; the first ones stored were kept")
        if opens:  # a handset's open record may come twice (a lost ack, two nodes)
            from hub.schema import handset_opens

            first: dict[tuple[str, int], tuple[str, int, str]] = {}
            for node_id, e in opens:
                h, c, item = (e.data.get(k) for k in ("handset_id", "counter", "item_id"))
                if (type(h) is str and type(c) is int and type(item) is str
                        and 0 < c < 2**53 and _ITEM_KEY.fullmatch(h) and _ITEM_KEY.fullmatch(item)):
                    first.setdefault((h, c), (item, int(e.ts // 86400), node_id))
            # sorted: lock order between workers; a statement per 1,000 rows: a multi-row
            # VALUES binds 5 parameters a row, and a database takes at most 32766
            # (SQLite) or 65535 (PostgreSQL) in one statement
            keys_ = sorted(first)
            new = [row for at in range(0, len(keys_), 1000)
                   for row in self.conn.execute(self.sql.insert(handset_opens).values([
                       {"handset_id": h, "counter": c, "item_key": first[(h, c)][0],
                        "node_id": first[(h, c)][2], "received": received}
                       for h, c in keys_[at:at + 1000]
                   ]).on_conflict_do_nothing().returning(
                       handset_opens.c.handset_id, handset_opens.c.counter))]
            for h, c in new:
                item, day, node_id = first[(h, c)]
                funnel[(item, day, node_id, "open")] = funnel.get((item, day, node_id, "open"), 0) + 1

    def flush_events(self) -> None:
        """Insert the new rows and add them to the counts and the fleet's totals
        (sorted: lock order)."""
        if not self.rows:
            return
        self.sql.insert_rows(self.conn, self.rows)
        self.sql.many(self.conn, "add_counts", [
            {"node_id": n, "kind": k, "n": c, "ok": ok}
            for (n, k), (c, ok) in sorted(self.counts.items())])
        totals: dict[tuple[int, str], list[int]] = {}
        for (node_id, kind), (c, ok) in self.counts.items():
            shard = zlib.crc32(node_id.encode()) % KIND_TOTAL_SHARDS
            total = totals.setdefault((shard, kind), [0, 0])
            total[0] += c
            total[1] += ok
        self.sql.many(self.conn, "add_totals", [
            {"shard": shard, "kind": kind, "n": c, "ok": ok}
            for (shard, kind), (c, ok) in sorted(totals.items())])
        if self.funnel:
            self.sql.many(self.conn, "add_funnel", [
                {"item_key": i, "day": d, "node_id": n, "stage": st, "n": c}
                for (i, d, n, st), c in sorted(self.funnel.items())])
            day_totals: dict[tuple[str, int, str], int] = {}
            for (i, d, _, st), c in self.funnel.items():
                day_totals[(i, d, st)] = day_totals.get((i, d, st), 0) + c
            self.sql.many(self.conn, "add_funnel_totals", [
                {"item_key": i, "day": d, "stage": st, "n": c}
                for (i, d, st), c in sorted(day_totals.items())])

    def quarantine(self, q: Quarantined) -> None:
        header = q.header
        epoch = header.epoch if header is not None else None
        added = self.conn.execute(
            self.sql.insert(quarantine).values(
                node_id=q.node_id, epoch=epoch, first=header.first if header else None,
                last=header.last if header else None, reason=q.reason[:500],
                digest=hashlib.sha256(q.payload).hexdigest(), payload=q.payload,
                received=self.received)
            .on_conflict_do_nothing(index_elements=["digest"])
            .returning(quarantine.c.id)).first() is not None
        if added:
            self.quarantined += 1
            count = header.last - header.first + 1 if header else 0
            where = f"seqs {header.first}..{header.last}" if header else "no readable header"
            self.incident(q.node_id, epoch, "quarantined", count,
                          f"a batch the hub cannot decode, kept verbatim ({where}): {q.reason[:300]}")
        if header is None:
            return
        acked = self.touch(q.node_id, header.epoch)
        acked = self.skip_to(q.node_id, header.epoch, acked, header.low,
                             "below the lowest seq the node still holds")
        if header.first <= acked + 1 <= header.last:  # ack past it once it is next in line
            self.acked[(q.node_id, header.epoch)] = header.last

    def advance(self, node_id: str, epoch: str) -> int:
        """Move the stream's acked_seq up through the contiguous run of stored seqs
        above it: first through the seqs this transaction knows are stored; past them
        (seqs stored earlier, out of order, up to ``high``) with the index walk."""
        key = (node_id, epoch)
        acked = self.acked[key]
        fresh = self.fresh.get(key, ())
        while acked + 1 in fresh:
            acked += 1
        if self.high[key] > acked:  # stored earlier beyond this run: walk the index
            found = self.conn.execute(_ADVANCE, {"node": node_id, "epoch": epoch,
                                                 "acked": acked}).scalar()
            if found is not None:
                acked = int(found)
        self.acked[key] = acked
        return acked

    def flush_streams(self) -> None:
        rows = []
        for key in sorted(self.order):
            high = max([self.high[key], *self.fresh.get(key, ())])
            rows.append({"s_node": key[0], "s_epoch": key[1], "s_acked": self.acked[key],
                         "s_lost": self.lost_in.get(key, 0), "s_high": high})
        self.sql.many(self.conn, "update_streams", rows)
        if self.pending_incidents:
            self.conn.execute(self.sql.insert_incidents, self.pending_incidents)

    def update_nodes(self, acks: list[tuple[str, str, int]], *,
                     statuses: Iterable[tuple[str, str, float | None]],
                     states: Iterable[tuple[str, NodeState, float | None]],
                     seen: dict[str, float]) -> None:
        """The node rows, last, in one upsert in node-id order (lock order): a new
        epoch, the acked mirror, status, state, liveness."""
        received = self.received
        per_node: dict[str, dict[str, Any]] = {}

        def row(node_id: str) -> dict[str, Any]:
            found = per_node.get(node_id)
            if found is None:
                found = per_node[node_id] = dict.fromkeys(_NODE_PARAMS)
                found["n_id"] = node_id
            return found

        for node_id, epoch in self.new_epochs.items():
            row(node_id)["n_epoch"] = epoch
        for node_id, status, heard in statuses:
            r = row(node_id)
            r["n_status"] = status
            r["n_status_at"] = heard if heard is not None else received
        for node_id, state, heard in states:
            r = row(node_id)
            # A retained state is as fresh as its own timestamp, no fresher.
            at = heard if heard is not None else min(state.ts, received)
            r.update(n_state=_encode(state).decode(), n_zone=state.zone,
                     n_version=state.version, n_last_seen=max(at, r["n_last_seen"] or 0.0))
        for node_id, heard in seen.items():
            r = row(node_id)
            r["n_last_seen"] = max(heard, r["n_last_seen"] or 0.0)
        extra: list[dict[str, Any]] = []
        for node_id, epoch, seq in acks:
            r = row(node_id)
            if r["m_epoch"] is None:
                r["m_epoch"], r["m_seq"] = epoch, seq
            else:  # two epochs of one node in one transaction: rare, own statement
                extra.append({"m_node": node_id, "m_epoch_": epoch, "m_seq_": seq})
        for r in per_node.values():  # the values a brand-new node row starts with
            r["n_acked"] = r["m_seq"] if r["m_epoch"] is not None \
                and r["m_epoch"] == r["n_epoch"] else 0
        rows = [per_node[n] for n in sorted(per_node)]
        if self.sql.dialect == "postgresql":
            self.sql.many(self.conn, "upsert_nodes", [
                {k: v for k, v in r.items() if k.startswith("n_")} for r in rows])
            # then every ack's mirror, on the rows just locked: set where its epoch is
            # the node's (SQLite does this in the upsert's CASE)
            extra += [{"m_node": r["n_id"], "m_epoch_": r["m_epoch"], "m_seq_": r["m_seq"]}
                      for r in rows if r["m_epoch"] is not None]
        else:
            self.sql.many(self.conn, "upsert_nodes", rows)
        self.sql.many(self.conn, "mirror", extra)  # rows this transaction has locked


# _pos_bound's statements, built once: building one costs more than running it.
# (min and max apart: SQLite reads one end of the key for each alone, but scans the
# table for both in one statement)
_POS_MIN = select(func.min(events.c.pos))
_POS_MAX = select(func.max(events.c.pos))
_PROBE_WHERE = (events.c.pos >= bindparam("first"), events.c.pos <= bindparam("last"))
_PROBE_OLDEST = (select(events.c.pos, events.c.received).where(*_PROBE_WHERE)
                 .order_by(events.c.pos).limit(1))
_PROBE_NEWEST = (select(events.c.pos, events.c.received).where(*_PROBE_WHERE)
                 .order_by(events.c.pos.desc()).limit(1))


def _pos_bound(conn: Connection, t: float, *, after: bool) -> int | None:
    """The first ``pos`` stored after hub time ``t`` (``after``), or the last stored by
    it; None when there is none. A binary search over the primary key (about 25
    seeks at 10 million events), not an index on ``received``: that index cost the
    writer about a tenth of its rate (docs/performance.md), and ``received`` grows
    with ``pos`` (one writer stamps a transaction's rows with one time, in storage
    order; concurrent PostgreSQL workers interleave only within their transactions,
    which the caller's per-row check of ``received`` then trims)."""
    lo = conn.execute(_POS_MIN).scalar()
    if lo is None:
        return None
    hi = conn.execute(_POS_MAX).scalar()

    def probe(first: int, last: int, newest: bool) -> tuple[int, float] | None:
        """The stored row nearest ``first`` (``newest``: nearest ``last``) in the range."""
        row = conn.execute(_PROBE_NEWEST if newest else _PROBE_OLDEST,
                           {"first": first, "last": last}).first()
        return None if row is None else (int(row[0]), float(row[1]))

    found: int | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        if after:  # the first row with received > t: search left of each hit
            row = probe(mid, hi, newest=False)
            if row is None:
                hi = mid - 1
            elif row[1] > t:
                found, hi = row[0], mid - 1
            else:
                lo = row[0] + 1
        else:  # the last row with received <= t: search right of each hit
            row = probe(lo, mid, newest=True)
            if row is None:
                lo = mid + 1
            elif row[1] <= t:
                found, lo = row[0], mid + 1
            else:
                hi = row[0] - 1
    return found


def _sqlite(conn: Connection) -> Any:
    """The sqlite3 connection under a SQLAlchemy connection, inside its transaction."""
    return conn.connection.driver_connection


EVENT_COLUMNS = ("node_id", "epoch", "seq", "id", "kind", "ts", "data", "received")
#: Longest funnel report, in days.
MAX_FUNNEL_DAYS = 366


def _day_text(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86400))


#: Event kinds that are funnel stages (their data.item_id names the item; taps: "*").
_FUNNEL = frozenset(FUNNEL_STAGES)
_ITEM_KEY = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def _item_key_ok(item: str) -> bool:
    return _ITEM_KEY.fullmatch(item) is not None

_INSERT_EVENTS_SQLITE = (f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) "
                         f"VALUES ({', '.join('?' * len(EVENT_COLUMNS))})")

_NODE_PARAMS = ("n_id", "n_status", "n_status_at", "n_last_seen", "n_state", "n_zone",
                "n_version", "n_epoch", "n_acked", "m_epoch", "m_seq")

# The first stored seq above acked whose successor is missing, provided acked + 1 is
# stored: the end of the contiguous run (walks the unique index in seq order).
_ADVANCE = text(
    "SELECT e.seq FROM events AS e WHERE e.node_id = :node AND e.epoch = :epoch "
    "AND e.seq > :acked "
    "AND NOT EXISTS (SELECT 1 FROM events AS f WHERE f.node_id = :node "
    "                AND f.epoch = :epoch AND f.seq = e.seq + 1) "
    "AND EXISTS (SELECT 1 FROM events AS g WHERE g.node_id = :node AND g.epoch = :epoch "
    "            AND g.seq = :acked + 1) "
    "ORDER BY e.seq LIMIT 1")


def _no_counts() -> dict[str, Any]:
    return {"total": 0, "by_kind": {}, "auth_ok": 0, "auth_rejected": 0}


def _online(cutoff: float) -> Any:
    """A node is online when it last reported online and was heard since ``cutoff``."""
    return (nodes.c.last_seen >= cutoff) & (func.coalesce(nodes.c.status, "") != "offline")


def encode_key_cursor(listing: str, key: str) -> str:
    """Opaque page cursor of a listing ordered by a text key (node ids)."""
    return base64.urlsafe_b64encode(f"{listing}:{key}".encode()).decode().rstrip("=")


def decode_key_cursor(cursor: str, listing: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raw = ""
    kind, sep, key = raw.partition(":")
    if not sep or kind != listing or not _ITEM_KEY.fullmatch(key):
        raise QueryError(f"cursor {cursor[:40]!r} is not one this API returned for this "
                         "listing; pass next_cursor from a previous page unchanged")
    return key


def encode_cursor(order: str, position: int) -> str:
    """Opaque page cursor: the ordering and the position of the last event on the page."""
    return base64.urlsafe_b64encode(f"{order}:{position}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, order: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        kind, _, position = raw.partition(":")
        if not position.isascii() or not position.isdigit() or len(position) > 19 \
                or int(position) >= 2**63:
            raise ValueError(position)  # both databases' integers are signed 64-bit
        value = int(position)
    except (ValueError, UnicodeDecodeError):
        raise QueryError(f"cursor {cursor[:40]!r} is not one this API returned; "
                         "pass next_cursor from a previous page unchanged") from None
    if kind != order:
        raise QueryError("cursor belongs to a listing with different filters: keep node_id "
                         "as it was when the cursor was returned")
    return value
