"""Hub storage: nodes, event streams, events (each (node, epoch, seq) stored once),
incidents and quarantined batches.

SQLite through sqlite-utils by default, in WAL mode so the web pages read while the
ingest writes. Why the shape below:

* ``events`` has UNIQUE (node_id, epoch, seq): a node re-sends everything the hub has
  not acked, so duplicates are normal traffic. The writer reads the ids already stored
  for the seqs a batch covers: the same (node, epoch, seq) with the same id is a
  duplicate and dropped, with a different id a *conflict*, recorded as an incident and
  never stored over the first.
* One parse: the writer stores exactly the values ``decode_batch`` validated (msgspec,
  bounded seqs and times), never re-reading the JSON text with SQLite's own parser
  (the two disagreed on duplicate keys, escapes and integers past 2^63).
* ``streams`` holds, per (node, epoch), ``acked_seq``: the highest seq such that every
  seq up to it is stored or known lost. A batch carries ``low``, the lowest seq the node
  still holds, so a hole below ``low`` will never be filled: the hub records a "lost"
  incident with the count and moves past it (a forged ack, a database restored from an
  older copy). ``nodes.acked_seq`` mirrors the node's current epoch for the API.
* ``event_counts`` (per node and kind, plus how many carried ``data.ok = true``) is
  updated in the same transaction from the rows inserted, so the API never scans
  ``events`` to count.
* Events are listed newest first by ``rowid`` (storage order), per node through an
  index on ``node_id``.
* Batches: one transaction per batch of messages; ``synchronous=FULL`` makes each commit
  durable (fsync of the WAL) before the ingest acks it; a batch amortises the fsync.

Threads: sqlite3 connections must not be shared between threads while in use, so each
thread gets its own connection (the ingest writer thread writes; request threads read
and ``release()`` theirs after each request).

PostgreSQL (issue 7): ``open_db(url)`` chooses the backend from the URL; a PostgreSQL
store offers the same public methods. The SQL is portable where that costs nothing
(``ON CONFLICT``, upserts); ``rowid`` becomes a BIGSERIAL column and ``BEGIN
IMMEDIATE`` a row lock on ``streams`` when several ingest workers share a subscription.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import msgspec
import sqlite_utils

from tapcast.protocol.mqtt import MAX_EVENT_DATA, BatchHeader, Event, EventBatch, NodeState

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
MAX_EVENTS_LIMIT = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node_id    TEXT PRIMARY KEY,
    status     TEXT,              -- last reported 'online' / 'offline' (retained + will)
    status_at  REAL,
    last_seen  REAL,              -- unix time anything live was last heard from the node
    state      TEXT,              -- last NodeState as JSON
    zone       TEXT,
    version    TEXT,
    epoch      TEXT,              -- the node's current outbox epoch (newest stream)
    acked_seq  INTEGER NOT NULL DEFAULT 0   -- of that epoch
);
CREATE TABLE IF NOT EXISTS streams (
    node_id    TEXT NOT NULL,
    epoch      TEXT NOT NULL,
    acked_seq  INTEGER NOT NULL DEFAULT 0,  -- every seq <= it is stored or known lost
    lost       INTEGER NOT NULL DEFAULT 0,  -- seqs the hub will never get
    first_seen REAL NOT NULL,
    PRIMARY KEY (node_id, epoch)
);
CREATE TABLE IF NOT EXISTS events (
    node_id  TEXT NOT NULL,
    epoch    TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    id       TEXT NOT NULL,
    kind     TEXT NOT NULL,
    ts       REAL NOT NULL,
    data     TEXT NOT NULL,       -- JSON object
    received REAL NOT NULL,
    UNIQUE (node_id, epoch, seq)
);
CREATE INDEX IF NOT EXISTS events_by_node ON events (node_id);
CREATE TABLE IF NOT EXISTS event_counts (
    node_id TEXT NOT NULL,
    kind    TEXT NOT NULL,
    n       INTEGER NOT NULL,
    ok      INTEGER NOT NULL,     -- how many had data.ok = true (auth verdicts)
    PRIMARY KEY (node_id, kind)
);
CREATE TABLE IF NOT EXISTS incidents (
    id       INTEGER PRIMARY KEY,
    node_id  TEXT NOT NULL,
    epoch    TEXT,
    kind     TEXT NOT NULL,       -- lost, conflict, quarantined, new_epoch
    count    INTEGER NOT NULL,    -- events concerned
    detail   TEXT NOT NULL,
    at       REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id       INTEGER PRIMARY KEY,
    node_id  TEXT NOT NULL,
    epoch    TEXT,
    first    INTEGER,
    last     INTEGER,
    reason   TEXT NOT NULL,
    digest   TEXT NOT NULL UNIQUE,  -- sha256 of the payload: a re-send is kept once
    payload  BLOB NOT NULL,         -- verbatim, as it came off the broker
    received REAL NOT NULL
);
"""

