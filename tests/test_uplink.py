"""The node's uplink against a real Mosquitto and a tiny test hub (a paho peer that
stores (node_id, seq) once and acks the highest contiguous seq, as the real hub does)."""
from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from node.outbox import Outbox
from node.uplink import Uplink
from node.config import MqttSection
from tapcast.mqttclient import make_client, parse_broker_url
from tapcast.protocol.mqtt import (BATCH_CONTEXT, PREFIX, EventAck, NodeState, decode_ack,
                                   decode_batch, decode_state, encode, events_ack_topic,
                                   open_sealed, parse_node_topic, seal_ack, stream_key)
from hall.testing.mosquitto import Mosquitto, free_port

REPO = Path(__file__).resolve().parents[1]
FAST = dict(ack_timeout=0.5, backoff_min=0.05, backoff_max=0.4, connect_timeout=2.0)
SECRET = bytes(range(32))  # the test hub's stream secret


def key(node_id: str) -> bytes:
    return stream_key(SECRET, node_id)


class TestHub:
    """Stores each (node_id, seq) once and acks the highest contiguous seq after every
    batch (duplicates included), tagged with the node's stream key, like hub ingest.
    Also records status and state."""

    __test__ = False  # not a pytest class

    def __init__(self, url: str, loop: asyncio.AbstractEventLoop, *, ack: bool = True) -> None:
        self.ack = ack
        self.loop = loop
        self.lock = threading.Lock()
        self.deliveries: Counter[tuple[str, int]] = Counter()  # duplicates counted
        self.stored: dict[str, set[int]] = defaultdict(set)
        self.contiguous: dict[str, int] = defaultdict(int)
        self.epochs: dict[str, str] = {}
        self.status: list[tuple[str, bytes]] = []
        self.states: list[NodeState] = []
        self._changed = asyncio.Event()
        self._subscribed = threading.Event()
        self.broker = parse_broker_url(url)
        # A persistent session, as the real hub's: the broker queues batches for it
        # while it reconnects after a broker restart.
        self.client = make_client("test-hub", clean_session=False)
        self.client.reconnect_delay_set(0.05, 0.2)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message

    def start(self) -> None:
        self.client.connect(self.broker.host, self.broker.port, 30)
        self.client.loop_start()
        assert self._subscribed.wait(5), "test hub: no SUBACK"

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: paho.Client, *args: object) -> None:
        client.subscribe([(f"{PREFIX}/node/+/{leaf}", 1) for leaf in ("events", "status", "state")])

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        node_id, leaf = parse_node_topic(msg.topic)
        with self.lock:
            if leaf == "events":
                batch = decode_batch(open_sealed(key(node_id), BATCH_CONTEXT, msg.topic,
                                                 msg.payload), node_id)
                self.epochs[node_id] = batch.epoch
                for event in batch.events:
                    self.deliveries[(node_id, event.seq)] += 1
                    self.stored[node_id].add(event.seq)
                while self.contiguous[node_id] + 1 in self.stored[node_id]:
                    self.contiguous[node_id] += 1
                if self.ack:
                    self.send_ack(node_id, self.contiguous[node_id])
            elif leaf == "status":
                self.status.append((node_id, msg.payload))
            elif leaf == "state":
                self.states.append(decode_state(msg.payload))
        self.loop.call_soon_threadsafe(self._changed.set)

    def send_ack(self, node_id: str, seq: int, epoch: str | None = None) -> None:
        ack = EventAck(epoch=epoch or self.epochs[node_id], seq=seq, ts=1764000000.0)
        self.send_raw_ack(node_id, seal_ack(key(node_id), node_id, ack))

    def send_raw_ack(self, node_id: str, payload: bytes) -> None:
        self.client.publish(events_ack_topic(node_id), payload, qos=1)

    def last_status(self, node_id: str) -> bytes | None:
        """Call from a wait_until predicate (which holds the lock)."""
        return next((p for n, p in reversed(self.status) if n == node_id), None)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Await a condition on what the hub received (woken by each message)."""
        async with asyncio.timeout(timeout):
            while True:
                self._changed.clear()
                with self.lock:
                    if predicate():
                        return
                await self._changed.wait()


@pytest.fixture
async def hub(request: pytest.FixtureRequest) -> AsyncIterator[TestHub]:
    """A test hub on the same broker as the test."""
    broker: Mosquitto = request.getfixturevalue("mosquitto")
    h = TestHub(broker.url, asyncio.get_running_loop())
    h.start()
    yield h
    h.stop()


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    box = Outbox(tmp_path / "outbox.db", synchronous="NORMAL")
    yield box
    box.close()


@pytest.fixture
async def make_uplink(outbox: Outbox) -> AsyncIterator[Callable[..., Uplink]]:
    made: list[Uplink] = []

    def make(brokers: list[str], *, node_id: str = "n1", batch_size: int = 200, **kw: object) -> Uplink:
        opts = {**FAST, **kw}
        up = Uplink(node_id, MqttSection(brokers=brokers, batch_size=batch_size), outbox,
                    key(node_id),
                    zone="hall-a", version="1.2.3", **opts)  # type: ignore[arg-type]
        made.append(up)
        return up

    yield make
    for up in made:
        await up.stop()


async def test_events_reach_the_hub_and_are_deleted_after_its_ack(
        mosquitto: Mosquitto, hub: TestHub, outbox: Outbox, make_uplink) -> None:
    outbox.add_many([("tap", {"i": i}) for i in range(5)])
    up = make_uplink([mosquitto.url])
    await up.start()
    await up.wait_drained(timeout=10)
    assert hub.stored["n1"] == {1, 2, 3, 4, 5}
    assert outbox.depth() == 0


async def test_events_added_while_running_are_sent_after_notify(
        mosquitto: Mosquitto, hub: TestHub, outbox: Outbox, make_uplink) -> None:
    up = make_uplink([mosquitto.url])
    await up.start()
    await up.wait_connected(5)
    outbox.add("tap", {"x": 1})
    up.notify()
    await up.wait_drained(timeout=5)
    assert hub.stored["n1"] == {1}


async def test_without_ack_nothing_is_deleted_and_events_are_resent(
        mosquitto: Mosquitto, hub: TestHub, outbox: Outbox, make_uplink) -> None:
    hub.ack = False
    outbox.add_many([("tap", None)] * 3)
    up = make_uplink([mosquitto.url], ack_timeout=0.2)
    await up.start()
    await hub.wait_until(lambda: all(hub.deliveries[("n1", s)] >= 2 for s in (1, 2, 3)))
    assert outbox.depth() == 3
    assert up.resends >= 1
    hub.ack = True  # the hub comes back: the next re-send is acked and the outbox drains
    await up.wait_drained(timeout=10)
    assert outbox.depth() == 0


async def test_a_forged_ack_deletes_nothing(
        mosquitto: Mosquitto, hub: TestHub, outbox: Outbox, make_uplink) -> None:
    """Anyone on the broker may publish on a node's ack topic (the demo's broker is
    anonymous): only an ack tagged with the node's stream key deletes events."""
    hub.ack = False
    outbox.add_many([("tap", None)] * 3)
    up = make_uplink([mosquitto.url], ack_timeout=30)
    await up.start()
    await hub.wait_until(lambda: hub.stored["n1"] == {1, 2, 3})
    forged = EventAck(epoch=hub.epochs["n1"], seq=3, ts=1764000000.0)
    hub.send_raw_ack("n1", encode(forged))  # untagged
    hub.send_raw_ack("n1", seal_ack(key("n2"), "n1", forged))  # another node's key
    hub.send_raw_ack("n1", seal_ack(bytes(32), "n1", forged))  # a guessed key
    hub.send_ack("n1", 1)  # QoS1 from one publisher: arrives after the forged ones
    await up.wait_drained(timeout=5, upto=1)
    assert [e.seq for e in outbox.pending(10)] == [2, 3]
    assert up.forged_acks == 3


