"""Which database the hub uses, and the SQLAlchemy engine for it.

``[hub] database`` is a SQLite file path (one box) or a PostgreSQL URL (past one box):
``postgresql://user@host/dbname`` is read as ``postgresql+psycopg://...`` (psycopg 3,
the driver installed with the hub). Everything that can be wrong with the setting or
the server becomes a StorageError whose one line names the setting, the database
(password hidden) and the reason, so ``tapcast hub`` can print it as it is.

SQLite, and why the connection is set up so:
* WAL mode, so the pages read while the ingest writes; ``synchronous=FULL`` so a commit
  is on disk before the ingest acks it; a 30 s busy timeout for the other processes; a
  larger WAL before a checkpoint (WAL_AUTOCHECKPOINT).
* Python's sqlite3 module would begin transactions itself, late and deferred; the hub
  begins them (the engine's "begin" event). A write transaction must take the write
  lock at BEGIN (``BEGIN IMMEDIATE``): a deferred one that reads then writes gets
  "database is locked" at once when another process writes meanwhile (SQLite refuses
  the lock upgrade rather than deadlock, and no busy timeout applies). ``writer(engine)``
  is the engine whose transactions do that.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

log = logging.getLogger(__name__)

__all__ = ["StorageError", "database_url", "make_engine", "writer", "shown_url"]

#: Execution option marking a write transaction (BEGIN IMMEDIATE on SQLite).
WRITE_OPTION = "tapcast_write"
#: SQLite: WAL pages (4 KiB) a commit lets grow before it copies them into the database
#: (SQLite's default is 1000). Each of those checkpoints syncs the file; at 4000 (a WAL
#: of about 16 MiB) the ingest's writer stored 8% more events a second (74k -> 80k in
#: one process, hub.ingest_writer alone).
WAL_AUTOCHECKPOINT = 4000


class StorageError(RuntimeError):
    """The hub database cannot be used; the message says which and why, in one line."""


def shown_url(url: str | URL) -> str:
    """The URL as it may appear in a log or an error: never with its password; a
    SQLite file as its path."""
    if isinstance(url, URL):
        if url.get_backend_name() == "sqlite":
            return url.database or ""
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@")[-1] if "@" in url else url


def database_url(setting: str) -> URL:
    """The SQLAlchemy URL for ``[hub] database``: a SQLite path, ``sqlite:///path``, or
    a PostgreSQL URL. StorageError for anything else, saying what would do."""
    text = setting.strip()
    if text in ("", ":memory:") or text in ("sqlite://", "sqlite:///:memory:"):
        raise StorageError(f"[hub] database {setting!r}: give a SQLite file path (the hub's "
                           "processes share the file) or a postgresql:// URL")
    if "://" not in text:
        return URL.create("sqlite+pysqlite", database=text)
    try:
        url = make_url(text)
    except ArgumentError:
        raise StorageError(f"[hub] database {shown_url(text)!r}: not a database URL; give a "
                           "SQLite file path or postgresql://user@host/dbname") from None
    if url.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        if not url.database:
            raise StorageError(f"[hub] database {shown_url(url)!r}: name the database, as in "
                               "postgresql://user@host/tapcast")
        return url.set(drivername="postgresql+psycopg")
    if url.drivername in ("sqlite", "sqlite+pysqlite") and url.database:
        return url.set(drivername="sqlite+pysqlite")
    raise StorageError(f"[hub] database {shown_url(url)!r}: the hub runs on SQLite (a file "
                       "path) or PostgreSQL (postgresql://user@host/dbname), not "
                       f"{url.drivername}")


def make_engine(setting: str | URL, *, check_writable: bool = True) -> Engine:
    """An engine for the hub database (SQLite set up as the module docstring says).
    Does not connect to PostgreSQL yet; a SQLite file's folder is created and probed."""
    url = database_url(setting) if isinstance(setting, str) else setting
    if url.get_backend_name() == "sqlite":
        path = Path(url.database or "")
        if check_writable:
            _check_writable(path)
        engine = create_engine(url, connect_args={"timeout": 30.0, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    # pre_ping: a pooled connection that PostgreSQL closed (restart, idle timeout) is
    # replaced before use rather than failing the request or the ingest's transaction.
    return create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=8,
                         connect_args={"connect_timeout": 10})


def writer(engine: Engine) -> Engine:
    """The same engine (and pool) whose transactions are write transactions."""
    return engine.execution_options(**{WRITE_OPTION: True})


def set_wal(engine: Engine, timeout: float = 30.0) -> None:
    """Put a SQLite file in WAL mode (no-op elsewhere). The switch needs the file to
    itself, so when another process holds it the switch is retried."""
    if engine.dialect.name != "sqlite":
        return
    deadline = time.monotonic() + timeout
    pooled = engine.raw_connection()
    raw = pooled.driver_connection
    try:
        mode = raw.execute("PRAGMA journal_mode").fetchone()[0]
        while mode != "wal":
            try:
                mode = raw.execute("PRAGMA journal_mode = wal").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
                continue
            if mode != "wal":  # the file system cannot do it; readers will wait on writes
                log.warning("hub database stays in %s journal mode (no WAL)", mode)
                break
    finally:
        pooled.close()


def _sqlite_connect(dbapi_connection: Any, record: Any) -> None:
    dbapi_connection.isolation_level = None  # transactions are begun by _sqlite_begin
    dbapi_connection.execute("PRAGMA synchronous = FULL")
    dbapi_connection.execute("PRAGMA busy_timeout = 30000")
    dbapi_connection.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT}")


def _sqlite_begin(conn: Any) -> None:
    immediate = conn.get_execution_options().get(WRITE_OPTION)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _check_writable(path: Path) -> None:
    """SQLite alone says "unable to open database file" for every cause; find the cause
    first: a folder that cannot be created, a folder or file that is not writable."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"hub database {path}: cannot create its folder {folder}: "
                           f"{reason(exc)}") from exc
    # SQLite writes the -wal and -shm files next to the database: the folder must take
    # new files even when the database itself exists.
    try:
        fd, probe = tempfile.mkstemp(prefix=".tapcast-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StorageError(f"hub database {path}: its folder {folder} is not writable: "
                           f"{reason(exc)}") from exc
    if path.exists():
        try:
            with open(path, "r+b"):
                pass
        except OSError as exc:
            raise StorageError(f"hub database {path}: cannot open it for writing: "
                               f"{reason(exc)}") from exc


def reason(exc: BaseException) -> str:
    """An exception as the one line an operator reads (a driver's first line)."""
    orig = getattr(exc, "orig", None)  # sqlalchemy wraps the driver's exception
    text = str(orig if orig is not None else exc).strip()
    text = getattr(exc, "strerror", None) or text or type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__
