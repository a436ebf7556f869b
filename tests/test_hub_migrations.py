"""Hub schema migrations: up from an empty database and from the schema before
migrations; the hub refuses a database that is not migrated; hub.schema and the
migrations agree."""
from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner

from hall.cli import main
from hall.testing.postgres import PostgresServer
from hub.db import HubDB, StorageError, open_db
from hub.dbengine import make_engine
from hub.migrate import head_revision, upgrade
from hub.schema import metadata
from tapcast.protocol.mqtt import Event

LEGACY_SCHEMA = Path(__file__).parent / "data" / "hub_schema_v2.sql"


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path):  # noqa: ANN201
    """A database with no tables at all, of each kind."""
    if request.param == "sqlite":
        yield str(tmp_path / "hub.db")
        return
    postgres: PostgresServer = request.getfixturevalue("postgres")
    url = postgres.create()
    yield url
    postgres.drop(url)


def legacy_file(path: Path, user_version: int = 2) -> None:
    """A hub database as the issue-6 hub left it: two nodes' events, an incident."""
    conn = sqlite3.connect(path)
    conn.executescript(LEGACY_SCHEMA.read_text())
    conn.execute(f"PRAGMA user_version = {user_version}")
    conn.execute("INSERT INTO nodes (node_id, epoch, acked_seq) VALUES ('n1', 'e1', 2)")
    conn.execute("INSERT INTO streams (node_id, epoch, acked_seq, first_seen) "
                 "VALUES ('n1', 'e1', 2, 1.0)")
    for rowid, seq in ((7, 1), (9, 2)):  # rowids with a gap: storage order must survive
        conn.execute("INSERT INTO events (rowid, node_id, epoch, seq, id, kind, ts, data, "
                     "received) VALUES (?, 'n1', 'e1', ?, ?, 'tap', 1.5, '{}', 2.0)",
                     (rowid, seq, f"id{seq}"))
    conn.execute("INSERT INTO event_counts VALUES ('n1', 'tap', 2, 0)")
    conn.execute("INSERT INTO incidents (node_id, epoch, kind, count, detail, at) "
                 "VALUES ('n1', 'e1', 'lost', 3, 'old', 1.0)")
    conn.commit()
    conn.close()


def test_upgrade_creates_every_table_in_an_empty_database(empty_database: str) -> None:
    assert upgrade(empty_database, echo=print) == (None, head_revision())
    with HubDB(empty_database) as db:
        assert db.count_events() == 0 and db.list_nodes(stale_after=1) == ([], None)


def test_upgrade_again_changes_nothing(empty_database: str) -> None:
    upgrade(empty_database, echo=print)
    lines: list[str] = []
    assert upgrade(empty_database, echo=lines.append) == (head_revision(), head_revision())
    assert lines and "up to date" in lines[0]


def test_the_migrated_database_matches_hub_schema(empty_database: str) -> None:
    """A table changed in hub/schema.py without a revision fails here."""
    upgrade(empty_database, echo=print)
    engine = make_engine(empty_database)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                metadata)
    engine.dispose()
    assert diff == []


def test_the_hub_refuses_a_database_that_is_not_migrated(empty_database: str) -> None:
    with pytest.raises(StorageError, match=r"not migrated\): run `tapcast hub db upgrade"):
        open_db(empty_database)


def set_revision(database: str, revision: str) -> None:
    engine = make_engine(database)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE alembic_version SET version_num = '{revision}'")
    engine.dispose()


def test_the_hub_refuses_a_database_at_an_older_revision(hub_database: str) -> None:
    set_revision(hub_database, "0001")
    with pytest.raises(StorageError, match=f"revision 0001, this hub needs {head_revision()}"
                                           ".*tapcast hub db upgrade"):
        open_db(hub_database)


def test_a_revision_this_hub_does_not_know_is_refused_and_not_migrated(
        hub_database: str) -> None:
    """A newer hub's database: nothing here can migrate it, nor should try."""
    set_revision(hub_database, "0099")
    for attempt in (open_db, lambda db: upgrade(db, echo=print)):
        with pytest.raises(StorageError, match="revision '0099', which this hub does not know"):
            attempt(hub_database)


def test_upgrading_a_file_that_is_not_a_database_says_so_in_one_error(tmp_path: Path) -> None:
    (tmp_path / "hub.db").write_text("not a database, " * 100)
    with pytest.raises(StorageError, match=r"hub\.db: cannot migrate it: file is not a database"):
        upgrade(str(tmp_path / "hub.db"), echo=print)


def test_a_file_from_before_migrations_is_refused_until_upgraded(tmp_path: Path) -> None:
    legacy_file(tmp_path / "hub.db")
    with pytest.raises(StorageError, match="written before migrations.*db upgrade"):
        open_db(str(tmp_path / "hub.db"))


def test_upgrade_converts_a_file_from_before_migrations_keeping_everything(
        tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    legacy_file(path)
    assert upgrade(str(path), echo=print) == (None, head_revision())
    with HubDB(path) as db:
        events, _ = db.list_events()
        assert [(e["seq"], e["id"]) for e in events] == [(2, "id2"), (1, "id1")]
        assert db.query("SELECT pos FROM events ORDER BY pos") == [{"pos": 7}, {"pos": 9}]
        assert [i["detail"] for i in db.list_incidents()] == ["old"]
        assert db.event_totals()["total"] == 2
        # the stream goes on where it was: seq 3 is next, acked at once
        result = db.write_batch([("n1", Event(id="id3", seq=3, kind="tap", ts=3.0, data={}))],
                                epoch="e1")
        assert result.acked == {"n1": 3} and result.incidents == 0
        assert db.list_events(limit=1)[0][0]["seq"] == 3


def test_a_file_older_than_epochs_is_refused_with_what_to_do(tmp_path: Path) -> None:
    legacy_file(tmp_path / "hub.db", user_version=1)
    with pytest.raises(StorageError, match="schema version 1.*move the file aside"):
        upgrade(str(tmp_path / "hub.db"), echo=print)


def test_tapcast_hub_db_upgrade_migrates_the_configured_database(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(f'[hub]\ndatabase = "{tmp_path / "hub.db"}"\n')
    result = CliRunner().invoke(main, ["hub", "db", "upgrade", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert f"to revision {head_revision()}" in result.output
    open_db(str(tmp_path / "hub.db")).close()


def test_tapcast_hub_db_upgrade_says_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('[hub]\ndatabase = "postgresql://hub:pw@127.0.0.1:1/tapcast"\n')
    result = CliRunner().invoke(main, ["hub", "db", "upgrade", "--config", str(config)])
    assert result.exit_code != 0
    assert "127.0.0.1:1/tapcast: cannot migrate it" in result.output
    assert "pw" not in result.output and "Traceback" not in result.output


def _upgrade_at_once(database: str, barrier: object, results: object) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    try:
        upgrade(database, echo=lambda line: None)
        open_db(database).close()
        results.put("ok")  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put(f"{type(exc).__name__}: {exc}")  # type: ignore[attr-defined]


def test_several_processes_upgrading_one_new_database_at_once_all_succeed(
        empty_database: str) -> None:
    """A deploy may run `hub db upgrade` on every box at once."""
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_upgrade_at_once, args=(empty_database, barrier, results))
             for _ in range(4)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(30)
    assert outcomes == ["ok"] * 4