_INSERT_EVENT = """
INSERT INTO events (node_id, epoch, seq, id, kind, ts, data, received)
VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (node_id, epoch, seq) DO NOTHING
"""

_COUNT = """
INSERT INTO event_counts (node_id, kind, n, ok) VALUES (?, ?, ?, ?)
ON CONFLICT (node_id, kind) DO UPDATE SET n = n + excluded.n, ok = ok + excluded.ok
"""

_encode = msgspec.json.Encoder().encode


class QueryError(ValueError):
    """A query parameter is wrong; the message says what to fix."""


class StorageError(RuntimeError):
    """The hub database cannot be used; the message says which and why, in one line."""


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


def open_db(url: str) -> "HubDB":
    """Open the hub database named by ``HubConfig.hub.database``: a SQLite file path
    (PostgreSQL is the next step, see the module docstring). Raises StorageError, whose
    message names the setting, the path and the OS's reason, so ``tapcast hub`` can
    print it as one line."""
    if "://" in url:
        shown = _without_password(url)
        if url.startswith(("postgresql://", "postgres://", "postgresql+")):
            raise StorageError(
                f"[hub] database {shown!r}: PostgreSQL is not supported yet; set it to a "
                "SQLite file path such as var/hub/hub.db")
        raise StorageError(f"[hub] database {shown!r}: expected a SQLite file path such "
                           "as var/hub/hub.db, not a URL")
    if url in ("", ":memory:"):
        raise StorageError(f"[hub] database {url!r}: give a SQLite file path (the hub's "
                           "processes share the file)")
    path = Path(url)
    _check_writable(path)
    try:
        return HubDB(path)
    except (sqlite3.Error, OSError) as exc:
        raise StorageError(f"hub database {path}: cannot open it: {_reason(exc)}") from exc


