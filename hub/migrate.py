"""Schema migrations (Alembic, revisions in hub/migrations/versions).

``tapcast hub db upgrade`` brings a database to the newest revision: a new (empty)
database gets every table; one at an older revision gets the steps it lacks; a SQLite
file from before migrations (schema version 2, written by the issue-6 hub) is adopted
by revision 0001. The hub's processes never migrate by themselves: ``check_current``
refuses a database that is not at the newest revision with a message naming the
command, so two versions of the hub never write one schema differently.

Several processes may run ``upgrade`` at once (a deploy script on every box): on
PostgreSQL the migration takes a transaction-scoped advisory lock first, on SQLite the
write lock (``BEGIN IMMEDIATE``), so one migrates and the others find it done.
"""
from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Callable

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from hub.dbengine import StorageError, make_engine, reason, set_wal, shown_url, writer

log = logging.getLogger(__name__)

__all__ = ["upgrade", "check_current", "head_revision", "current_revision",
           "UPGRADE_HINT"]

UPGRADE_HINT = "run `tapcast hub db upgrade --config hub.toml`"
#: The schema version (PRAGMA user_version) of the last hub written before migrations.
LEGACY_SQLITE_VERSION = 2
_LOCK_KEY = 0x7A9C_0007  # pg_advisory_xact_lock key of hub migrations


@functools.cache
def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", "hub:migrations")
    return config


@functools.cache
def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None, "hub/migrations/versions has no revision"
    return head


@functools.cache
def known_revisions() -> frozenset[str]:
    """Every revision this hub's migrations know."""
    return frozenset(r.revision for r in
                     ScriptDirectory.from_config(_alembic_config()).walk_revisions())


def _unknown(where: str, at: str) -> StorageError:
    return StorageError(f"hub database {where} is at schema revision {at!r}, which this hub "
                        "does not know (written by a newer hub?): run that hub's version, or "
                        "restore a backup made by this one")


def current_revision(conn: Connection) -> str | None:
    """The revision the database is at; None for one never migrated."""
    return MigrationContext.configure(conn).get_current_revision()


def _legacy_version(conn: Connection) -> int | None:
    """A SQLite file's PRAGMA user_version when it holds the pre-migration tables."""
    if conn.dialect.name != "sqlite" or not inspect(conn).has_table("events"):
        return None
    if inspect(conn).has_table("alembic_version"):
        return None
    return int(conn.exec_driver_sql("PRAGMA user_version").scalar() or 0)


def check_current(conn: Connection, where: str) -> None:
    """StorageError unless the database is at the newest revision."""
    head = head_revision()
    at = current_revision(conn)
    if at == head:
        return
    if at is None:
        legacy = _legacy_version(conn)
        if legacy is not None:
            raise StorageError(f"hub database {where} was written before migrations (schema "
                               f"version {legacy}): {UPGRADE_HINT} to convert it")
        raise StorageError(f"hub database {where} has no tables yet (not migrated): "
                           f"{UPGRADE_HINT}")
    if at not in known_revisions():
        raise _unknown(where, at)
    raise StorageError(f"hub database {where} is at schema revision {at}, this hub needs "
                       f"{head}: {UPGRADE_HINT}")


def upgrade(setting: str, *, echo: Callable[[str], None] = log.info) -> tuple[str | None, str]:
    """Migrate the database named by ``[hub] database`` to the newest revision.
    Returns (revision before, revision after). StorageError when it cannot."""
    engine = make_engine(setting)
    where = shown_url(engine.url)
    try:
        set_wal(engine)
        return _upgrade(engine, where, echo)
    except StorageError:
        raise
    except (SQLAlchemyError, sqlite3.Error) as exc:  # raw sqlite3 from the WAL switch
        raise StorageError(f"hub database {where}: cannot migrate it: {reason(exc)}") from exc
    finally:
        engine.dispose()


def _upgrade(engine: Engine, where: str, echo: Callable[[str], None]) -> tuple[str | None, str]:
    head = head_revision()
    with writer(engine).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        before = current_revision(conn)
        if before is not None and before not in known_revisions():
            raise _unknown(where, before)
        legacy = _legacy_version(conn) if before is None else None
        if legacy is not None and legacy != LEGACY_SQLITE_VERSION:
            raise StorageError(
                f"hub database {where} has schema version {legacy}, from before outbox "
                "epochs; no migration converts it: move the file aside and start a new "
                "one (the nodes re-send what they still hold)")
        if before == head:
            echo(f"hub database {where} is up to date (revision {head})")
            return before, head
        echo(f"migrating hub database {where} from "
             f"{'a pre-migration file' if legacy else before or 'empty'} to revision {head}")
        config = _alembic_config()
        config.attributes["connection"] = conn
        try:
            command.upgrade(config, "head")
        finally:
            config.attributes.pop("connection", None)
    return before, head
