"""Content end to end: a marketer's item goes from the hub's library, through a signed
manifest over a real Mosquitto and the node's sync, to a phone that taps (real nfcpy
and bumble), with its file inside the BLE message when small and over the node's WLAN
link when large; the funnel counts what happened. Also the node's sizing of a BLE
message (node.daemon.item_message_for), without a hall."""
from __future__ import annotations

import hashlib
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
from node.daemon import TRUNCATED_MARKER, fit_message, item_message_for, wlan_reachable
from node.store import Item
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
    for node in hall.nodes:
        # The virtual hall's phones run on this machine: it gives each display a
        # public_url on loopback, so its links reach them.
        assert node.daemon is not None and node.daemon.wlan_links
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
    # Aimed there too, lower priority and sorting first: it must come after the coupon.
    lib.create(CLI, "a-lobby-hours", "article", ItemInput("Opening hours", "9 to 5", 0),
               targets=Targets(zones=("lobby",)), schedule=Schedule(priority=1))
    hall = await started_hall(hub, mosquitto, tmp_path)
    try:
        lobby, food_court = hall.nodes  # zones lobby and food-court (hall.virtual.ZONES)
        assert (lobby.zone, food_court.zone) == ("lobby", "food-court")
        await synced(hall, {"lobby-coffee", "a-lobby-hours"})
        phone = hall.handsets[0]
        there = await hall.tap(phone, lobby, extra_requests=0, ask_for=["a-lobby-hours"])
        assert there.ok, there.error
        # the featured (highest-priority) item is pushed first, the other on request
        assert there.items == ["lobby-coffee", "a-lobby-hours"]
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


# ------------------------------------------------------------------ message sizing


def test_every_item_message_fits_one_ble_message(tmp_path: Path) -> None:
    """A 20,000-character body of multi-byte characters with a 32 KiB file: the file
    goes over WLAN (the whole message would pass 64 KiB), and without a WLAN link the
    text alone is sent; a body too long even alone is cut with a marker."""
    blob = bytes(ble.INLINE_FILE_MAX)
    sha = hashlib.sha256(blob).hexdigest()
    (tmp_path / sha).write_bytes(blob)
    body = "\u20ac" * 20_000  # 60,000 bytes of UTF-8
    item = Item("menu", "Menu", "media", body, file_sha256=sha, media_type="image/png")
    sealed = lambda m: len(ble.encode_message(m)) + ble.SEAL_OVERHEAD  # noqa: E731
    over_wlan = item_message_for(item, tmp_path, lambda s: f"http://10.0.0.5:8080/wlan/{s}")
    assert over_wlan.data is None and over_wlan.media_url is not None
    assert over_wlan.size == len(blob) and over_wlan.sha256 == sha
    assert over_wlan.body == body and sealed(over_wlan) <= ble.MAX_MESSAGE_SIZE
    text_only = item_message_for(item, tmp_path, None)
    assert text_only.data is None and text_only.media_url is None and text_only.body == body
    small = Item("menu", "Menu", "media", "short", file_sha256=sha, media_type="image/png")
    assert item_message_for(small, tmp_path, None).data == blob  # fits: inside
    huge = Item("essay", "Essay", "article", "\u20ac" * 30_000)
    cut = item_message_for(huge, tmp_path, None)
    assert cut.body.endswith(TRUNCATED_MARKER) and huge.body.startswith(
        cut.body[:-len(TRUNCATED_MARKER)])
    assert sealed(cut) <= ble.MAX_MESSAGE_SIZE
    assert cut.sha256 == hashlib.sha256(cut.body.encode()).hexdigest()  # of what is sent
    assert fit_message(cut) == cut


@pytest.mark.parametrize(("host", "public_url", "reachable"), [
    ("127.0.0.1", "", False), ("0.0.0.0", "", False), ("::1", "", False), ("::", "", False),
    ("localhost", "", False), ("192.168.1.20", "", True), ("node-1.hall", "", True),
    ("0.0.0.0", "http://192.168.1.20:8080", True)])
def test_wlan_links_never_point_at_loopback(host: str, public_url: str,
                                            reachable: bool) -> None:
    assert wlan_reachable(host, public_url) is reachable