async def test_malformed_or_impossible_acks_are_logged_and_delete_nothing(
        mosquitto: Mosquitto, hub: TestHub, outbox: Outbox, make_uplink,
        caplog: pytest.LogCaptureFixture) -> None:
    hub.ack = False
    outbox.add_many([("tap", None)] * 2)
    up = make_uplink([mosquitto.url], ack_timeout=30)
    await up.start()
    await hub.wait_until(lambda: hub.stored["n1"] == {1, 2})
    with caplog.at_level(logging.WARNING, logger="node.uplink"):
        for bad in (b"not json", b'{"seq": "1"}', b"{}", b'{"seq": 1, "extra": 2}'):
            hub.send_raw_ack("n1", bad)
        hub.send_ack("n1", 999)  # beyond any seq this node assigned
        hub.send_ack("n1", 2, epoch="another")  # another outbox's epoch
        hub.send_ack("n1", 1)  # QoS1 from one publisher: arrives after the bad ones
        await up.wait_drained(timeout=5, upto=1)
    assert [e.seq for e in outbox.pending(10)] == [2]
    assert up.connected
    assert (up.forged_acks, up.refused_acks) == (4, 2)
    forged_lines = [r for r in caplog.records if "not from the hub" in r.getMessage()]
    assert len(forged_lines) == 1  # rate-limited: one line, the counter has the rest
    assert any("hub acked seq 999" in r.getMessage() for r in caplog.records)
    assert any("epoch another" in r.getMessage() for r in caplog.records)