def _check_writable(path: Path) -> None:
    """SQLite alone says "unable to open database file" for every cause; find the cause
    first: a folder that cannot be created, a folder or file that is not writable."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"hub database {path}: cannot create its folder {folder}: "
                           f"{_reason(exc)}") from exc
    # SQLite writes the -wal and -shm files next to the database: the folder must take
    # new files even when the database itself exists.
    try:
        fd, probe = tempfile.mkstemp(prefix=".tapcast-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StorageError(f"hub database {path}: its folder {folder} is not writable: "
                           f"{_reason(exc)}") from exc
    if path.exists():
        try:
            with open(path, "r+b"):
                pass
        except OSError as exc:
            raise StorageError(f"hub database {path}: cannot open it for writing: "
                               f"{_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


class HubDB:
    """SQLite hub store; safe to use from several threads (one connection each)."""

    def __init__(self, path: str | Path) -> None:
        if str(path) == ":memory:":
            raise ValueError("hub database must be a file (threads share it): give a path")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._initialise(self.db.conn)

    @staticmethod
    def _initialise(conn: sqlite3.Connection, timeout: float = 30.0) -> None:
        """WAL mode and the schema. Several processes may open a new file at once (`hub
        ingest` and `hub web`'s workers): a statement that reads then writes gets
        "database is locked" at once when another connection writes (SQLite refuses
        the lock upgrade rather than deadlock; no busy timeout applies). So the schema
        goes in one transaction that takes the write lock first (BEGIN IMMEDIATE waits),
        and the switch to WAL, which needs the file to itself, is retried."""
        deadline = time.monotonic() + timeout
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        while mode != "wal":
            try:
                mode = conn.execute("PRAGMA journal_mode = wal").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
                continue
            if mode != "wal":  # the file system cannot do it; readers will wait on writes
                log.warning("hub database stays in %s journal mode (no WAL)", mode)
                break
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version not in (0, SCHEMA_VERSION):
            raise StorageError(
                f"hub database has schema version {version}, this hub writes version "
                f"{SCHEMA_VERSION} (events keyed by outbox epoch) and cannot convert it: "
                "move the old file aside and start with a new one (migrations come with "
                "the storage layer of issue 7)")
        try:
            conn.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA}\n"
                               f"PRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;")
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise

    # ------------------------------------------------------------ connections

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's sqlite-utils Database."""
        db = getattr(self._local, "db", None)
        if db is None:
            conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
            # FULL: a commit is on disk before the hub acks it to the node.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA busy_timeout = 30000")
            db = sqlite_utils.Database(conn, execute_plugins=False)
            self._local.db = db
            with self._lock:
                self._all.append(conn)
        return db

    def release(self) -> None:
        """Close this thread's connection (the web app calls this after each request:
        werkzeug's threaded server runs every request on a new thread)."""
        db = getattr(self._local, "db", None)
        if db is None:
            return
        self._local.db = None
        with self._lock:
            self._all = [c for c in self._all if c is not db.conn]
        db.conn.close()

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.ProgrammingError:  # closed from its own thread already
                pass
        self._local = threading.local()

    def __enter__(self) -> HubDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- writes

    def write_batch(self, events: Sequence[tuple[str, Event]], *, epoch: str = "e0",
                    low: int = 1, **kwargs: Any) -> BatchResult:
        """``write`` for ``(node_id, Event)`` pairs (tests, tools): one EventBatch per
        node, in the given ``epoch``, saying the node still holds everything from
        ``low`` on."""
        by_node: dict[str, list[Event]] = {}
        for node_id, event in events:
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
        db = self.db
        streams: dict[tuple[str, str], list[EventBatch]] = {}
        for batch in batches:
            streams.setdefault((batch.node_id, batch.epoch), []).append(batch)
        w = _Writer(db.conn, received)
        with self._immediate(db):
            conn = db.conn
            for q in quarantined:
                w.quarantine(q)
            for (node_id, epoch), group in streams.items():
                w.stream_batches(node_id, epoch, group)
            if w.rows:
                conn.executemany(_INSERT_EVENT, w.rows)
                conn.executemany(_COUNT, [(n, k, c, ok) for (n, k), (c, ok) in w.counts.items()])
            for node_id, status, heard in statuses:
                conn.execute(
                    "INSERT INTO nodes (node_id, status, status_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (node_id) DO UPDATE SET status = excluded.status, "
                    "status_at = excluded.status_at",
                    (node_id, status, heard if heard is not None else received))
            for node_id, state, heard in states:
                conn.execute(
                    "INSERT INTO nodes (node_id, state, zone, version, last_seen) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET "
                    "state = excluded.state, zone = excluded.zone, "
                    "version = excluded.version, "
                    "last_seen = max(coalesce(last_seen, 0), excluded.last_seen)",
                    # A retained state is as fresh as its own timestamp, no fresher.
                    (node_id, _encode(state).decode(), state.zone, state.version,
                     heard if heard is not None else min(state.ts, received)))
            for node_id, heard in (seen or {}).items():
                conn.execute(
                    "INSERT INTO nodes (node_id, last_seen) VALUES (?, ?) "
                    "ON CONFLICT (node_id) DO UPDATE SET "
                    "last_seen = max(coalesce(last_seen, 0), excluded.last_seen)",
                    (node_id, heard))
            acks = [(node_id, epoch, w.advance(node_id, epoch)) for node_id, epoch in w.touched]
        total = sum(len(b.events) for b in batches)
        return BatchResult(stored=len(w.rows), duplicates=total - len(w.rows) - w.conflicts,
                           acked={node_id: seq for node_id, _, seq in acks}, acks=acks,
                           conflicts=w.conflicts, lost=w.lost, quarantined=w.quarantined,
                           incidents=w.incidents)

    @staticmethod
    @contextlib.contextmanager
    def _immediate(db: sqlite_utils.Database) -> Iterator[None]:
        """A write transaction that takes the write lock at BEGIN."""
        db.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            db.rollback()
            raise
        db.conn.execute("COMMIT")

    def list_incidents(self, *, node_id: str | None = None, limit: int = 50,
                       before: int | None = None) -> list[dict[str, Any]]:
        """Incidents newest first (lost events, conflicts, quarantined batches, new
        epochs): what an operator must look at, with counts. ``before``: only incidents
        with a smaller ``id`` (the next, older page)."""
        if not 1 <= limit <= MAX_EVENTS_LIMIT:
            raise QueryError(f"limit must be between 1 and {MAX_EVENTS_LIMIT}, got {limit}")
        clauses, params = [], []
        for clause, value in (("node_id = ?", node_id), ("id < ?", before)):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return list(self.db.query(
            f"SELECT id, node_id, epoch, kind, count, detail, at FROM incidents {where} "
            "ORDER BY id DESC LIMIT ?", [*params, limit]))

    def incident_totals(self) -> dict[str, int]:
        """Incidents per kind, and how many batches sit in quarantine."""
        out = {kind: n for kind, n in self.db.execute(
            "SELECT kind, count(*) FROM incidents GROUP BY kind ORDER BY kind")}
        (out["quarantined_batches"],) = self.db.execute(
            "SELECT count(*) FROM quarantine").fetchone()
        return out

    # ------------------------------------------------------------------ reads

    def acked_seq(self, node_id: str) -> int:
        row = self.db.execute("SELECT acked_seq FROM nodes WHERE node_id = ?",
                              [node_id]).fetchone()
        return row[0] if row else 0

    def count_events(self) -> int:
        (n,) = self.db.execute("SELECT coalesce(sum(n), 0) FROM event_counts").fetchone()
        return n

    def list_nodes(self, *, stale_after: float, now: float | None = None) -> list[dict[str, Any]]:
        """All nodes, sorted by id, with a computed online/offline status."""
        return self._nodes(None, stale_after, time.time() if now is None else now)

    def get_node(self, node_id: str, *, stale_after: float,
                 now: float | None = None) -> dict[str, Any] | None:
        found = self._nodes(node_id, stale_after, time.time() if now is None else now)
        return found[0] if found else None

    def _nodes(self, node_id: str | None, stale_after: float, now: float) -> list[dict[str, Any]]:
        db = self.db
        where, params = ("WHERE node_id = ?", [node_id]) if node_id is not None else ("", [])
        counts: dict[str, dict[str, Any]] = {}
        for nid, kind, n, ok in db.execute(
                f"SELECT node_id, kind, n, ok FROM event_counts {where}", params):
            c = counts.setdefault(nid, _no_counts())
            c["total"] += n
            c["by_kind"][kind] = n
            if kind == "auth":
                c["auth_ok"], c["auth_rejected"] = ok, n - ok
        out = []
        for row in db.query(f"SELECT * FROM nodes {where} ORDER BY node_id", params):
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

    def event_totals(self) -> dict[str, Any]:
        """Counts over all nodes: total, per kind, auth verdicts ok/rejected."""
        by_kind: dict[str, int] = {}
        auth_ok = 0
        for kind, n, ok in self.db.execute(
                "SELECT kind, sum(n), sum(ok) FROM event_counts GROUP BY kind ORDER BY kind"):
            by_kind[kind] = n
            if kind == "auth":
                auth_ok = ok
        return {"total": sum(by_kind.values()), "by_kind": by_kind,
                "auth_ok": auth_ok, "auth_rejected": by_kind.get("auth", 0) - auth_ok}

    def list_events(self, *, node_id: str | None = None, kind: str | None = None,
                    since_seq: int | None = None, since_ts: float | None = None,
                    cursor: str | None = None,
                    limit: int = 50) -> tuple[list[dict[str, Any]], str | None]:
        """Events newest first, in storage order (rowid; per node through the index on
        node_id).
        Returns (events, next_cursor); pass next_cursor back as ``cursor`` for the next
        (older) page; None on the last page. ``since_seq`` needs ``node_id`` (seqs are
        per node, and restart at 1 in a new outbox epoch); ``since_seq`` and ``since_ts``
        are exclusive lower bounds.

        Known cost: ``kind`` and ``since_ts`` filter while scanning (no index), so a
        rare kind on a big table is a long scan (about 20 ms per 100k events here)."""
        if not 1 <= limit <= MAX_EVENTS_LIMIT:
            raise QueryError(f"limit must be between 1 and {MAX_EVENTS_LIMIT}, got {limit}")
        if since_seq is not None and node_id is None:
            raise QueryError("since_seq needs node_id: seqs are numbered per node")
        order = "rowid"
        listing = "node" if node_id is not None else "all"  # a cursor is for one of them
        before = None if cursor is None else decode_cursor(cursor, listing)
        clauses, params = [], []
        for clause, value in (("node_id = ?", node_id), ("kind = ?", kind),
                              ("seq > ?", since_seq), ("ts > ?", since_ts),
                              (f"{order} < ?", before)):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = list(self.db.query(
            f"SELECT {order} AS _pos, node_id, epoch, seq, id, kind, ts, data, received FROM events "
            f"{where} ORDER BY {order} DESC LIMIT ?", [*params, limit + 1]))
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(listing, rows[-1]["_pos"]) if more else None
        for row in rows:
            del row["_pos"]
            row["data"] = msgspec.json.decode(row["data"])
        return rows, next_cursor


class _Writer:
    """The per-transaction work of ``HubDB.write`` on one connection, inside its
    BEGIN IMMEDIATE: stream bookkeeping, holes, duplicates and conflicts, quarantine."""

    MAX_DETAIL_SEQS = 10  # seqs named in one incident's detail

    def __init__(self, conn: sqlite3.Connection, received: float) -> None:
        self.conn = conn
        self.received = received
        self.rows: list[tuple[Any, ...]] = []
        self.counts: dict[tuple[str, str], tuple[int, int]] = {}
        self.touched: dict[tuple[str, str], None] = {}  # streams written, in order
        self.conflicts = self.lost = self.quarantined = self.incidents = 0

    def incident(self, node_id: str, epoch: str | None, kind: str, count: int,
                 detail: str) -> None:
        self.conn.execute("INSERT INTO incidents (node_id, epoch, kind, count, detail, at) "
                          "VALUES (?, ?, ?, ?, ?, ?)",
                          (node_id, epoch, kind, count, detail, self.received))
        self.incidents += 1
        log.warning("incident on node %s: %s (%d): %s", node_id, kind, count, detail)

    def stream(self, node_id: str, epoch: str) -> int:
        """The stream's acked_seq, creating the stream (and noting a new epoch)."""
        self.touched.setdefault((node_id, epoch))
        row = self.conn.execute("SELECT acked_seq FROM streams WHERE node_id = ? AND epoch = ?",
                                (node_id, epoch)).fetchone()
        if row is not None:
            return int(row[0])
        self.conn.execute("INSERT INTO streams (node_id, epoch, first_seen) VALUES (?, ?, ?)",
                          (node_id, epoch, self.received))
        previous = self.conn.execute("SELECT epoch FROM nodes WHERE node_id = ?",
                                     (node_id,)).fetchone()
        if previous is not None and previous[0] is not None and previous[0] != epoch:
            self.incident(node_id, epoch, "new_epoch", 0,
                          f"outbox epoch {epoch} follows {previous[0]} (a new data dir: "
                          f"what the old one had not sent is gone)")
        self.conn.execute("INSERT INTO nodes (node_id, epoch, acked_seq) VALUES (?, ?, 0) "
                          "ON CONFLICT (node_id) DO UPDATE SET epoch = excluded.epoch, "
                          "acked_seq = 0", (node_id, epoch))
        return 0

    def skip_to(self, node_id: str, epoch: str, acked: int, low: int, why: str) -> int:
        """The node holds nothing below ``low`` any more: seqs acked+1..low-1 that are
        not stored will never come. Record them as lost and move the ack past them."""
        if low <= acked + 1:
            return acked
        (have,) = self.conn.execute(
            "SELECT count(*) FROM events WHERE node_id = ? AND epoch = ? AND seq > ? AND seq < ?",
            (node_id, epoch, acked, low)).fetchone()
        missing = (low - 1 - acked) - int(have)
        if missing > 0:
            self.lost += missing
            self.incident(node_id, epoch, "lost", missing,
                          f"seqs {acked + 1}..{low - 1}: {missing} never reached the hub and "
                          f"the node no longer holds them ({why})")
        self.conn.execute("UPDATE streams SET acked_seq = ?, lost = lost + ? "
                          "WHERE node_id = ? AND epoch = ?",
                          (low - 1, max(missing, 0), node_id, epoch))
        return low - 1

    def stream_batches(self, node_id: str, epoch: str, group: list[EventBatch]) -> None:
        acked = self.stream(node_id, epoch)
        low = max(b.low for b in group)
        self.skip_to(node_id, epoch, acked, low, "below the lowest seq the node still holds")
        lo, hi = min(b.first for b in group), max(b.last for b in group)
        stored = dict(self.conn.execute(
            "SELECT seq, id FROM events WHERE node_id = ? AND epoch = ? AND seq BETWEEN ? AND ?",
            (node_id, epoch, lo, hi)).fetchall())
        clashes: list[int] = []
        for batch in group:
            for e in batch.events:
                known = stored.get(e.seq)
                if known is not None:
                    if known != e.id:
                        clashes.append(e.seq)
                    continue
                try:
                    data = _encode(e.data)
                except (RecursionError, OverflowError):  # absurdly deep: keep the event
                    data = _encode({"_dropped": "data nested too deeply to store"})
                if len(data) > MAX_EVENT_DATA:  # bounded like the rest; keep the event
                    data = _encode({"_truncated": len(data)})
                stored[e.seq] = e.id
                self.rows.append((node_id, epoch, e.seq, e.id, e.kind, e.ts, data.decode(),
                                  self.received))
                ok = 1 if e.kind == "auth" and e.data.get("ok") is True else 0
                n, k = self.counts.get((node_id, e.kind), (0, 0))
                self.counts[(node_id, e.kind)] = (n + 1, k + ok)
        if clashes:
            self.conflicts += len(clashes)
            shown = ", ".join(map(str, clashes[:self.MAX_DETAIL_SEQS]))
            self.incident(node_id, epoch, "conflict", len(clashes),
                          f"seqs {shown}{' ...' if len(clashes) > self.MAX_DETAIL_SEQS else ''} "
                          "arrived with other ids than the events stored under them; the "
                          "first ones stored were kept")

    def quarantine(self, q: Quarantined) -> None:
        header = q.header
        epoch = header.epoch if header is not None else None
        cur = self.conn.execute(
            "INSERT INTO quarantine (node_id, epoch, first, last, reason, digest, payload, "
            "received) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (digest) DO NOTHING",
            (q.node_id, epoch, header.first if header else None, header.last if header else None,
             q.reason[:500], hashlib.sha256(q.payload).hexdigest(), q.payload, self.received))
        if cur.rowcount:
            self.quarantined += 1
            count = header.last - header.first + 1 if header else 0
            where = f"seqs {header.first}..{header.last}" if header else "no readable header"
            self.incident(q.node_id, epoch, "quarantined", count,
                          f"a batch the hub cannot decode, kept verbatim ({where}): {q.reason[:300]}")
        if header is None:
            return
        acked = self.stream(q.node_id, header.epoch)
        acked = self.skip_to(q.node_id, header.epoch, acked, header.low,
                             "below the lowest seq the node still holds")
        if header.first <= acked + 1 <= header.last:  # ack past it once it is next in line
            self.conn.execute("UPDATE streams SET acked_seq = ? WHERE node_id = ? AND epoch = ?",
                              (header.last, q.node_id, header.epoch))

    def advance(self, node_id: str, epoch: str) -> int:
        """Move the stream's acked_seq up through the contiguous run of stored seqs
        above it (walks the unique index in order and stops at the first gap)."""
        (acked,) = self.conn.execute(
            "SELECT acked_seq FROM streams WHERE node_id = ? AND epoch = ?",
            (node_id, epoch)).fetchone()
        row = self.conn.execute(
            "SELECT e.seq FROM events AS e WHERE e.node_id = ?1 AND e.epoch = ?2 AND e.seq > ?3 "
            "AND NOT EXISTS (SELECT 1 FROM events AS f WHERE f.node_id = ?1 AND f.epoch = ?2 "
            "                AND f.seq = e.seq + 1) "
            "AND EXISTS (SELECT 1 FROM events WHERE node_id = ?1 AND epoch = ?2 AND seq = ?3 + 1) "
            "ORDER BY e.seq LIMIT 1", (node_id, epoch, acked)).fetchone()
        if row is not None:
            acked = int(row[0])
            self.conn.execute("UPDATE streams SET acked_seq = ? WHERE node_id = ? AND epoch = ?",
                              (acked, node_id, epoch))
        self.conn.execute("UPDATE nodes SET acked_seq = ? WHERE node_id = ? AND epoch = ?",
                          (acked, node_id, epoch))
        return acked


def _no_counts() -> dict[str, Any]:
    return {"total": 0, "by_kind": {}, "auth_ok": 0, "auth_rejected": 0}


def encode_cursor(order: str, position: int) -> str:
    """Opaque page cursor: the ordering and the position of the last event on the page."""
    return base64.urlsafe_b64encode(f"{order}:{position}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, order: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        kind, _, position = raw.partition(":")
        if not position.isascii() or not position.isdigit() or len(position) > 19 \
                or int(position) >= 2**63:
            raise ValueError(position)  # SQLite's integers are signed 64-bit
        value = int(position)
    except (ValueError, UnicodeDecodeError):
        raise QueryError(f"cursor {cursor[:40]!r} is not one this API returned; "
                         "pass next_cursor from a previous page unchanged") from None
    if kind != order:
        raise QueryError("cursor belongs to a listing with different filters: keep node_id "
                         "as it was when the cursor was returned")
    return value
