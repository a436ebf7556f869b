"""The node syncs its signed content manifest (node/sync.py) from the real hub: the hub's
ManifestPublisher signs what its content library holds, the hub web serves the files
(/node/v1/files, signed requests, Range), and the node's real ContentStore and Outbox
take the result. A manifest is applied whole or not at all; a bad one is refused, with
its reason reported to the hub, while the old set keeps serving."""
from __future__ import annotations

import asyncio
import hashlib
import io
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hall.testing.hub import HubServer, hub_config, serve
from hall.testing.mosquitto import Mosquitto
from hub import get_ingest
from hub.accounts import Actor
from hub.config import HubConfig
from hub.content import ContentLibrary, ItemInput, Targets
from hub.content_api import library
from hub.dbengine import writer
from hub.manifests import MANIFEST_LIFETIME, ManifestPublisher
from hub.schema import nodes
from node.config import MqttSection, NodeConfig
from node.outbox import Outbox
from node.store import ContentStore
import node.sync as sync_module
from node.sync import PARTIAL_DIR, ContentSync
from node.uplink import Uplink
from tapcast.config import load
from tapcast.keys import HubAuthority, make_node_credentials
from tapcast.protocol.manifest import manifest_topic
from tapcast.protocol.mqtt import NodeState, decode_state, encode, stream_key
from tapcast.schedule import Schedule, Window
from tapcast.signed import MAX_SIZE, peek

NODE = "n1"
OTHER = "n2"
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000"
                    "000d4944415478da63f8cfc0f01f0005000201a5c7d2a10000000049454e44ae426082")
PNG_SHA = hashlib.sha256(PNG).hexdigest()
CLI = Actor.cli()
FAST = {"backoff_min": 0.01, "backoff_max": 0.05, "timeout": 5.0}


@dataclass
class Hub:
    """The real hub web with its content library, and a publisher that signs each
    node's manifest and hands it to ``sent`` (by node id) instead of a broker."""

    server: HubServer
    config: HubConfig
    lib: ContentLibrary
    authority: HubAuthority
    sent: dict[str, bytes] = field(default_factory=dict)

    def publisher(self, files_url: str | None = None,
                  publish: Callable[[str, bytes], bool] | None = None) -> ManifestPublisher:
        hub = msgspec.structs.replace(self.config.hub, public_url=files_url or self.server.url)
        return ManifestPublisher(msgspec.structs.replace(self.config, hub=hub),
                                 self.lib.engine, self.authority, publish or self._capture)

    def _capture(self, topic: str, payload: bytes) -> bool:
        self.sent[topic.split("/")[3]] = payload
        return True

    def publish(self, files_url: str | None = None) -> bytes:
        """Sign the manifests of every node now; this node's."""
        self.publisher(files_url).tick()
        return self.sent[NODE]

    def add(self, key: str, kind: str = "coupon", *, file: bytes | None = PNG,
            schedule: Schedule | None = None, title: str = "Coffee") -> None:
        stored = self.lib.store_file(io.BytesIO(file), kind) if file is not None else None
        self.lib.create(CLI, key, kind, ItemInput(title, "Second cup free", 0, stored,
                                                  f"{key}.png" if stored else None),
                        targets=Targets(everywhere=True), schedule=schedule)


@dataclass
class Node:
    store: ContentStore
    outbox: Outbox
    sync: ContentSync
    files: Path

    def served(self, at: float | None = None) -> list[str]:
        return [item.id for item in self.store.items(at)]

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e.data for e in self.outbox.pending(1000) if e.kind == kind]


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    config = hub_config(tmp_path / "hub" / "hub.db", "mqtt://127.0.0.1:1",
                        secret_dir=tmp_path / "hub")
    server = serve(config, start_ingest=False)
    lib = library(server.app)
    with writer(lib.engine).begin() as conn:  # nodes the hub has heard of
        conn.execute(nodes.insert(), [{"node_id": NODE, "zone": "lobby"},
                                      {"node_id": OTHER, "zone": "lobby"}])
    yield Hub(server, config, lib, HubAuthority.generate())
    server.shutdown()