async def test_a_wiped_data_dir_is_a_new_epoch_and_acks_of_the_old_one_delete_nothing(
        mosquitto: Mosquitto, hub: TestHub, tmp_path: Path) -> None:
    mqtt = MqttSection(brokers=[mosquitto.url])
    with Outbox(tmp_path / "old.db") as old:
        old.add("tap")
        old_epoch = old.epoch
    (tmp_path / "old.db").unlink()  # the SD card is replaced: same path, new file
    with Outbox(tmp_path / "old.db") as new:
        assert new.epoch != old_epoch
        new.add_many([("tap", None)] * 2)
        hub.ack = False
        up = Uplink("n5", mqtt, new, key("n5"), ack_timeout=30, **{
            k: v for k, v in FAST.items() if k != "ack_timeout"})
        await up.start()
        await hub.wait_until(lambda: hub.stored["n5"] == {1, 2})
        assert hub.epochs["n5"] == new.epoch  # batches carry the new epoch
        hub.send_ack("n5", 2, epoch=old_epoch)  # an ack the old outbox was owed
        hub.send_ack("n5", 1)  # QoS1 from one publisher: arrives after it
        await up.wait_drained(timeout=5, upto=1)
        await up.stop()
        assert [e.seq for e in new.pending(10)] == [2]
        assert up.refused_acks == 1


async def test_broker_restart_mid_stream_loses_nothing_and_the_outbox_drains(
        mosquitto: Mosquitto, hub: TestHub, outbox: Outbox, make_uplink) -> None:
    hub.ack = False  # hold acks so the restart surely falls mid-stream
    outbox.add_many([("tap", {"i": i}) for i in range(2000)])
    up = make_uplink([mosquitto.url], batch_size=100, window=4)
    await up.start()
    await hub.wait_until(lambda: len(hub.stored["n1"]) >= 400)  # one window in flight
    await asyncio.to_thread(mosquitto.stop)
    outbox.add_many([("delivery", {"i": i}) for i in range(500)])  # offline-first
    up.notify()
    await asyncio.to_thread(mosquitto.start)
    hub.ack = True
    await up.wait_drained(timeout=30)
    assert hub.stored["n1"] == set(range(1, 2501))
    assert up.connections >= 2


