"""What the phone keeps, offline: the inbox, the places it tapped, the consent, the open
records waiting for their next contact. SQLite in the phone's data dir; each item's file
kept once under its sha256 in ``files/`` beside it (checked before it is written).

Why SQLite: the inbox, tickets and history must work with no network and survive the
app being killed; one file, one transaction per received item.
"""
from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from handset_app.consent import Consent

log = logging.getLogger(__name__)

#: Makes the signed open record for a counter (handset_app.phone.Phone.open_item).
OpenMaker = Callable[[int], bytes]

DB_FILE = "phone.db"
FILES_DIR = "files"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    item_id TEXT PRIMARY KEY, version INTEGER NOT NULL, kind TEXT NOT NULL,
    title TEXT NOT NULL, body TEXT NOT NULL, media_type TEXT, file_sha256 TEXT,
    merchant TEXT NOT NULL, node_id TEXT NOT NULL, zone TEXT NOT NULL,
    received REAL NOT NULL, requested INTEGER NOT NULL, opened INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS places (
    id INTEGER PRIMARY KEY, node_id TEXT NOT NULL, zone TEXT NOT NULL, at REAL NOT NULL,
    channel TEXT NOT NULL, items INTEGER NOT NULL);
-- every unrequested item kept, for the daily cap (a re-sent item replaces its inbox row)
CREATE TABLE IF NOT EXISTS kept (at REAL NOT NULL, requested INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pending_opens (counter INTEGER PRIMARY KEY, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class InboxEntry:
    """One received item, kept on the phone (offline)."""

    item_id: str
    version: int
    kind: str
    title: str
    body: str
    media_type: str | None
    file: Path | None  # the checked file on disk, if any
    merchant: str
    node_id: str
    zone: str
    received: float  # unix time
    requested: bool  # the customer asked for it
    opened: bool


@dataclass(frozen=True)
class Place:
    """One tap (or code session): where and when."""

    node_id: str
    zone: str
    at: float
    channel: str  # "nfc" | "code"
    items: int


class PhoneStore:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.files_dir = self.data_dir / FILES_DIR
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.data_dir / DB_FILE, isolation_level=None,
                                  check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self._sweep()

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ files
    def keep_file(self, sha256: str, data: bytes) -> Path:
        """Write checked bytes under their sha256 (atomically: a crash leaves no half file;
        flushed before the rename, so a power cut cannot leave an empty one under the
        name either)."""
        path = self.files_dir / sha256
        if not path.exists():
            tmp = path.with_suffix(".part")
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        return path

    def _referenced(self) -> set[str]:
        return {sha for (sha,) in self.db.execute(
            "SELECT file_sha256 FROM inbox WHERE file_sha256 IS NOT NULL")}

    def _sweep(self) -> None:
        """Remove files no inbox entry names: a ``.part`` left by a crash mid-write, a
        file written just before a crash kept its entry from being stored."""
        keep = self._referenced()
        for path in self.files_dir.iterdir():
            if path.name not in keep and not path.is_dir():
                path.unlink(missing_ok=True)

    def _drop_file(self, sha256: str | None) -> None:
        """Remove a file once no inbox entry names it (an entry replaced by a new one)."""
        if sha256 and sha256 not in self._referenced():
            (self.files_dir / sha256).unlink(missing_ok=True)

    # ------------------------------------------------------------------ inbox
    def add_item(self, entry: InboxEntry) -> None:
        """Keep ``entry``; an entry with its id is replaced, and its file goes with it
        unless another entry names it."""
        with self.db:
            self.db.execute("BEGIN")
            row = self.db.execute("SELECT file_sha256 FROM inbox WHERE item_id = ?",
                                  (entry.item_id,)).fetchone()
            self.db.execute(
                "INSERT OR REPLACE INTO inbox VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (entry.item_id, entry.version, entry.kind, entry.title, entry.body,
                 entry.media_type, entry.file.name if entry.file else None, entry.merchant,
                 entry.node_id, entry.zone, entry.received, int(entry.requested),
                 int(entry.opened)))
            self.db.execute("INSERT INTO kept VALUES (?, ?)", (entry.received, int(entry.requested)))
        if row is not None:
            self._drop_file(row[0])

    def _entry(self, row: tuple) -> InboxEntry:  # type: ignore[type-arg]
        (item_id, version, kind, title, body, media_type, sha, merchant, node_id, zone,
         received, requested, opened) = row
        return InboxEntry(item_id, version, kind, title, body, media_type,
                          self.files_dir / sha if sha else None, merchant, node_id, zone,
                          received, bool(requested), bool(opened))

    def inbox(self) -> list[InboxEntry]:
        return [self._entry(r) for r in self.db.execute(
            "SELECT * FROM inbox ORDER BY received DESC, item_id")]

    def item(self, item_id: str) -> InboxEntry | None:
        row = self.db.execute("SELECT * FROM inbox WHERE item_id = ?", (item_id,)).fetchone()
        return self._entry(row) if row else None

    def mark_opened(self, item_id: str) -> None:
        self.db.execute("UPDATE inbox SET opened = 1 WHERE item_id = ?", (item_id,))

    def unrequested_since(self, since: float) -> int:
        return int(self.db.execute("SELECT count(*) FROM kept WHERE requested = 0 AND at >= ?",
                                   (since,)).fetchone()[0])

    # ----------------------------------------------------------------- places
    def add_place(self, node_id: str, zone: str, at: float, channel: str) -> int:
        return int(self.db.execute(
            "INSERT INTO places (node_id, zone, at, channel, items) VALUES (?,?,?,?,0)",
            (node_id, zone, at, channel)).lastrowid or 0)

    def count_place_item(self, place: int) -> None:
        self.db.execute("UPDATE places SET items = items + 1 WHERE id = ?", (place,))

    def places(self) -> list[Place]:
        return [Place(*r) for r in self.db.execute(
            "SELECT node_id, zone, at, channel, items FROM places ORDER BY at DESC, id DESC")]

    # ---------------------------------------------------------------- consent
    def consent(self) -> Consent:
        text = self.get_meta("consent")
        if text is None:
            return Consent()
        try:
            return Consent.from_json(text)
        except (ValueError, TypeError, AttributeError) as exc:  # a damaged file: safest rules
            log.error("stored consent unreadable (%s); taking nothing unrequested", exc)
            return Consent(kinds=dict.fromkeys(Consent().kinds, False))

    def set_consent(self, consent: Consent) -> None:
        consent.check()
        self.set_meta("consent", consent.to_json())

    # ------------------------------------------------------------------ opens
    def queue_open(self, make_record: OpenMaker) -> int:
        """Take the next counter (never reused, also across reset) and queue the record
        ``make_record(counter)`` returns, in one transaction."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            counter = int(self.get_meta("open_counter") or 0) + 1
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('open_counter', ?)",
                            (str(counter),))
            self.db.execute("INSERT INTO pending_opens VALUES (?, ?)",
                            (counter, make_record(counter)))
        return counter

    def add_pending_record(self, counter: int, record: bytes) -> None:
        """Queue a record as it is (tests: a record the phone did not make)."""
        self.db.execute("INSERT OR REPLACE INTO pending_opens VALUES (?, ?)", (counter, record))

    def pending_opens(self, limit: int) -> list[tuple[int, bytes]]:
        return [(c, bytes(r)) for c, r in self.db.execute(
            "SELECT counter, record FROM pending_opens ORDER BY counter LIMIT ?", (limit,))]

    def drop_opens(self, counters: list[int]) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("DELETE FROM pending_opens WHERE counter = ?",
                                [(c,) for c in counters])

    def pending_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM pending_opens").fetchone()[0])

    def new_identity(self) -> None:
        """Drop the queued records and start the counter again: the hub counts per
        (handset, counter), so a new identity may start at 1, and must (the next counter
        of the old one would link the two)."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM pending_opens")
            self.db.execute("DELETE FROM meta WHERE key = 'open_counter'")

    def delete_all(self) -> None:
        """Everything but the open counter (the identity keeps it: a counter is never
        used twice by one identity), in one transaction (a kill at any moment leaves all
        or nothing), then the freed pages rewritten (VACUUM) and the log emptied, so the
        deleted rows are not left in the file; then the files."""
        with self.db:
            self.db.execute("BEGIN")
            for table in ("inbox", "places", "kept", "pending_opens"):
                self.db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
            self.db.execute("DELETE FROM meta WHERE key != 'open_counter'")
        self.db.execute("VACUUM")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._sweep()

    # ------------------------------------------------------------------- meta
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
