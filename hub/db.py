"""Hub storage: nodes, events (each (node_id, seq) stored once) and per-node acks.

SQLite through sqlite-utils by default, in WAL mode so the web pages read while the
ingest writes. Why the shape below:

* ``events`` has UNIQUE (node_id, seq): a node re-sends everything the hub has not
  acked, so duplicates are normal traffic; ``INSERT ... ON CONFLICT DO NOTHING`` drops
  them inside the same transaction that stores the rest of the batch.
* ``nodes.acked_seq`` is the highest seq such that every seq 1..acked_seq is stored. It
  only moves forward and is recomputed for the nodes a batch touched, after the insert,
  in the same transaction; the ingest publishes it to the node as EventAck.
* ``event_counts`` (per node and kind, plus how many carried ``data.ok = true``) is
  updated in the same transaction from the rows actually inserted (rowid above the
  highest before the insert), so the API never scans ``events`` to count. That is
  cheaper than a per-row AFTER INSERT trigger, which cost 35% of insert throughput.
* Events are listed newest first: per node by seq (the unique index), across nodes
  by ``rowid`` (no extra index to maintain on the hot insert path; an index on ts
  cost another 12%).
* Batches: one transaction per batch. Per-row commits cap near 5k rows/s here; a
  batch of 1,000 events commits at about 180-235k events/s (see ``write``).
  ``synchronous=FULL`` makes each commit durable (fsync of the WAL) before the ingest
  acks it; a batch amortises the fsync.

Threads: sqlite3 connections must not be shared between threads while in use, so each
thread gets its own connection (the ingest writer thread writes; request threads read
and ``release()`` theirs after each request).

PostgreSQL seam (not built): ``open_db(url)`` chooses the backend from the URL, and a
PostgreSQL store would offer the same public methods as HubDB (``write``,
``write_batch``, ``acked_seq``, ``list_nodes``, ``get_node``, ``event_totals``,
``list_events``, ``count_events``, ``release``, ``close``); the ingest, API and tests
only use those. The SQL is portable where that costs nothing (``ON CONFLICT ... DO
NOTHING`` and the upserts are valid PostgreSQL). To port: ``json_each``/
``json_extract`` become ``jsonb_array_elements``/``->>``; ``rowid`` becomes a BIGSERIAL
``pk`` column (event order, cursors, and "rows this transaction inserted" for the
counts, which with several writers needs ``RETURNING`` instead of a rowid range);
``BEGIN IMMEDIATE`` becomes a row lock on ``nodes`` while recomputing ``acked_seq``
when several ingest workers share a ``$share/hub/...`` subscription.
"""
from __future__ import annotations

import base64
import contextlib
import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import msgspec
import sqlite_utils

from tapcast.protocol.mqtt import Event, EventBatch, NodeState

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
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
    acked_seq  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    node_id  TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    id       TEXT NOT NULL,
    kind     TEXT NOT NULL,
    ts       REAL NOT NULL,
    data     TEXT NOT NULL,       -- JSON object
    received REAL NOT NULL,
    UNIQUE (node_id, seq)
);
CREATE TABLE IF NOT EXISTS event_counts (
    node_id TEXT NOT NULL,
    kind    TEXT NOT NULL,
    n       INTEGER NOT NULL,
    ok      INTEGER NOT NULL,     -- how many had data.ok = true (auth verdicts)
    PRIMARY KEY (node_id, kind)
);
"""

# One execution per EventBatch: ?1 node id (from the topic, checked against the
# batch), ?2 arrival time, ?3 the batch JSON text. ("WHERE true" lets SQLite parse the
# upsert clause after a SELECT.)
_INSERT_BATCH = """
INSERT INTO events (node_id, seq, id, kind, ts, data, received)
SELECT ?1, json_extract(j.value, '$.seq'), json_extract(j.value, '$.id'),
       json_extract(j.value, '$.kind'), json_extract(j.value, '$.ts'),
       coalesce(json_extract(j.value, '$.data'), '{}'), ?2
FROM json_each(?3, '$.events') AS j WHERE true
ON CONFLICT (node_id, seq) DO NOTHING
"""

# Count the rows this transaction inserted (rowid above the max before it).
_COUNT_NEW = """
INSERT INTO event_counts (node_id, kind, n, ok)
SELECT node_id, kind, count(*),
       sum(kind = 'auth' AND json_type(data, '$.ok') = 'true')
FROM events NOT INDEXED WHERE rowid > ? GROUP BY node_id, kind
ON CONFLICT (node_id, kind) DO UPDATE SET n = n + excluded.n, ok = ok + excluded.ok
"""

_encode = msgspec.json.Encoder().encode


class QueryError(ValueError):
    """A query parameter is wrong; the message says what to fix."""


class StorageError(RuntimeError):
    """The hub database cannot be used; the message says which and why, in one line."""


class RawBatch(NamedTuple):
    """One node's EventBatch as received, already validated by decode_batch."""

    node_id: str
    payload: str  # the EventBatch JSON text
    events: int  # how many events it holds