async def test_unacked_events_are_resent_after_a_reconnect(
        mosquitto: Mosquitto, hub: TestHub, outbox: Outbox, make_uplink) -> None:
    hub.ack = False
    outbox.add_many([("tap", None)] * 3)
    up = make_uplink([mosquitto.url], ack_timeout=60)  # only the reconnect can re-send
    await up.start()
    await hub.wait_until(lambda: hub.stored["n1"] == {1, 2, 3})
    await asyncio.to_thread(mosquitto.restart)
    await hub.wait_until(lambda: all(hub.deliveries[("n1", s)] >= 2 for s in (1, 2, 3)))
    assert up.resends == 0 and up.connections == 2
    assert outbox.depth() == 3


async def test_a_restarted_node_resends_unacked_events_and_the_hub_stores_each_once(
        mosquitto: Mosquitto, hub: TestHub, tmp_path: Path) -> None:
    path = tmp_path / "restart.db"
    mqtt = MqttSection(brokers=[mosquitto.url])
    hub.ack = False
    with Outbox(path) as box:
        box.add_many([("tap", None)] * 3)
        up = Uplink("n2", mqtt, box, key("n2"), **FAST)
        await up.start()
        await hub.wait_until(lambda: hub.stored["n2"] == {1, 2, 3})
        await up.stop()
    hub.ack = True
    with Outbox(path) as box:
        assert box.add("tap").seq == 4
        up = Uplink("n2", mqtt, box, key("n2"), **FAST)
        await up.start()
        await up.wait_drained(timeout=10)
        await up.stop()
    assert hub.stored["n2"] == {1, 2, 3, 4}
    assert hub.deliveries[("n2", 1)] >= 2  # re-sent, stored once


async def test_status_is_online_while_connected_and_offline_after_a_clean_stop(
        mosquitto: Mosquitto, hub: TestHub, make_uplink) -> None:
    up = make_uplink([mosquitto.url])
    await up.start()
    await hub.wait_until(lambda: hub.last_status("n1") == b"online")
    await up.stop()
    await hub.wait_until(lambda: hub.last_status("n1") == b"offline")
    assert not up.connected


