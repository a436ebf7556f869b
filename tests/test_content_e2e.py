"""Content end to end: a marketer's item goes from the hub's library, through a signed
manifest over a real Mosquitto and the node's sync, to a phone that taps (real nfcpy
and bumble), with its file inside the BLE message when small and over the node's WLAN
link when large; the display page follows; the funnel counts what happened."""
from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hall.testing.hub import HubServer, hub_config, serve
from hall.testing.mosquitto import Mosquitto
from hall.virtual import VirtualHall
from hub import get_db
from hub.accounts import Actor
from hub.content import ItemInput, Targets
from hub.content_api import library
from tapcast.protocol import ble
from tapcast.schedule import Schedule

pytestmark = pytest.mark.slow

PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000"
                    "000d4944415478da63f8cfc0f01f0005000201a5c7d2a10000000049454e44ae426082")
#: Past what goes inside a BLE message: this one takes the WLAN path.
BIG_PNG = PNG + bytes(ble.INLINE_FILE_MAX * 3)
CLI = Actor.cli()
SYNC_TIMEOUT = 20.0


@pytest.fixture
def hub(mosquitto: Mosquitto, tmp_path: Path) -> AsyncIterator[HubServer]:
    server = serve(hub_config(tmp_path / "hub.db", mosquitto.url, secret_dir=tmp_path),
                   wait_ingest=10.0, publish_manifests=True)
    yield server
    server.shutdown()


async def started_hall(hub: HubServer, mosquitto: Mosquitto, tmp_path: Path,
                       nodes: int = 2) -> VirtualHall:
    hall = VirtualHall(tmp_path / "hall", mosquitto.url, nodes=nodes, handsets=1,
                       hold_off=0.0, processes=False, stream_secret=hub.stream_secret,
                       authority=hub.authority)
    await hall.start()
    return hall


async def synced(hall: VirtualHall, keys: set[str]) -> None:
    """Until every node runs a manifest naming exactly ``keys`` for its zone."""
    for node in hall.nodes:
        daemon = node.daemon
        assert daemon is not None
        await daemon.sync.wait_for(lambda d=daemon: d.store.content_serial() > 0
                                   and {i.id for i in d.store.items()} <= keys,
                                   SYNC_TIMEOUT)


async def test_a_coupon_for_one_zone_reaches_a_tap_there_with_its_image_and_not_elsewhere(
        hub: HubServer, mosquitto: Mosquitto, tmp_path: Path) -> None:
    lib = library(hub.app)
    png = lib.store_file(io.BytesIO(PNG), "coupon")
    lib.create(CLI, "lobby-coffee", "coupon",
               ItemInput("Coffee: second cup free", "At Bean & Leaf", 0, png, "coffee.png"),
               targets=Targets(zones=("lobby",)), schedule=Schedule(priority=50))
    hall = await started_hall(hub, mosquitto, tmp_path)
    try:
        lobby, food_court = hall.nodes  # zones lobby and food-court (hall.virtual.ZONES)
        assert (lobby.zone, food_court.zone) == ("lobby", "food-court")
        await synced(hall, {"lobby-coffee"})
        phone = hall.handsets[0]
        there = await hall.tap(phone, lobby, extra_requests=0)
        assert there.ok, there.error
        assert there.items[0] == "lobby-coffee"  # the featured item: pushed first
        assert there.files["lobby-coffee"] == PNG and there.file_paths["lobby-coffee"] == "ble"
        elsewhere = await hall.tap(phone, food_court, extra_requests=0)
        assert "lobby-coffee" not in elsewhere.items + elsewhere.catalogue
        assert await hall.drain(15.0)
        db = get_db(hub.app)
        today = int(time.time() // 86400)
        funnel = db.funnel("lobby-coffee", today - 1, today + 1)
        assert funnel["totals"]["delivery"] == 1
        assert [n["node_id"] for n in funnel["by_node"]] == [lobby.node_id]
    finally:
        await hall.stop()


async def test_a_large_item_goes_over_the_nodes_wlan_link_and_checks_out(
        hub: HubServer, mosquitto: Mosquitto, tmp_path: Path) -> None:
    lib = library(hub.app)
    big = lib.store_file(io.BytesIO(BIG_PNG), "media")
    lib.create(CLI, "hall-map", "media", ItemInput("Hall map", "", 0, big, "map.png"),
               targets=Targets(everywhere=True))
    hall = await started_hall(hub, mosquitto, tmp_path, nodes=1)
    try:
        await synced(hall, {"hall-map"})
        report = await hall.tap(hall.handsets[0], hall.nodes[0], extra_requests=0)
        assert report.ok, report.error
        assert report.files["hall-map"] == BIG_PNG
        assert report.file_paths["hall-map"] == "wlan"
    finally:
        await hall.stop()


async def test_a_new_version_published_while_the_hall_runs_reaches_the_next_tap(
        hub: HubServer, mosquitto: Mosquitto, tmp_path: Path) -> None:
    lib = library(hub.app)
    lib.create(CLI, "news", "article", ItemInput("Old news", "yesterday", 0),
               targets=Targets(everywhere=True))
    hall = await started_hall(hub, mosquitto, tmp_path, nodes=1)
    try:
        node = hall.nodes[0]
        assert node.daemon is not None
        await synced(hall, {"news"})
        lib.revise(CLI, "news", ItemInput(title="Fresh news"))
        store = node.daemon.store
        await node.daemon.sync.wait_for(
            lambda: getattr(store.get("news"), "title", None) == "Fresh news", SYNC_TIMEOUT)
        report = await hall.tap(hall.handsets[0], node, extra_requests=0)
        assert report.ok and report.items == ["news"]
    finally:
        await hall.stop()
