"""A node whose NFC reader is lost reports it: one "error" event that reaches the hub,
and the node's state (published at once, not at the next heartbeat) says "failed" until
the reader answers again. Real daemon, real nfcpy udp reader, Mosquitto and hub ingest;
only the unplugging is injected (nfcpy's udp driver cannot be unplugged)."""
from __future__ import annotations

import asyncio
import errno
import json
from typing import Any

import pytest

from hall.testing.hub import HubServer
from hall.virtual import VirtualHall
from hub import get_db
from node.nfc_reader import open_frontend

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


@pytest.fixture
async def hall(make_hall) -> VirtualHall:  # type: ignore[no-untyped-def]
    return await make_hall(seed=9, processes=False)


async def hub_sees(running_hub: HubServer, predicate: Any, timeout: float = 10.0) -> None:
    db = get_db(running_hub.app)
    async with asyncio.timeout(timeout):
        while not predicate(db):
            await asyncio.sleep(0.05)  # the hub's database, written by another thread


def reader_state(db: Any) -> str | None:
    rows = db.query("SELECT state FROM nodes WHERE node_id = 'node-1'")
    return json.loads(rows[0]["state"]).get("reader") if rows and rows[0]["state"] else None


async def test_a_lost_reader_is_one_event_and_shows_failed_in_the_node_state_until_back(
        hall: VirtualHall, running_hub: HubServer) -> None:
    daemon = hall.nodes[0].daemon
    assert daemon is not None and daemon.reader is not None
    await hub_sees(running_hub, lambda db: reader_state(db) == "ok")
    plugged = True

    def opener(path: str) -> Any:
        if not plugged:
            raise OSError(errno.ENODEV, "No such device")
        return open_frontend(path)

    def gone(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENODEV, "No such device")

    daemon.reader.open_device = opener
    plugged = False
    daemon.reader._clf.device.sense_tta = gone  # pulled mid-run
    await hub_sees(running_hub, lambda db: reader_state(db) == "failed")
    plugged = True
    await hub_sees(running_hub, lambda db: reader_state(db) == "ok", timeout=40.0)
    report = await hall.tap(hall.handsets[0], hall.nodes[0])
    assert report.ok, report.error
    assert await hall.drain(10.0)
    errors = [json.loads(r["data"]) for r in get_db(running_hub.app).query(
        "SELECT data FROM events WHERE kind = 'error'")]
    assert [(e["component"], e["device"]) for e in errors] == [
        ("nfc_reader", hall.nodes[0].nfc_device)]
