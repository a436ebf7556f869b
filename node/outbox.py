"""The node's durable outbox: events wait here until the hub acknowledges them.

Why SQLite with AUTOINCREMENT: the hub deduplicates on (node_id, seq) and acks the
highest *contiguous* seq it stored, so a seq must never be handed out twice, not even
after every event was acked and deleted, nor across restarts. SQLite's AUTOINCREMENT
keeps the high-water mark in ``sqlite_sequence`` and guarantees exactly that (a plain
INTEGER PRIMARY KEY would reuse seq 1 once the table is empty).

Durability: WAL mode with ``synchronous=FULL`` by default. In WAL mode NORMAL survives a
crash of the process but may lose the last committed transactions on power loss, and a
hall display's Pi is powered off by pulling the plug. FULL costs one fsync of the WAL
per commit; events arrive at human speed (taps), so that is cheap. Use ``add_many``
when many events are produced at once (one commit for all). ``synchronous="NORMAL"``
is accepted for benchmarks and for hosts on a UPS.

Epoch: a random id made when the outbox file is created and kept in it. A node whose
data dir was wiped starts again at seq 1 under a new epoch, so the hub keys events by
(node, epoch, seq) and never mistakes the new events for duplicates of the old ones.

Threading: the SQLite connection is opened with Python's default
``check_same_thread=True``, so an Outbox belongs to the thread that created it. The
uplink only touches it from its asyncio loop (paho runs on that loop too; see
node/uplink.py), so no lock is needed and a misuse from another thread raises
``sqlite3.ProgrammingError`` instead of corrupting anything.
"""
from __future__ import annotations

import logging
import time
import typing
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
import sqlite_utils

from tapcast.protocol.mqtt import Event, EventKind

log = logging.getLogger(__name__)

EVENT_KINDS: frozenset[str] = frozenset(typing.get_args(EventKind))
SYNCHRONOUS_MODES = ("FULL", "NORMAL", "EXTRA")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    id   TEXT NOT NULL,
    kind TEXT NOT NULL,
    ts   REAL NOT NULL,
    data TEXT NOT NULL  -- JSON object
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

_encode = msgspec.json.Encoder().encode
_decode_data = msgspec.json.Decoder(dict[str, Any]).decode


class OutboxError(ValueError):
    """An event cannot be stored as given; the message says what is wrong."""


class Outbox:
    """Events not yet acknowledged by the hub, in seq order (seq 1, 2, 3, ...)."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        mode = synchronous.upper()
        if mode not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, got {synchronous!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite_utils.Database(self.path)
        self.db.enable_wal()
        self.db.execute(f"PRAGMA synchronous={mode}")
        with self.db.conn:
            self.db.conn.executescript(_SCHEMA)
            self.db.conn.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?) "
                                 "ON CONFLICT (key) DO NOTHING", (uuid.uuid4().hex[:16],))
        self.epoch: str = self.db.conn.execute(
            "SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]

    # ------------------------------------------------------------------ writing

    def add(self, kind: str, data: dict[str, Any] | None = None) -> Event:
        """Store one event and return it with its seq; committed before returning."""
        return self.add_many([(kind, data)])[0]

    def add_many(self, items: Iterable[tuple[str, dict[str, Any] | None]]) -> list[Event]:
        """Store several events in one transaction (one fsync); all or none."""
        rows = [self._row(kind, data) for kind, data in items]
        events: list[Event] = []
        with self.db.conn:  # commits on success, rolls back on error
            for ev_id, kind, ts, data, raw in rows:
                cur = self.db.conn.execute(
                    "INSERT INTO events (id, kind, ts, data) VALUES (?, ?, ?, ?)",
                    (ev_id, kind, ts, raw))
                seq = cur.lastrowid
                assert seq is not None
                events.append(Event(id=ev_id, seq=seq, kind=kind, ts=ts, data=data))  # type: ignore[arg-type]
        return events

    @staticmethod
    def _row(kind: str, data: dict[str, Any] | None) -> tuple[str, str, float, dict[str, Any], str]:
        if kind not in EVENT_KINDS:
            raise OutboxError(f"unknown event kind {kind!r}: expected one of {sorted(EVENT_KINDS)}")
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise OutboxError(f"event data must be a dict, got {type(data).__name__}")
        try:
            raw = _encode(data).decode()
        except (TypeError, msgspec.EncodeError) as exc:
            raise OutboxError(f"event data is not JSON-serialisable: {exc}") from None
        return uuid.uuid4().hex, kind, time.time(), data, raw

    def ack(self, seq: int) -> int:
        """Delete every event with seq <= ``seq`` (the hub stored them); returns how many."""
        with self.db.conn:
            cur = self.db.conn.execute("DELETE FROM events WHERE seq <= ?", (seq,))
        return cur.rowcount

    # ------------------------------------------------------------------ reading

    def pending(self, limit: int = 200, *, after: int = 0) -> list[Event]:
        """Up to ``limit`` unacknowledged events with seq > ``after``, in seq order."""
        cur = self.db.conn.execute(
            "SELECT seq, id, kind, ts, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit))
        return [Event(id=ev_id, seq=seq, kind=kind, ts=ts, data=_decode_data(data))
                for seq, ev_id, kind, ts, data in cur]

    def lowest_seq(self) -> int | None:
        """The lowest seq still held (None when empty): the hub will never see a lower
        one of this epoch again, so it may move past a hole below it."""
        return self.db.conn.execute("SELECT min(seq) FROM events").fetchone()[0]

    def depth(self) -> int:
        """How many events wait for the hub's ack."""
        return self.db.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def last_seq(self) -> int:
        """The highest seq ever assigned (0 when none), acked or not."""
        row = self.db.conn.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return row[0] if row else 0

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def outbox_depth(path: str | Path) -> int:
    """Events waiting in the outbox file at ``path``, read from another process (the
    virtual hall, an operator's shell) without taking the node's write lock. 0 when
    the node has not created its outbox yet."""
    import sqlite3

    path = Path(path)
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        return conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return 0
        raise
    finally:
        conn.close()
