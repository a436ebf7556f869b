"""MQTT over TLS (``mqtts://``): broker URLs, and node and hub clients against a real
Mosquitto TLS listener whose throwaway CA and certificates are made in the test."""
from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from hall.testing.mosquitto import BrokerTls, Mosquitto, TestCa
from hub.config import HubConfig
from hub.db import HubDB
from hub.migrate import upgrade
from hub.ingest import Ingest
from node.config import MqttSection
from node.outbox import Outbox
from node.uplink import Uplink
from tapcast.config import load
from tapcast.mqttclient import (
    BrokerUrl,
    TlsFiles,
    configure_tls,
    describe_tls_error,
    make_client,
    parse_broker_url,
    tls_context,
)
from tapcast.protocol.mqtt import (
    PREFIX,
    BATCH_CONTEXT,
    EventAck,
    decode_batch,
    open_sealed,
    seal_ack,
    stream_key,
    events_ack_topic,
    parse_node_topic,
)

SECRET = bytes(range(32))  # the stream secret of every hub in this file


def key(node_id: str) -> bytes:
    return stream_key(SECRET, node_id)


def secret_file(tmp_path: Path) -> str:
    path = tmp_path / "stream.secret"
    if not path.exists():
        path.write_text(SECRET.hex() + "\n")
    return str(path)

TIMEOUT = 10.0
FAST = {"ack_timeout": 2.0, "backoff_min": 0.05, "backoff_max": 0.2, "connect_timeout": 3.0}


# ------------------------------------------------------------------ broker URLs


def test_mqtt_url_defaults_to_port_1883_without_tls() -> None:
    assert parse_broker_url("mqtt://hub.example") == BrokerUrl("hub.example", 1883, tls=False)


def test_mqtts_url_defaults_to_port_8883_with_tls() -> None:
    assert parse_broker_url("mqtts://hub.example") == BrokerUrl("hub.example", 8883, tls=True)


def test_mqtts_url_keeps_an_explicit_port_and_credentials() -> None:
    url = parse_broker_url("mqtts://hall-a-1:s%40cret@10.0.0.2:9883")
    assert (url.host, url.port, url.username, url.password, url.tls) == (
        "10.0.0.2", 9883, "hall-a-1", "s@cret", True)


def test_broker_url_prints_its_scheme_but_never_its_password() -> None:
    assert str(parse_broker_url("mqtts://u:secret@hub.example")) == "mqtts://hub.example:8883"
    assert str(parse_broker_url("mqtt://[::1]:1884")) == "mqtt://[::1]:1884"


@pytest.mark.parametrize("url", ["http://hub.example:1883", "tcp://hub.example",
                                 "ssl://hub.example:8883", "hub.example:1883"])
