"""The shipped broker config (firmware_config/mosquitto.conf + mosquitto-acl.conf) on a
real Mosquitto: passwords, the per-node ACL, client ids bound to user names, and the
TLS listener. The files are used as shipped; only /etc/mosquitto/... paths and the two
ports are rewritten into the test's folder."""
from __future__ import annotations

import asyncio
import queue
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hall.testing.mosquitto import Mosquitto, TestCa, free_port
from hub.config import HubConfig
from hub.db import HubDB
from hub.migrate import upgrade
from hub.ingest import Ingest
from node.config import MqttSection
from node.outbox import Outbox
from node.uplink import Uplink
from tapcast.config import load
from tapcast.mqttclient import TlsFiles, configure_tls, make_client, parse_broker_url
from tapcast.protocol.mqtt import (
    EventBatch,
    events_ack_topic,
    events_topic,
    state_topic,
    status_topic,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FIRMWARE = REPO / "firmware_config"
TIMEOUT = 10.0
HUB_USER = "tapcast-hub"
PASSWORDS = {HUB_USER: "hub-pw", "hall-a-1": "pw-a", "hall-b-2": "pw-b"}


def _mosquitto_passwd() -> str:
    found = shutil.which("mosquitto_passwd") or next(
        (p for p in ("/usr/bin/mosquitto_passwd", "/usr/sbin/mosquitto_passwd")
         if Path(p).exists()), None)
    if found is None:
        pytest.fail("mosquitto_passwd is missing: it comes with Debian's mosquitto package "
                    "(`make system-deps`)")
    return found


@dataclass
class ShippedBroker:
    broker: Mosquitto
    ca: TestCa
    tls_url: str  # the 8883 listener, for nodes
    plain_url: str  # the loopback 1883 listener, for a hub on the same box


@pytest.fixture
def shipped(tmp_path: Path) -> Iterator[ShippedBroker]:
    etc = tmp_path / "etc-mosquitto"
    (etc / "certs").mkdir(parents=True)
    ca = TestCa(tmp_path / "pki")
    cert, key = ca.issue("broker", hosts=["127.0.0.1", "localhost"])
    shutil.copy(cert, etc / "certs" / "broker.crt")
    shutil.copy(key, etc / "certs" / "broker.key")
    shutil.copy(FIRMWARE / "mosquitto-acl.conf", etc / "tapcast-acl.conf")
    passwd = etc / "tapcast.passwd"
    for n, (user, password) in enumerate(PASSWORDS.items()):
        create = ["-c"] if n == 0 else []
        subprocess.run([_mosquitto_passwd(), "-b", *create, str(passwd), user, password],
                       check=True, capture_output=True)
    tls_port, plain_port = free_port(), free_port()
    conf = (FIRMWARE / "mosquitto.conf").read_text()
    conf = conf.replace("/etc/mosquitto/", f"{etc}/")
    conf, n_tls = re.subn(r"(?m)^listener 8883$", f"listener {tls_port} 127.0.0.1", conf)
    conf, n_plain = re.subn(r"(?m)^listener 1883 127\.0\.0\.1$",
                            f"listener {plain_port} 127.0.0.1", conf)
    assert (n_tls, n_plain) == (1, 1), "the shipped conf no longer has the two listeners"
    broker = Mosquitto.from_conf(tmp_path / "mosquitto", conf, [tls_port, plain_port], tls=True)
    broker.start()
    yield ShippedBroker(broker, ca, f"mqtts://127.0.0.1:{tls_port}",
                        f"mqtt://127.0.0.1:{plain_port}")
    broker.stop()


class Peer:
    """A paho client logged in as one user; records CONNACK, messages and drops."""

    def __init__(self, shipped: ShippedBroker, user: str | None, password: str | None = None,
                 *, client_id: str | None = None, tls: bool = True) -> None:
        self.url = parse_broker_url(shipped.tls_url if tls else shipped.plain_url)
        self.connack: queue.Queue[Any] = queue.Queue()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.disconnected = False
        self.client = make_client(client_id or user or "anonymous", username=user,
                                  password=password if password is not None
                                  else PASSWORDS.get(user or ""))
        configure_tls(self.client, self.url, TlsFiles(str(shipped.ca.cert_file)))
        self.client.on_connect = lambda c, u, f, rc, p: self.connack.put(rc)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.client.on_disconnect = self._on_disconnect
        self.client.connect(self.url.host, self.url.port)
        self.client.loop_start()

    def _on_disconnect(self, *args: object) -> None:
        self.disconnected = True

    def accepted(self) -> bool:
        return not self.connack.get(timeout=TIMEOUT).is_failure

    def subscribe(self, *topics: str) -> list[Any]:
        granted: queue.Queue[list[Any]] = queue.Queue()
        self.client.on_subscribe = lambda c, u, mid, codes, p: granted.put(codes)
        self.client.subscribe([(t, 1) for t in topics])
        return granted.get(timeout=TIMEOUT)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(TIMEOUT)

    def next_message(self) -> tuple[str, bytes]:
        return self.messages.get(timeout=TIMEOUT)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def peers(shipped: ShippedBroker) -> Iterator[Any]:
    made: list[Peer] = []

    def connect(user: str | None, password: str | None = None, **kw: Any) -> Peer:
        peer = Peer(shipped, user, password, **kw)
        made.append(peer)
        return peer

    yield connect
    for peer in made:
        peer.close()


SECRET = bytes(range(32))  # the stream secret of the hub in this file


def _batch(node_id: str, seq: int) -> bytes:
    from tapcast.protocol.mqtt import Event, seal_batch, stream_key

    return seal_batch(stream_key(SECRET, node_id), EventBatch(
        node_id=node_id, epoch="e1", low=seq, first=seq, last=seq,
        events=[Event(id=f"{seq:032x}", seq=seq, kind="tap", ts=1_700_000_000.0)]))


def test_node_user_publishes_its_own_events_to_the_hub(peers: Any) -> None:
    hub = peers(HUB_USER, tls=False)
    assert hub.accepted()
    hub.subscribe("tapcast/v1/node/+/events")
    node = peers("hall-a-1")
    assert node.accepted()
    node.publish(events_topic("hall-a-1"), _batch("hall-a-1", 1))
    assert hub.next_message() == (events_topic("hall-a-1"), _batch("hall-a-1", 1))


def test_events_published_under_another_nodes_id_never_reach_the_hub(peers: Any) -> None:
    hub = peers(HUB_USER, tls=False)
    assert hub.accepted()
    hub.subscribe("tapcast/v1/node/+/events")
    node = peers("hall-a-1")
    assert node.accepted()
    node.publish(events_topic("hall-b-2"), _batch("hall-b-2", 1))  # PUBACKed, dropped
    node.publish(events_topic("hall-a-1"), _batch("hall-a-1", 7))  # the marker after it
    # A client's messages reach a subscriber in order: the forged batch would be first.
    assert hub.next_message() == (events_topic("hall-a-1"), _batch("hall-a-1", 7))


@pytest.mark.parametrize("tls", [True, False], ids=["tls-listener", "loopback-listener"])
def test_anonymous_connect_is_refused(peers: Any, tls: bool) -> None:
    assert not peers(None, tls=tls).accepted()


def test_wrong_password_is_refused(peers: Any) -> None:
    assert not peers("hall-a-1", "pw-b").accepted()


def test_hub_user_reads_every_node_topic(peers: Any) -> None:
    hub = peers(HUB_USER, tls=False)
    assert hub.accepted()
    hub.subscribe("tapcast/v1/node/#")
    published = []
    for node_id in ("hall-a-1", "hall-b-2"):
        node = peers(node_id)
        assert node.accepted()
        for topic, payload in [(status_topic(node_id), b"online"),
                               (state_topic(node_id), b"{}"),
                               (events_topic(node_id), _batch(node_id, 1)),
                               (f"tapcast/v1/node/{node_id}/cmd/result", b"{}")]:
            node.publish(topic, payload)
            published.append((topic, payload))
    assert [hub.next_message() for _ in published] == published


def test_a_node_reads_neither_other_nodes_events_nor_their_acks(peers: Any) -> None:
    hub = peers(HUB_USER, tls=False)
    assert hub.accepted()
    hub.subscribe("tapcast/v1/node/+/events")
    spy = peers("hall-b-2")
    assert spy.accepted()
    spy.subscribe("tapcast/v1/#")
    node = peers("hall-a-1")
    assert node.accepted()
    node.publish(events_topic("hall-a-1"), _batch("hall-a-1", 1))
    hub.next_message()  # the broker has routed it (or not) to every subscriber by now
    hub.publish(events_ack_topic("hall-a-1"), b'{"seq":1}')
    hub.publish(events_ack_topic("hall-b-2"), b'{"seq":0}')  # the marker spy may read
    assert spy.next_message() == (events_ack_topic("hall-b-2"), b'{"seq":0}')


@pytest.mark.parametrize("tls", [True, False], ids=["tls-listener", "loopback-listener"])
def test_a_node_cannot_take_over_another_nodes_session_by_client_id(
        peers: Any, tls: bool) -> None:
    genuine = peers("hall-b-2")
    assert genuine.accepted()
    impostor = peers("hall-a-1", client_id="hall-b-2", tls=tls)
    assert impostor.accepted()  # connected, but as client id "hall-a-1" (its user name)
    genuine.publish(status_topic("hall-b-2"), b"online")  # PUBACKed: still connected
    assert not genuine.disconnected


def test_a_node_cannot_pose_as_the_hub_session(peers: Any) -> None:
    hub = peers(HUB_USER, tls=False)
    assert hub.accepted()
    impostor = peers("hall-a-1", client_id=HUB_USER)
    assert impostor.accepted()
    hub.publish(events_ack_topic("hall-a-1"), b'{"seq":0}')
    assert not hub.disconnected


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.db", synchronous="NORMAL")
    yield box
    box.close()


@pytest.fixture
async def ingest(shipped: ShippedBroker, tmp_path: Path) -> AsyncIterator[tuple[Ingest, HubDB]]:
    (tmp_path / "stream.secret").write_text(SECRET.hex() + "\n")
    config = load(HubConfig, environ={}, data={
        "hub": {"database": str(tmp_path / "hub.db"),
                "stream_secret": str(tmp_path / "stream.secret")},
        "mqtt": {"broker": shipped.plain_url, "username": HUB_USER,
                 "password": PASSWORDS[HUB_USER]}})
    upgrade(config.hub.database, echo=print)
    db = HubDB(config.hub.database)
    running = Ingest(config, db)
    await asyncio.to_thread(running.start, TIMEOUT)
    yield running, db
    running.stop()
    db.close()


async def test_node_uplink_and_hub_ingest_work_through_the_shipped_acl(
        shipped: ShippedBroker, ingest: tuple[Ingest, HubDB], outbox: Outbox) -> None:
    _, db = ingest
    outbox.add_many([("tap", None)] * 3)
    mqtt = MqttSection(brokers=[shipped.tls_url], username="hall-a-1",
                       password=PASSWORDS["hall-a-1"], ca_file=str(shipped.ca.cert_file))
    from tapcast.protocol.mqtt import stream_key

    up = Uplink("hall-a-1", mqtt, outbox, stream_key(SECRET, "hall-a-1"), backoff_min=0.05,
                backoff_max=0.2)
    await up.start()
    try:
        await up.wait_drained(timeout=TIMEOUT)  # the hub's acks came back through the ACL
    finally:
        await up.stop()
    assert db.count_events() == 3


async def test_the_code_paths_messages_pass_the_shipped_acl_for_their_own_node_only(
        ingest: tuple[Ingest, HubDB], peers: Any) -> None:
    """A node offers a code and reads the relayed answer under its own id; the hub's
    verdict comes back; an offer under another node's id never reaches the hub."""
    from hub.presence import PresenceError, PresenceStore
    from tapcast.protocol.mqtt import (PRESENCE_ANSWER, PRESENCE_OFFER, PRESENCE_RESULT,
                                       presence_topic, stream_key)
    from tapcast.protocol.presence import (Offer, Result, open_answer, seal_code,
                                           seal_offer, seal_result)

    running, db = ingest
    node = peers("hall-a-1")
    assert node.accepted()
    assert not node.subscribe(presence_topic("hall-a-1", PRESENCE_ANSWER))[0].is_failure
    key, other = stream_key(SECRET, "hall-a-1"), stream_key(SECRET, "hall-b-2")

    def offer(node_id: str, k: bytes, offer_id: str, code: str) -> bytes:
        return seal_offer(k, node_id, Offer(offer_id=offer_id, ttl=60.0, hello="0a",
                                            code=seal_code(k, offer_id, code)))

    # hall-a-1 speaking for hall-b-2 (with hall-b-2's key, even): the ACL drops it
    node.publish(presence_topic("hall-b-2", PRESENCE_OFFER),
                 offer("hall-b-2", other, "b" * 32, "22223333"))
    node.publish(presence_topic("hall-a-1", PRESENCE_OFFER),
                 offer("hall-a-1", key, "a" * 32, "11112222"))
    assert await asyncio.to_thread(running.presence.wait_for, lambda c: c.offers >= 1,
                                   TIMEOUT)
    store = PresenceStore(db.engine)
    with pytest.raises(PresenceError, match="no display shows"):
        store.claim("22223333", 1, "h1")
    store.claim("11112222", 1, "h1")
    store.answer("a" * 32, 1, "0102")
    topic, payload = await asyncio.to_thread(node.next_message)
    assert open_answer(key, "hall-a-1", payload).answer == "0102"
    node.publish(presence_topic("hall-a-1", PRESENCE_RESULT), seal_result(
        key, "hall-a-1", Result(offer_id="a" * 32, reason="ok", confirm="ab" * 32)))
    assert await asyncio.to_thread(running.presence.wait_for, lambda c: c.results == 1,
                                   TIMEOUT)
    assert store.get("a" * 32, 1).state == "confirmed"
    assert running.presence.counters.offers == 1
