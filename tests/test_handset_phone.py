"""The handset core (handset_app.phone) on real stacks: nfcpy udp taps on a node daemon,
bleak + bumble on the hall's virtual air, the node's outbox; the hub (real Mosquitto and
ingest) where an open must be counted once. Offline: a fresh Phone on the same data dir."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hall.testing.hub import HubServer
from hall.testing.mosquitto import Mosquitto
from hall.virtual import HallNode, VirtualHall
from handset_app.phone import Phone
from node.ble_push import PushError
from tapcast.protocol import ble
from tapcast.protocol.openrecord import OpenRecord
from tests.phone_support import Recorder, attached, hall_and_phone, node_side, pair, tap

__all__ = ["pair"]  # the fixture

pytestmark = pytest.mark.timeout(60)


def node_events(node: HallNode, kind: str) -> list[dict]:
    assert node.daemon is not None
    return [e.data for e in node.daemon.outbox.pending(10_000) if e.kind == kind]


async def test_a_tap_stores_the_pushed_item_in_the_inbox_and_the_place(
        pair: tuple[VirtualHall, Phone]) -> None:
    hall, phone = pair
    node = hall.nodes[0]
    rec = Recorder()
    await tap(phone, node, ("e-paper",), rec)
    assert rec.of("on_authenticated") == [(node.node_id, node.zone)]
    inbox = {e.item_id: e for e in phone.inbox()}
    assert set(inbox) == {"welcome", "e-paper"}
    assert not inbox["welcome"].requested and inbox["e-paper"].requested
    assert inbox["e-paper"].merchant == "The City Daily"  # from the library, over BLE
    assert inbox["welcome"].node_id == node.node_id and inbox["welcome"].zone == node.zone
    assert [(p.node_id, p.zone, p.channel, p.items) for p in phone.places()] == [
        (node.node_id, node.zone, "nfc", 2)]
    entries = {e.id: e for e in rec.of("on_catalogue")[0][0]}
    assert entries["coffee-coupon"].merchant == "Bean & Leaf"


async def test_a_fresh_phone_on_the_same_data_dir_shows_inbox_and_places_offline(
        pair: tuple[VirtualHall, Phone], tmp_path: Path) -> None:
    hall, phone = pair
    node = hall.nodes[0]
    await tap(phone, node, ("hours",))
    inbox, places = phone.inbox(), phone.places()
    await phone.close()
    offline = Phone(tmp_path / "phone")  # no start(): no radios, no network
    try:
        assert offline.inbox() == inbox and offline.places() == places
        assert offline.item("hours") is not None and offline.item("hours").body.startswith("Mon")
        assert offline.credentials is not None
        assert offline.credentials.handset_id == "phone-1"
    finally:
        offline.store.close()


async def test_an_item_with_a_file_is_kept_under_its_sha256(
        pair: tuple[VirtualHall, Phone]) -> None:
    hall, phone = pair
    async with attached(hall, phone) as (node, rec):
        data = os.urandom(5000)
        sha = hashlib.sha256(data).hexdigest()
        await node.send(ble.ContentItem(id="map", title="Map", kind="media", body="", sha256=sha,
                                        media_type="image/png", size=len(data), data=data))
        [entry] = await rec.wait("on_item")
        assert entry.file is not None and entry.file.name == sha
        assert entry.file.read_bytes() == data and phone.item("map") == entry
        assert rec.of("on_progress") == [("map", 5000, 5000)]
        await node.close("done")


async def test_a_large_file_comes_over_the_nodes_wlan_link_with_progress(
        pair: tuple[VirtualHall, Phone]) -> None:
    """The node's real display server hands the file out on a signed link; the phone
    fetches it, says how far it got, and keeps it only as long as its sha256 holds."""
    hall, phone = pair
    daemon = hall.nodes[0].daemon
    assert daemon is not None and daemon.display is not None
    data = os.urandom(3 * 64 * 1024 + 100)
    sha = hashlib.sha256(data).hexdigest()
    (daemon.data_dir / "files").mkdir(exist_ok=True)
    (daemon.data_dir / "files" / sha).write_bytes(data)
    async with attached(hall, phone) as (node, rec):
        for item_id, announced in (("short", len(data) - 1), ("film", len(data))):
            await node.send(ble.ContentItem(
                id=item_id, title="Film", kind="media", body="", sha256=sha,
                media_url=daemon.display.wlan_url(sha), size=announced,
                media_type="video/mp4"))
        [entry] = await rec.wait("on_item")
        assert entry.item_id == "film" and entry.file is not None
        assert entry.file.read_bytes() == data
        assert any("short" in m and "WLAN" in m for (m,) in rec.of("on_error"))
        progress = [(done, total) for item, done, total in rec.of("on_progress")
                    if item == "film"]
        assert progress[-1] == (len(data), len(data)) and len(progress) >= 4
        assert [d for d, _ in progress] == sorted(d for d, _ in progress)
        await node.close("done")


async def test_an_open_record_goes_out_on_the_next_tap_and_is_dropped_after_the_ack(
        pair: tuple[VirtualHall, Phone]) -> None:
    hall, phone = pair
    node = hall.nodes[0]
    await tap(phone, node)
    phone.open_item("welcome")
    assert phone.pending_events() == 1 and phone.item("welcome").opened
    await tap(phone, node)
    assert phone.pending_events() == 0
    [opened] = node_events(node, "open")
    assert opened["item_id"] == "welcome" and opened["handset_id"] == "phone-1"
    assert opened["counter"] == 1 and opened["received_at"] == node.node_id


async def test_a_forged_open_record_is_refused_by_the_node_and_counted(
        pair: tuple[VirtualHall, Phone]) -> None:
    hall, phone = pair
    node = hall.nodes[0]
    await tap(phone, node)
    forged = OpenRecord("phone-1", "welcome", 0, node.node_id, int(time.time()), 7).sign(
        Ed25519PrivateKey.generate())
    other = OpenRecord("someone-else", "welcome", 0, node.node_id, int(time.time()), 8).sign(
        Ed25519PrivateKey.generate())
    phone.store.add_pending_record(7, forged)
    phone.store.add_pending_record(8, other)
    await tap(phone, node)
    assert node_events(node, "open") == []
    refused = sorted((e["counter"], e["reason"]) for e in node_events(node, "open_refused"))
    assert refused == [(7, "bad_signature"), (8, "other_handset")]
    assert phone.pending_events() == 0  # the node answered for them: not sent again


# --------------------------------------------------------- hostile frames from a "node"


async def test_garbled_and_wrongly_keyed_frames_are_reported_and_dropped_without_a_crash(
        pair: tuple[VirtualHall, Phone]) -> None:
    """A real sealed-frame stream over bleak + bumble: first a central holding another
    key (its HELLO fails the frame MAC), then the genuine key with a message sealed
    under the wrong key (authentic frames, the message does not open); the phone says
    so each time, keeps nothing, and still takes the genuine item that follows."""
    hall, phone = pair
    key, rec = os.urandom(32), Recorder()
    session = await phone.attach("node-x", "lobby", key, channel="code", listener=rec)
    with pytest.raises((PushError, TimeoutError)):  # it never binds
        async with node_side(hall, phone, os.urandom(32)):
            pass
    await rec.wait("on_error", lambda m: "unauthentic" in m)
    async with node_side(hall, phone, key) as node:
        wrong = ble.Endpoint(os.urandom(32), "node").seal(ble.Bye("x")).sealed
        node.endpoint.last_sent = 1  # the id the forged message takes
        await node.client.write_gatt_char(
            ble.RX_UUID, node.endpoint.wrap(ble.DataFrame(1, 0, 1, wrong)), response=False)
        await rec.wait("on_error", lambda m: "refused a message" in m)
        assert phone.inbox() == []
        body = "still here"
        await node.send(ble.ContentItem(id="genuine", title="Genuine", kind="article",
                                        body=body, sha256=hashlib.sha256(body.encode()).hexdigest()))
        await rec.wait("on_item", lambda e: e.item_id == "genuine")
        assert [e.item_id for e in phone.inbox()] == ["genuine"]
        await node.close("done")
    assert (await session.wait_closed()).startswith("bye")


async def test_an_item_whose_text_does_not_match_its_sha256_is_not_kept(
        pair: tuple[VirtualHall, Phone]) -> None:
    hall, phone = pair
    async with attached(hall, phone) as (node, rec):
        await node.send(ble.ContentItem(id="bent", title="Bent", kind="article", body="a",
                                        sha256=hashlib.sha256(b"b").hexdigest()))
        await rec.wait("on_error", lambda m: "sha256" in m)
        assert phone.inbox() == []
        await node.close("done")


# ------------------------------------------------------------------- to the hub, once


@pytest.mark.slow
async def test_an_open_reaches_the_hubs_funnel_once_even_when_sent_twice(
        mosquitto: Mosquitto, running_hub: HubServer, tmp_path: Path) -> None:
    from hub import get_db

    async with hall_and_phone(mosquitto, tmp_path, hub=running_hub) as (hall, phone):
        node = hall.nodes[0]
        await tap(phone, node)
        phone.open_item("welcome")
        [(counter, record)] = phone.store.pending_opens(10)
        await tap(phone, node)
        phone.store.add_pending_record(counter, record)  # as if the ack had been lost
        await tap(phone, node)
        assert phone.pending_events() == 0
        assert await hall.drain(15.0)
    db = get_db(running_hub.app)
    opens = [r for r in db.query("select kind, data from events") if r["kind"] == "open"]
    assert len(opens) == 2  # both deliveries stored as events ...
    today = int(time.time() // 86400)
    assert db.funnel("welcome", today - 1, today + 1)["totals"]["open"] == 1  # ... counted once


async def test_deleting_local_data_keeps_the_identity_and_never_reuses_an_open_counter(
        pair: tuple[VirtualHall, Phone]) -> None:
    hall, phone = pair
    await tap(phone, hall.nodes[0])
    phone.open_item("welcome")
    phone.delete_local_data()
    assert phone.inbox() == [] and phone.places() == [] and phone.pending_events() == 0
    assert phone.credentials is not None and phone.credentials.handset_id == "phone-1"
    await tap(phone, hall.nodes[0])
    phone.open_item("welcome")
    [(counter, _)] = phone.store.pending_opens(10)
    assert counter == 2
    phone.reset_identity()
    assert phone.credentials is None and phone.pending_events() == 0
    assert phone.inbox() != []  # the inbox is the customer's, not the identity's