def make_node(hub: Hub, data_dir: Path, **options: Any) -> Node:
    data_dir.mkdir(parents=True, exist_ok=True)
    store = ContentStore(data_dir / "content.db")
    outbox = Outbox(data_dir / "outbox.db", synchronous="NORMAL")
    sync = ContentSync(NODE, store, outbox, hub.authority.public_key_bytes,
                       stream_key(hub.server.stream_secret, NODE), data_dir / "files",
                       **{**FAST, **options})
    return Node(store, outbox, sync, data_dir / "files")


@pytest.fixture
async def node(hub: Hub, tmp_path: Path) -> AsyncIterator[Node]:
    made = make_node(hub, tmp_path / "node")
    yield made
    await made.sync.close()
    made.outbox.close()
    made.store.close()


# ------------------------------------------------------------------- applying


async def test_a_new_manifest_is_applied_with_its_files_its_serial_and_an_event(
        hub: Hub, node: Node) -> None:
    hub.add("coffee")
    hub.add("hours", "article", file=None, title="Opening hours",
            schedule=Schedule(priority=5))
    signed = hub.publish()
    await node.sync.sync(signed)
    serial = peek(signed).serial
    assert node.served() == ["hours", "coffee"]  # priority first, though it sorts second
    coffee = node.store.get("coffee")
    assert node.store.get("hours").featured and not coffee.featured
    assert coffee is not None and coffee.file_sha256 == PNG_SHA
    assert coffee.media_type == "image/png" and coffee.version == 1
    assert (node.files / PNG_SHA).read_bytes() == PNG
    assert node.store.content_serial() == serial and node.store.tz() == "UTC"
    assert node.events("manifest_applied") == [
        {"serial": serial, "items": 2, "bytes_fetched": len(PNG)}]


async def test_a_changed_set_whose_files_are_held_fetches_nothing_and_a_redelivery_is_a_noop(
        hub: Hub, node: Node) -> None:
    hub.add("coffee")
    await node.sync.sync(hub.publish())
    hub.lib.revise(CLI, "coffee", ItemInput(title="Coffee, all day"))
    second = hub.publish()
    await node.sync.sync(second)
    assert node.store.get("coffee").title == "Coffee, all day"
    assert node.events("manifest_applied")[-1] == {
        "serial": peek(second).serial, "items": 1, "bytes_fetched": 0}
    depth = node.outbox.depth()
    await node.sync.sync(second)  # the retained copy, delivered again at a reconnection
    assert node.outbox.depth() == depth and node.sync.applied == 2


async def test_a_download_cut_halfway_resumes_with_only_the_rest(
        hub: Hub, node: Node) -> None:
    hub.add("coffee")
    half = len(PNG) // 2
    (node.files / PARTIAL_DIR).mkdir(parents=True)
    (node.files / PARTIAL_DIR / PNG_SHA).write_bytes(PNG[:half])
    await node.sync.sync(hub.publish())
    assert node.events("manifest_applied")[0]["bytes_fetched"] == len(PNG) - half
    assert (node.files / PNG_SHA).read_bytes() == PNG
    assert not (node.files / PARTIAL_DIR / PNG_SHA).exists()


async def test_files_neither_the_new_set_nor_the_previous_one_names_are_deleted(
        hub: Hub, node: Node) -> None:
    hub.add("coffee")
    await node.sync.sync(hub.publish())
    hub.lib.retire(CLI, "coffee")
    await node.sync.sync(hub.publish())
    assert (node.files / PNG_SHA).exists()  # the previous set's file stays, once
    hub.add("hours", "article", file=None, title="Opening hours")
    await node.sync.sync(hub.publish())
    assert node.served() == ["hours"] and not (node.files / PNG_SHA).exists()


async def test_a_newer_manifest_replaces_one_whose_files_cannot_be_fetched(
        hub: Hub, node: Node) -> None:
    hub.add("hours", "article", file=None, title="Opening hours")
    await node.sync.sync(hub.publish())
    hub.add("coffee")
    unreachable = hub.publish(files_url="http://127.0.0.1:9")  # nothing listens there
    node.sync.offer(unreachable)
    await node.sync.wait_for(lambda: node.sync.fetch_errors >= 2, timeout=10)
    assert node.sync.pending_serial == peek(unreachable).serial  # kept, retried
    assert node.served() == ["hours"]  # the old set serves meanwhile
    fixed = hub.publish()
    await node.sync.sync(fixed)
    assert node.store.content_serial() == peek(fixed).serial
    assert node.served() == ["coffee", "hours"] and node.sync.pending_serial is None