async def test_the_will_publishes_offline_when_the_node_dies_uncleanly(
        mosquitto: Mosquitto, hub: TestHub, tmp_path: Path) -> None:
    script = (
        "import asyncio, sys\n"
        "from node.outbox import Outbox\n"
        "from node.uplink import Uplink\n"
        "from node.config import MqttSection\n"
        "async def main():\n"
        "    up = Uplink('doomed', MqttSection(brokers=[sys.argv[1]]), Outbox(sys.argv[2]), bytes(32))\n"
        "    await up.start()\n"
        "    await up.wait_connected(10)\n"
        "    print('connected', flush=True)\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, mosquitto.url, str(tmp_path / "doomed.db"),
        cwd=REPO, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert line == b"connected\n"
        await hub.wait_until(lambda: hub.last_status("doomed") == b"online")
    finally:
        proc.kill()  # SIGKILL: no DISCONNECT packet, the socket just closes
        await proc.wait()
    await hub.wait_until(lambda: hub.last_status("doomed") == b"offline")


async def test_the_next_broker_url_is_used_when_the_first_is_down(
        mosquitto: Mosquitto, hub: TestHub, outbox: Outbox, make_uplink) -> None:
    dead = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens here
    outbox.add("tap")
    up = make_uplink([dead, mosquitto.url])
    await up.start()
    await up.wait_drained(timeout=10)
    assert up.broker == mosquitto.url
    assert hub.stored["n1"] == {1}


async def test_heartbeat_publishes_retained_state_periodically(
        mosquitto: Mosquitto, hub: TestHub, outbox: Outbox, make_uplink) -> None:
    hub.ack = False
    outbox.add_many([("tap", None)] * 2)
    up = make_uplink([mosquitto.url], heartbeat_interval=0.1)
    await up.start()
    await hub.wait_until(lambda: len(hub.states) >= 2, timeout=5)
    state = hub.states[-1]
    assert (state.node_id, state.zone, state.version, state.outbox_depth) == (
        "n1", "hall-a", "1.2.3", 2)


async def test_state_provider_supplies_the_heartbeat(
        mosquitto: Mosquitto, hub: TestHub, outbox: Outbox) -> None:
    def provider() -> NodeState:
        return NodeState(node_id="n3", ts=1.0, version="9", zone="z", uptime=5.0,
                         outbox_depth=0, taps=7)
    up = Uplink("n3", MqttSection(brokers=[mosquitto.url]), outbox, key("n3"),
                state_provider=provider, **FAST)
    await up.start()
    try:
        await hub.wait_until(lambda: any(s.node_id == "n3" for s in hub.states))
    finally:
        await up.stop()
    assert [s.taps for s in hub.states if s.node_id == "n3"][0] == 7


def test_bad_configuration_is_refused_before_connecting(outbox: Outbox) -> None:
    with pytest.raises(ValueError, match="must look like mqtt://host:port"):
        Uplink("n1", MqttSection(brokers=["http://x"]), outbox, key("n1"))
    with pytest.raises(ValueError, match="mqtt.brokers is empty"):
        Uplink("n1", MqttSection(brokers=[]), outbox, key("n1"))
    with pytest.raises(ValueError, match="invalid node id"):
        Uplink("n/1", MqttSection(), outbox, key("n1"))
    with pytest.raises(ValueError, match="window must be >= 1"):
        Uplink("n1", MqttSection(), outbox, key("n1"), window=0)
    with pytest.raises(ValueError, match="must be > 0 seconds"):
        Uplink("n1", MqttSection(), outbox, key("n1"), heartbeat_interval=0)
    with pytest.raises(ValueError, match="32-byte stream key"):
        Uplink("n1", MqttSection(), outbox, b"short")


@pytest.mark.parametrize("name, decode", [
    ("batch", lambda p: decode_batch(p, "hall-a-01")),
    ("ack", decode_ack),
    ("state", decode_state),
])
def test_documented_examples_decode(name: str, decode: Callable[[bytes], object]) -> None:
    """docs/mqtt.md's JSON examples are real payloads, not approximations."""
    doc = (REPO / "docs" / "mqtt.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- example: {name} -->\n```json\n(.*?)\n```", doc, re.S)
    assert match, f"docs/mqtt.md has no example marked {name!r}"
    payload = match.group(1).encode()
    assert encode(decode(payload)) == payload  # type: ignore[arg-type]


async def test_a_failing_state_provider_is_logged_and_events_still_flow(
        mosquitto: Mosquitto, hub: TestHub, outbox: Outbox,
        caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> NodeState:
        raise RuntimeError("sensor gone")
    outbox.add("tap")
    up = Uplink("n4", MqttSection(brokers=[mosquitto.url]), outbox, key("n4"),
                state_provider=broken, **FAST)
    await up.start()
    try:
        await up.wait_drained(timeout=5)
    finally:
        await up.stop()
    assert hub.stored["n4"] == {1}
    assert any("state_provider failed" in r.getMessage() for r in caplog.records)


async def test_only_authentic_acks_give_the_node_the_hubs_time(
        mosquitto: Mosquitto, hub: TestHub, outbox: Outbox, make_uplink) -> None:
    seen: list[float] = []
    hub.ack = False
    outbox.add_many([("tap", None)] * 2)
    up = make_uplink([mosquitto.url], ack_timeout=30, on_hub_time=seen.append)
    await up.start()
    await hub.wait_until(lambda: hub.stored["n1"] == {1, 2})
    forged = EventAck(epoch=hub.epochs["n1"], seq=1, ts=2e9)
    hub.send_raw_ack("n1", seal_ack(bytes(32), "n1", forged))
    hub.send_ack("n1", 2)
    await up.wait_drained(timeout=5)
    assert seen == [1764000000.0]