def test_other_schemes_are_refused_naming_the_url_and_the_expected_schemes(url: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_broker_url(url)
    assert repr(url) in str(exc.value)
    assert "mqtt://" in str(exc.value) and "mqtts://" in str(exc.value)


def test_a_refused_url_does_not_echo_its_password() -> None:
    with pytest.raises(ValueError) as exc:
        parse_broker_url("https://hub:topsecret@hub.example")
    assert "topsecret" not in str(exc.value) and "hub:***@hub.example" in str(exc.value)


@pytest.mark.parametrize("url, reason", [("mqtts://", "no host"),
                                         ("mqtts://hub.example:port", "bad port")])
def test_url_without_host_or_with_bad_port_is_refused(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_broker_url(url)


# ---------------------------------------------------------------- TLS set-up


@pytest.fixture
def ca(tmp_path: Path) -> TestCa:
    return TestCa(tmp_path / "pki")


def test_tls_context_verifies_the_broker_chain_and_host_name(ca: TestCa) -> None:
    context = tls_context(TlsFiles(ca_file=str(ca.cert_file)))
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_tls_files_are_not_read_for_a_plain_mqtt_broker(outbox: Outbox) -> None:
    mqtt = MqttSection(brokers=["mqtt://127.0.0.1"], ca_file="/nonexistent/ca.crt")
    Uplink("n1", mqtt, outbox, key("n1"))  # no error: ca_file applies to mqtts:// brokers only


def test_missing_ca_file_fails_when_the_uplink_is_made(tmp_path: Path, outbox: Outbox) -> None:
    mqtt = MqttSection(brokers=["mqtts://hub.example"], ca_file="missing-ca.crt")
    with pytest.raises(ValueError, match=r"\[mqtt\] ca_file '.*missing-ca\.crt'"):
        Uplink("n1", mqtt, outbox, key("n1"), base_dir=tmp_path)


def test_relative_tls_files_are_taken_from_the_config_folder(
        ca: TestCa, outbox: Outbox) -> None:
    mqtt = MqttSection(brokers=["mqtts://hub.example"], ca_file=ca.cert_file.name)
    up = Uplink("n1", mqtt, outbox, key("n1"), base_dir=ca.directory)
    assert up.tls.ca_file == str(ca.cert_file)


def test_hub_ingest_with_a_missing_ca_file_fails_when_made(tmp_path: Path) -> None:
    config = load(HubConfig, environ={}, data={
        "hub": {"database": str(tmp_path / "hub.db"), "stream_secret": secret_file(tmp_path)},
        "mqtt": {"broker": "mqtts://hub.example", "ca_file": str(tmp_path / "no-ca.crt")}})
    upgrade(config.hub.database, echo=print)
    db = HubDB(config.hub.database)
    try:
        with pytest.raises(ValueError, match=r"\[mqtt\] ca_file '.*no-ca\.crt'"):
            Ingest(config, db)
    finally:
        db.close()


def test_client_key_without_its_certificate_is_refused(ca: TestCa) -> None:
    _, key = ca.issue("hall-a-1", client=True)
    with pytest.raises(ValueError, match="cert_file is not"):
        tls_context(TlsFiles(str(ca.cert_file), key_file=str(key)))


def test_encrypted_client_key_is_refused_instead_of_prompting(ca: TestCa) -> None:
    from cryptography.hazmat.primitives import serialization

    cert, key = ca.issue("hall-a-1", client=True)
    plain = serialization.load_pem_private_key(key.read_bytes(), None)
    key.write_bytes(plain.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.BestAvailableEncryption(b"pw")))
    with pytest.raises(ValueError, match="encrypted"):
        tls_context(TlsFiles(str(ca.cert_file), str(cert), str(key)))


# ------------------------------------------------ against a Mosquitto TLS listener


@pytest.fixture
def tls_broker(tmp_path: Path, ca: TestCa) -> Iterator[Mosquitto]:
    """Mosquitto with one TLS-only listener, certificate for 127.0.0.1 and localhost."""
    broker = Mosquitto(tmp_path / "mosquitto", tls=ca.broker_tls())
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.db", synchronous="NORMAL")
    yield box
    box.close()


class AckingSubscriber:
    """A paho client over TLS standing in for the hub: collects event seqs per node and
    acks each batch's last seq, so the uplink's outbox drains."""

    def __init__(self, broker: BrokerUrl, tls: TlsFiles, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.seqs: dict[str, list[int]] = {}
        self.changed = asyncio.Event()
        self._subscribed = threading.Event()
        self.client = make_client("tls-test-hub")
        configure_tls(self.client, broker, tls)
        self.client.on_connect = lambda c, *a: c.subscribe(f"{PREFIX}/node/+/events", qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(TIMEOUT), "subscriber: no SUBACK over TLS"

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        node_id, _ = parse_node_topic(msg.topic)
        batch = decode_batch(open_sealed(key(node_id), BATCH_CONTEXT, msg.topic, msg.payload),
                             node_id)
        self.seqs.setdefault(node_id, []).extend(e.seq for e in batch.events)
        ack = EventAck(epoch=batch.epoch, seq=batch.events[-1].seq, ts=1764000000.0)
        client.publish(events_ack_topic(node_id), seal_ack(key(node_id), node_id, ack), qos=1)
        self.loop.call_soon_threadsafe(self.changed.set)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
async def subscriber(tls_broker: Mosquitto, ca: TestCa) -> AsyncIterator[AckingSubscriber]:
    sub = AckingSubscriber(parse_broker_url(tls_broker.url), TlsFiles(str(ca.cert_file)),
                           asyncio.get_running_loop())
    yield sub
    sub.close()


@pytest.fixture
async def make_uplink(outbox: Outbox) -> AsyncIterator[Callable[..., Uplink]]:
    made: list[Uplink] = []

    def make(mqtt: MqttSection, **kw: object) -> Uplink:
        up = Uplink("hall-a-1", mqtt, outbox, key("hall-a-1"), **{**FAST, **kw})  # type: ignore[arg-type]
        made.append(up)
        return up

    yield make
    for up in made:
        await up.stop()


class LogWaiter(logging.Handler):
    """Wakes an awaiting test when a log record containing ``text`` is emitted."""

    def __init__(self, text: str, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.WARNING)
        self.text, self.loop = text, loop
        self.found = asyncio.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self.text in message:
            self.messages.append(message)
            self.loop.call_soon_threadsafe(self.found.set)


@pytest.fixture
async def log_waiter() -> AsyncIterator[Callable[[str], LogWaiter]]:
    handlers: list[LogWaiter] = []
    logger = logging.getLogger("node.uplink")

    def watch(text: str) -> LogWaiter:
        handler = LogWaiter(text, asyncio.get_running_loop())
        logger.addHandler(handler)
        handlers.append(handler)
        return handler

    yield watch
    for handler in handlers:
        logger.removeHandler(handler)


@pytest.mark.slow
async def test_node_uplink_delivers_events_over_mqtts(
        tls_broker: Mosquitto, ca: TestCa, subscriber: AckingSubscriber, outbox: Outbox,
        make_uplink: Callable[..., Uplink]) -> None:
    outbox.add_many([("tap", {"i": i}) for i in range(5)])
    up = make_uplink(MqttSection(brokers=[tls_broker.url], ca_file=str(ca.cert_file)))
    await up.start()
    await up.wait_drained(timeout=TIMEOUT)
    assert tls_broker.url.startswith("mqtts://")
    assert subscriber.seqs["hall-a-1"] == [1, 2, 3, 4, 5]
    assert outbox.depth() == 0


@pytest.mark.slow
async def test_node_with_another_ca_refuses_the_broker_with_a_clear_error(
        tls_broker: Mosquitto, tmp_path: Path, outbox: Outbox,
        make_uplink: Callable[..., Uplink], log_waiter: Callable[[str], LogWaiter]) -> None:
    stranger = TestCa(tmp_path / "other-pki", "Some other CA")
    outbox.add("tap")
    refused = log_waiter("not trusted")
    up = make_uplink(MqttSection(brokers=[tls_broker.url], ca_file=str(stranger.cert_file)))
    await up.start()
    await asyncio.wait_for(refused.found.wait(), TIMEOUT)
    message = refused.messages[0]
    assert tls_broker.url in message
    assert str(stranger.cert_file) in message and "[mqtt] ca_file" in message
    assert up.connections == 0 and outbox.depth() == 1


@pytest.mark.slow
def test_client_refuses_a_broker_certificate_for_another_host(
        tmp_path: Path, ca: TestCa) -> None:
    cert, key = ca.issue("elsewhere", hosts=["broker.example"])
    with Mosquitto(tmp_path / "mosquitto", tls=BrokerTls(cert, key)) as broker:
        url = parse_broker_url(broker.url)
        files = TlsFiles(str(ca.cert_file))
        client = make_client("hostname-check")
        configure_tls(client, url, files)
        with pytest.raises(ssl.SSLCertVerificationError) as exc:
            client.connect(url.host, url.port)
    assert "not valid for '127.0.0.1'" in describe_tls_error(exc.value, url, files)


@pytest.mark.slow
async def test_broker_requiring_client_certificates_accepts_the_configured_one(
        tmp_path: Path, ca: TestCa, outbox: Outbox, make_uplink: Callable[..., Uplink],
        log_waiter: Callable[[str], LogWaiter]) -> None:
    cert, key = ca.issue("hall-a-1", client=True)
    with Mosquitto(tmp_path / "mosquitto",
                   tls=ca.broker_tls(require_certificate=True)) as broker:
        without = make_uplink(MqttSection(brokers=[broker.url], ca_file=str(ca.cert_file)))
        refused = log_waiter("set [mqtt] cert_file and key_file")
        await without.start()
        await asyncio.wait_for(refused.found.wait(), TIMEOUT)
        await without.stop()
        with_cert = make_uplink(MqttSection(brokers=[broker.url], ca_file=str(ca.cert_file),
                                            cert_file=str(cert), key_file=str(key)))
        await with_cert.start()
        await with_cert.wait_connected(TIMEOUT)
        await with_cert.stop()
    assert without.connections == 0


@pytest.mark.slow
async def test_hub_ingest_stores_node_events_over_mqtts(
        tls_broker: Mosquitto, ca: TestCa, tmp_path: Path, outbox: Outbox,
        make_uplink: Callable[..., Uplink]) -> None:
    config = load(HubConfig, environ={}, data={
        "hub": {"database": str(tmp_path / "hub.db"), "stream_secret": secret_file(tmp_path)},
        "mqtt": {"broker": tls_broker.url, "ca_file": str(ca.cert_file)}})
    upgrade(config.hub.database, echo=print)
    db = HubDB(config.hub.database)
    ingest = Ingest(config, db)
    try:
        ingest.start(wait=TIMEOUT)
        outbox.add_many([("tap", None)] * 3)
        up = make_uplink(MqttSection(brokers=[tls_broker.url], ca_file=str(ca.cert_file)))
        await up.start()
        await up.wait_drained(timeout=TIMEOUT)  # drained = the hub acked = stored
        assert db.count_events() == 3
    finally:
        ingest.stop()
        db.close()
