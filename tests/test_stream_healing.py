"""The event stream heals itself, on real stacks: a node process, a real Mosquitto and
the hub's ingest. A hub database restored from an older copy and a node whose data dir
was wiped both resume at once, and the hub records what was lost instead of wedging."""
from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from hall.testing.hub import HubServer, hub_config, serve
from hall.testing.mosquitto import Mosquitto
from hall.virtual import VirtualHall
from hub import get_db

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture
async def hall(make_hall) -> VirtualHall:  # type: ignore[no-untyped-def]
    return await make_hall(seed=5, processes=True)


async def tap_and_drain(hall: VirtualHall) -> None:
    report = await hall.tap(hall.handsets[0], hall.nodes[0])
    assert report.ok, report.error
    assert await hall.drain(15.0), "the node's outbox did not drain to the hub"


def stored(server: HubServer) -> list[tuple[str, int, str]]:
    return [(r["epoch"], r["seq"], r["kind"]) for r in get_db(server.app).query(
        "SELECT epoch, seq, kind FROM events ORDER BY pos")]


async def test_a_hub_database_restored_from_an_older_copy_resumes_the_node(
        hall: VirtualHall, running_hub: HubServer, mosquitto: Mosquitto, tmp_path: Path) -> None:
    database = Path(running_hub.app.config["TAPCAST"].hub.database)
    await tap_and_drain(hall)
    before = len(stored(running_hub))
    backup = tmp_path / "backup.db"
    sqlite3.connect(database).execute(f"VACUUM INTO '{backup}'")  # last night's copy
    await tap_and_drain(hall)  # acked: the node deleted these, only the live copy has them
    lost = len(stored(running_hub)) - before
    running_hub.shutdown()

    for stale in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        stale.unlink(missing_ok=True)
    shutil.copy(backup, database)
    restored = serve(hub_config(database, mosquitto.url), wait_ingest=10.0)
    try:
        await tap_and_drain(hall)  # resumes with the next batch: nothing waits
        incidents = get_db(restored.app).list_incidents()
        assert [(i["kind"], i["count"]) for i in incidents] == [("lost", lost)]
        seqs = [seq for _, seq, _ in stored(restored)]
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
    finally:
        restored.shutdown()


@pytest.mark.parametrize("running_hub_database", ["sqlite", "postgresql"], indirect=True)
async def test_a_node_whose_data_dir_was_wiped_starts_a_new_epoch_and_nothing_is_dropped(
        hall: VirtualHall, running_hub: HubServer) -> None:
    node = hall.nodes[0]
    await tap_and_drain(hall)
    first = stored(running_hub)
    await hall.stop_node(node)
    for path in node.outbox_path.parent.glob(node.outbox_path.name + "*"):
        path.unlink()  # a new SD card: seqs start at 1 again
    await hall.start_node(node)
    await tap_and_drain(hall)
    events = stored(running_hub)
    epochs = {epoch for epoch, _, _ in events}
    assert len(epochs) == 2
    new = events[len(first):]
    assert new and new[0][1] == 1  # stored, not dropped as duplicates of the old seq 1
    incidents = get_db(running_hub.app).list_incidents()
    assert [i["kind"] for i in incidents] == ["new_epoch"]