@dataclass(frozen=True)
class BatchResult:
    stored: int  # rows actually inserted
    duplicates: int  # rows already present (same node_id, seq)
    acked: dict[str, int]  # node_id -> acked_seq after the batch, for every node touched


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

    # ----------------------------------------------------------------- writes

    def write_batch(self, events: Sequence[tuple[str, Event]], **kwargs: Any) -> BatchResult:
        """``write`` for ``(node_id, Event)`` pairs (tests, tools): encodes them as the
        EventBatch JSON a node would have sent."""
        by_node: dict[str, list[Event]] = {}
        for node_id, event in events:
            by_node.setdefault(node_id, []).append(event)
        raw = [RawBatch(node_id, _encode(EventBatch(node_id=node_id, events=evs)).decode(),
                        len(evs)) for node_id, evs in by_node.items()]
        return self.write(raw, **kwargs)

    def write(self, batches: Sequence[RawBatch] = (), *,
              states: Iterable[tuple[str, NodeState, float | None]] = (),
              statuses: Iterable[tuple[str, str, float | None]] = (),
              seen: dict[str, float] | None = None,
              received: float | None = None) -> BatchResult:
        """Store event batches, node states and statuses in ONE transaction, then advance
        ``acked_seq`` for every node that had events in it.

        ``batches`` are EventBatch JSON texts already validated by
        ``decode_batch`` (the ingest does that on paho's thread). SQLite's JSON
        functions take the events apart, so the per-event work runs in C with the GIL
        released instead of in Python: measured 235k events/s alone, and it leaves
        the interpreter to the MQTT thread. (Passed as str, never bytes: SQLite 3.45+
        reads a BLOB as its binary JSONB format.)

        ``states``/``statuses`` carry the time they were heard live (None for a retained
        message replayed by the broker, which says nothing about the node being alive
        now); ``seen`` is the latest live time per node for the whole batch."""
        received = time.time() if received is None else received
        db = self.db
        touched = sorted({b.node_id for b in batches})
        with self._immediate(db):
            conn = db.conn
            for node_id in touched:
                conn.execute("INSERT INTO nodes (node_id) VALUES (?) "
                             "ON CONFLICT (node_id) DO NOTHING", (node_id,))
            # Our write lock (BEGIN IMMEDIATE) makes every rowid above this one ours.
            (before,) = conn.execute("SELECT coalesce(max(rowid), 0) FROM events").fetchone()
            stored = 0
            if batches:
                stored = conn.executemany(
                    _INSERT_BATCH, [(b.node_id, received, b.payload) for b in batches]
                ).rowcount
                conn.execute(_COUNT_NEW, (before,))
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
            acked = {node_id: self._advance_ack(conn, node_id) for node_id in touched}
        total = sum(b.events for b in batches)
        return BatchResult(stored=stored, duplicates=total - stored, acked=acked)

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

    @staticmethod
    def _advance_ack(conn: sqlite3.Connection, node_id: str) -> int:
        """Move acked_seq up through the contiguous run of stored seqs above it: to the
        first stored seq whose successor is missing. Walks the (node_id, seq) index in
        order and stops there, so a permanent gap costs nothing on later batches."""
        (acked,) = conn.execute("SELECT acked_seq FROM nodes WHERE node_id = ?",
                                (node_id,)).fetchone()
        row = conn.execute(
            "SELECT e.seq FROM events AS e WHERE e.node_id = ?1 AND e.seq > ?2 "
            "AND NOT EXISTS (SELECT 1 FROM events AS f "
            "                WHERE f.node_id = ?1 AND f.seq = e.seq + 1) "
            "AND EXISTS (SELECT 1 FROM events WHERE node_id = ?1 AND seq = ?2 + 1) "
            "ORDER BY e.seq LIMIT 1", (node_id, acked)).fetchone()
        if row is not None:
            acked = row[0]
            conn.execute("UPDATE nodes SET acked_seq = ? WHERE node_id = ?", (acked, node_id))
        return acked

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
        """Events newest first: for one node by seq (walks the (node_id, seq) index),
        across nodes by storage order (rowid; no extra index on the insert path).
        Returns (events, next_cursor); pass next_cursor back as ``cursor`` for the next
        (older) page; None on the last page. ``since_seq`` needs ``node_id`` (seqs are
        per node); ``since_seq`` and ``since_ts`` are exclusive lower bounds.

        Known cost: ``kind`` and ``since_ts`` filter while scanning (no index), so a
        rare kind on a big table is a long scan (about 20 ms per 100k events here)."""
        if not 1 <= limit <= MAX_EVENTS_LIMIT:
            raise QueryError(f"limit must be between 1 and {MAX_EVENTS_LIMIT}, got {limit}")
        if since_seq is not None and node_id is None:
            raise QueryError("since_seq needs node_id: seqs are numbered per node")
        order = "seq" if node_id is not None else "rowid"
        before = None if cursor is None else decode_cursor(cursor, order)
        clauses, params = [], []
        for clause, value in (("node_id = ?", node_id), ("kind = ?", kind),
                              ("seq > ?", since_seq), ("ts > ?", since_ts),
                              (f"{order} < ?", before)):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = list(self.db.query(
            f"SELECT {order} AS _pos, node_id, seq, id, kind, ts, data, received FROM events "
            f"{where} ORDER BY {order} DESC LIMIT ?", [*params, limit + 1]))
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(order, rows[-1]["_pos"]) if more else None
        for row in rows:
            del row["_pos"]
            row["data"] = msgspec.json.decode(row["data"])
        return rows, next_cursor


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