# ------------------------------------------------------------------- refusing


def tampered(hub: Hub, before: bytes) -> bytes:
    raw = bytearray(hub.publish())
    raw[len(raw) // 2] ^= 0x01  # a byte of the body
    return bytes(raw)


def stale(hub: Hub, before: bytes) -> bytes:
    return before  # the manifest the node ran before the one it runs


def for_another_node(hub: Hub, before: bytes) -> bytes:
    hub.publish()
    return hub.sent[OTHER]


REFUSALS = {"bad_signature": tampered, "stale": stale, "wrong_subject": for_another_node}


async def run_two(hub: Hub, node: Node) -> tuple[bytes, int]:
    """The node runs a second manifest (coffee, revised): the first one and the serial
    it runs."""
    hub.add("coffee")
    first = hub.publish()
    await node.sync.sync(first)
    hub.lib.revise(CLI, "coffee", ItemInput(title="Coffee, all day"))
    second = hub.publish()
    await node.sync.sync(second)
    return first, peek(second).serial


@pytest.mark.parametrize("reason", sorted(REFUSALS))
async def test_a_bad_manifest_is_refused_with_its_reason_and_the_old_set_keeps_serving(
        hub: Hub, node: Node, reason: str) -> None:
    first, running = await run_two(hub, node)
    hub.add("tea", title="Tea")  # what the refused manifest would have added
    bad = REFUSALS[reason](hub, first)
    await node.sync.sync(bad)
    refusal, = node.events("manifest_refused")
    assert refusal["reason"] == reason and refusal["serial"] == peek(bad).serial
    assert reason in refusal["detail"] and len(refusal["detail"]) <= 200
    assert node.store.content_serial() == running and node.served() == ["coffee"]
    assert node.sync.refused[reason] == 1


async def test_an_expired_manifest_is_refused_and_the_old_set_keeps_serving(
        hub: Hub, node: Node, tmp_path: Path) -> None:
    _, running = await run_two(hub, node)
    hub.add("tea", title="Tea")
    later = ContentSync(NODE, node.store, node.outbox, hub.authority.public_key_bytes,
                        stream_key(hub.server.stream_secret, NODE), node.files,
                        clock=lambda: time.time() + MANIFEST_LIFETIME + 60)
    await later.sync(hub.publish())
    refusal, = node.events("manifest_refused")
    assert refusal["reason"] == "expired" and refusal["serial"] == peek(hub.sent[NODE]).serial
    assert node.store.content_serial() == running and node.served() == ["coffee"]


async def test_a_file_whose_bytes_on_the_hub_are_wrong_refuses_the_manifest(
        hub: Hub, node: Node) -> None:
    hub.add("hours", "article", file=None, title="Opening hours")
    await node.sync.sync(hub.publish())
    hub.add("coffee")
    signed = hub.publish()
    hub.lib.files.path(PNG_SHA).write_bytes(PNG[:-1] + b"\x00")  # same size, other bytes
    await node.sync.sync(signed)
    refusal, = node.events("manifest_refused")
    assert refusal["reason"] == "bad_file" and refusal["serial"] == peek(signed).serial
    assert PNG_SHA in refusal["detail"]
    assert node.served() == ["hours"] and node.store.content_serial() < peek(signed).serial
    assert not (node.files / PNG_SHA).exists()
    assert not (node.files / PARTIAL_DIR / PNG_SHA).exists()  # not resumed from bad bytes


@pytest.mark.parametrize(("payload", "refused"), [
    (b"", []), (b"TCSO", ["malformed"]), (b"\xff" * 1000, ["malformed"]),
    (bytes(MAX_SIZE + 1), ["too_large"])], ids=["empty", "truncated", "garbage", "too-large"])
async def test_no_payload_crashes_the_sync(hub: Hub, node: Node, payload: bytes,
                                           refused: list[str]) -> None:
    await node.sync.sync(payload)
    assert node.served() == [] and node.store.content_serial() == 0
    assert [e["reason"] for e in node.events("manifest_refused")] == refused


async def test_refusals_sent_over_and_over_are_few_events_that_say_how_many(
        hub: Hub, node: Node) -> None:
    for _ in range(5):
        await node.sync.sync(b"\xff" * 1000)  # anyone on the broker can do this
    assert node.sync.refused["malformed"] == 5
    assert [e["reason"] for e in node.events("manifest_refused")] == ["malformed"]
    node.sync._refusal_recorded["malformed"] -= 61  # a minute on
    node.sync._last_refusal = None
    await node.sync.sync(b"\xfe" * 1000)
    assert node.events("manifest_refused")[-1]["skipped"] == 4


# ------------------------------------------------------------------- serving


async def test_items_outside_their_schedule_are_not_served(hub: Hub, node: Node) -> None:
    now = datetime.now(timezone.utc)
    start = (now + timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    window = Window(f"{start:%H}:00", f"{(start + timedelta(hours=1)):%H}:00")
    hub.add("breakfast", schedule=Schedule(windows=[window]))
    hub.add("hours", "article", file=None, title="Opening hours")
    await node.sync.sync(hub.publish())
    assert node.served() == ["hours"]
    assert node.store.get("breakfast") is None
    inside = (start + timedelta(minutes=30)).timestamp()
    assert node.served(inside) == ["breakfast", "hours"]
    assert node.store.get("breakfast", inside) is not None


async def test_a_node_that_applied_a_manifest_keeps_it_across_restarts_and_reports_it(
        hub: Hub, tmp_path: Path) -> None:
    from node.daemon import NodeDaemon

    hub.add("coffee")
    signed = hub.publish()
    library = Path(__file__).resolve().parents[1] / "content" / "library.toml"
    config = load(NodeConfig, data={"node": {"id": NODE, "zone": "lobby",
                                             "data_dir": str(tmp_path / "node"),
                                             "library": str(library)}}, environ={})
    credentials = make_node_credentials(hub.authority, NODE, "lobby", time.time() + 86400)

    def start() -> NodeDaemon:
        return NodeDaemon(config, push=object(), credentials=credentials,
                          stream_key=stream_key(hub.server.stream_secret, NODE))

    def close(daemon: NodeDaemon) -> None:
        daemon.outbox.close()
        daemon.store.close()

    daemon = start()
    assert "welcome" in [i.id for i in daemon.store.items()]  # seeded: nothing applied yet
    await daemon.sync.sync(signed)
    assert daemon.state().content_serial == peek(signed).serial
    await daemon.sync.close()
    close(daemon)
    daemon = start()
    try:
        assert [i.id for i in daemon.store.items()] == ["coffee"]  # not seeded again
        assert daemon.state().content_serial == peek(signed).serial
    finally:
        close(daemon)


async def test_the_uplink_hands_the_retained_manifest_from_the_hubs_ingest_to_the_sync(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    config = hub_config(tmp_path / "hub" / "hub.db", mosquitto.url, secret_dir=tmp_path / "hub")
    server = serve(config, wait_ingest=10)
    lib = library(server.app)
    with writer(lib.engine).begin() as conn:
        conn.execute(nodes.insert(), [{"node_id": NODE, "zone": "lobby"}])
    hub = Hub(server, config, lib, HubAuthority.generate())
    node = make_node(hub, tmp_path / "node")
    key = stream_key(server.stream_secret, NODE)
    uplink = Uplink(NODE, MqttSection(brokers=[mosquitto.url]), node.outbox, key,
                    on_manifest=node.sync.offer, backoff_min=0.05, backoff_max=0.4)
    try:
        hub.add("coffee")
        ingest = get_ingest(server.app)
        assert hub.publisher(publish=ingest.publish_retained).tick() == 1  # retained
        await uplink.start()
        await node.sync.wait_for(lambda: node.store.content_serial() > 0, timeout=10)
        assert node.served() == ["coffee"] and (node.files / PNG_SHA).exists()
        assert ingest.publish_retained(manifest_topic(NODE), bytes(MAX_SIZE + 1))
        assert ingest.publish_retained(manifest_topic(NODE), b"TCSO")  # in order, after it
        await node.sync.wait_for(lambda: node.sync.refused["malformed"] == 1, timeout=10)
        assert uplink.refused_manifests == 1  # the oversized one, unread
        assert [e["reason"] for e in node.events("manifest_refused")] == ["malformed"]
    finally:
        await uplink.stop()
        await node.sync.close()
        node.outbox.close()
        server.shutdown()


# ------------------------------------------------------------------- the state


def test_node_state_carries_the_content_serial_and_decodes_without_it() -> None:
    state = NodeState(node_id=NODE, ts=1.0, version="1", zone="lobby", uptime=2.0,
                      outbox_depth=0, content_serial=1_764_000_000_000)
    assert decode_state(encode(state)) == state
    old = b'{"node_id":"n1","ts":1.0,"version":"1","zone":"lobby","uptime":2.0,"outbox_depth":0}'
    assert decode_state(old).content_serial == 0


async def test_downloads_wait_while_a_tap_is_served_and_go_on_after_it(
        hub: Hub, node: Node) -> None:
    hub.add("coffee")
    node.sync.tap_started()  # a phone entered the field
    node.sync.offer(hub.publish())
    # the download really pauses (not merely: nothing happened yet)
    assert await asyncio.to_thread(node.sync.paused_for_tap.wait, 5)
    assert node.sync.bytes_fetched == 0 and node.store.content_serial() == 0
    node.sync.tap_ended()
    await node.sync.wait_for(lambda: node.store.content_serial() > 0, 10)
    assert node.served() == ["coffee"] and node.sync.bytes_fetched == len(PNG)


async def test_a_finished_set_waits_for_a_held_tap_before_its_swap(
        hub: Hub, node: Node) -> None:
    hub.add("hours", "article", file=None, title="Opening hours")  # nothing to fetch
    node.sync.tap_started()
    node.sync.offer(hub.publish())
    assert await asyncio.to_thread(node.sync.swap_waited_for_tap.wait, 5)
    assert node.store.content_serial() == 0 and node.served() == []
    node.sync.tap_ended()
    await node.sync.wait_for(lambda: node.store.content_serial() > 0, 10)
    assert node.served() == ["hours"] and not node.sync.paused_for_tap.is_set()


def test_a_phone_left_on_the_reader_pauses_downloads_for_a_capped_time(
        hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = make_node(hub, tmp_path / "capped")
    now = [1000.0]
    monkeypatch.setattr(sync_module.time, "monotonic", lambda: now[0])
    try:
        made.sync.tap_started()
        assert made.sync._held()
        for _ in range(int(sync_module.TAP_YIELD_MAX / 0.25)):  # re-sensed every poll
            now[0] += 0.25
            made.sync.tap_started()
        assert not made.sync._held()  # the cap: downloads go on
        now[0] += sync_module.TAP_YIELD_GAP / 2
        made.sync.tap_started()
        assert not made.sync._held()  # for at least TAP_YIELD_GAP
        now[0] += sync_module.TAP_YIELD_GAP
        made.sync.tap_started()
        assert made.sync._held()  # then a tap pauses them again
    finally:
        made.outbox.close()
        made.store.close()


async def test_a_resumed_download_that_does_not_match_is_fetched_again_from_byte_0(
        hub: Hub, node: Node) -> None:
    hub.add("coffee")
    (node.files / PARTIAL_DIR).mkdir(parents=True)
    half = len(PNG) // 2
    (node.files / PARTIAL_DIR / PNG_SHA).write_bytes(bytes(half))  # stale bytes
    await node.sync.sync(hub.publish())
    assert (node.files / PNG_SHA).read_bytes() == PNG
    assert node.events("manifest_refused") == [] and node.sync.fetch_errors == 1


async def test_a_disk_without_room_refuses_the_manifest(
        hub: Hub, node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add("coffee")
    monkeypatch.setattr(sync_module.shutil, "disk_usage",
                        lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    signed = hub.publish()
    await node.sync.sync(signed)
    refusal, = node.events("manifest_refused")
    assert refusal["reason"] == "no_space" and refusal["serial"] == peek(signed).serial
    assert "free" in refusal["detail"] and node.sync.bytes_fetched == 0
