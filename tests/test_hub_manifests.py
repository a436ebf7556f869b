"""The hub's side of content sync (hub/manifests.py, hub/node_files.py) on SQLite and
PostgreSQL: each known node gets a signed manifest of what is aimed at it, republished
only when it changes or nears expiry; nodes fetch files with requests signed by their
stream key, and anything else is refused and counted."""
from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from flask import Flask

from hub import create_app, get_db
from hub.accounts import Actor
from hub.auth import auth_counts
from hub.config import HubConfig
from hub.content import ContentLibrary, ItemInput, Targets
from hub.content_api import library
from hub.manifests import MANIFEST_LIFETIME, ManifestPublisher, Snapshot
from tapcast.config import load
from tapcast.keys import HubAuthority
from tapcast.protocol.manifest import (FILES_PATH, decode_manifest, file_request_sig,
                                       manifest_topic)
from tapcast.protocol.mqtt import NodeState, stream_key
from tapcast.schedule import Schedule, Window
from tapcast.signed import open_signed
from tapcast.streamkeys import write_stream_secret

PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000"
                    "000d4944415478da63f8cfc0f01f0005000201a5c7d2a10000000049454e44ae426082")
SECRET = bytes(range(32, 64))
CLI = Actor.cli()


@pytest.fixture
def config(hub_database: str, tmp_path: Path) -> HubConfig:
    write_stream_secret(tmp_path, SECRET)
    return load(HubConfig, data={"hub": {"database": hub_database,
                                         "files": str(tmp_path / "files"),
                                         "stream_secret": str(tmp_path / "stream.secret"),
                                         "timezone": "Europe/Berlin",
                                         "public_url": "http://hub.test:8080/"}},
                environ={})


@pytest.fixture
def app(config: HubConfig) -> Iterator[Flask]:
    app = create_app(config)
    yield app
    get_db(app).close()


@pytest.fixture
def lib(app: Flask) -> ContentLibrary:
    return library(app)


class Broker:
    """What the publisher hands over: (topic, payload), or refuses when ``up`` is off."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.up = True

    def publish(self, topic: str, payload: bytes) -> bool:
        if self.up:
            self.sent.append((topic, payload))
        return self.up


AUTHORITY = HubAuthority.from_seed(bytes(range(32)))


@pytest.fixture
def broker() -> Broker:
    return Broker()


@pytest.fixture
def publisher(app: Flask, config: HubConfig, broker: Broker) -> ManifestPublisher:
    return ManifestPublisher(config, get_db(app).engine, AUTHORITY, broker.publish)


def heard(app: Flask, node_id: str, zone: str) -> None:
    now = time.time()
    get_db(app).write_batch([], states=[(node_id, NodeState(
        node_id=node_id, ts=now, version="1", zone=zone, uptime=1.0, outbox_depth=0), now)])


def coupon(lib: ContentLibrary, key: str, **placement: object) -> dict:
    png = lib.store_file(io.BytesIO(PNG), "coupon")
    return lib.create(CLI, key, "coupon", ItemInput(key.title(), "", 0, png, "c.png"),
                      **placement)


def opened(payload: bytes, node_id: str, **kwargs: object):  # noqa: ANN201
    return open_signed(payload, AUTHORITY.public_key_bytes, kind="manifest",
                       subject=node_id, **kwargs)


def test_each_known_node_gets_a_signed_manifest_of_what_is_aimed_at_it(
        app: Flask, lib: ContentLibrary, publisher: ManifestPublisher,
        broker: Broker) -> None:
    heard(app, "n-lobby", "lobby")
    heard(app, "n-platform", "platform")
    coupon(lib, "coffee", targets=Targets(zones=("lobby",)),
           schedule=Schedule(windows=[Window("07:00", "11:00")]))
    coupon(lib, "welcome", targets=Targets(everywhere=True))
    assert publisher.tick() == 2
    by_topic = dict(broker.sent)
    lobby = opened(by_topic[manifest_topic("n-lobby")], "n-lobby")
    manifest = decode_manifest(lobby.body, "n-lobby")
    assert [i.key for i in manifest.items] == ["coffee", "welcome"]
    assert manifest.tz == "Europe/Berlin" and manifest.files_url == "http://hub.test:8080"
    assert manifest.items[0].schedule.windows == [Window("07:00", "11:00")]
    assert manifest.items[0].file.sha256 == hashlib.sha256(PNG).hexdigest()
    platform = decode_manifest(opened(by_topic[manifest_topic("n-platform")],
                                      "n-platform").body)
    assert [i.key for i in platform.items] == ["welcome"]


def test_an_unchanged_library_publishes_nothing_again(
        app: Flask, lib: ContentLibrary, publisher: ManifestPublisher,
        broker: Broker) -> None:
    heard(app, "n1", "lobby")
    coupon(lib, "welcome", targets=Targets(everywhere=True))
    assert publisher.tick() == 1
    assert publisher.tick() == 0 and len(broker.sent) == 1


def test_a_change_publishes_a_manifest_with_a_higher_serial_to_the_nodes_concerned(
        app: Flask, lib: ContentLibrary, publisher: ManifestPublisher,
        broker: Broker) -> None:
    heard(app, "n-lobby", "lobby")
    heard(app, "n-platform", "platform")
    coupon(lib, "coffee", targets=Targets(zones=("lobby",)))
    now = time.time()
    publisher.tick(now)
    first = opened(dict(broker.sent)[manifest_topic("n-lobby")], "n-lobby", now=now)
    lib.revise(CLI, "coffee", ItemInput(title="Coffee, all day"))
    broker.sent.clear()
    assert publisher.tick(now) == 1  # the same millisecond: still a higher serial
    (topic, payload), = broker.sent
    again = opened(payload, "n-lobby", now=now, min_serial=first.serial + 1)
    assert topic == manifest_topic("n-lobby") and again.serial > first.serial
    assert decode_manifest(again.body).items[0].version == 2


def test_a_manifest_is_signed_again_at_half_its_lifetime(
        app: Flask, lib: ContentLibrary, publisher: ManifestPublisher,
        broker: Broker) -> None:
    heard(app, "n1", "lobby")
    now = time.time()
    publisher.tick(now)
    assert publisher.tick(now + MANIFEST_LIFETIME * 0.49) == 0
    assert publisher.tick(now + MANIFEST_LIFETIME * 0.51) == 1
    latest = opened(broker.sent[-1][1], "n1", now=now + MANIFEST_LIFETIME * 0.9)
    assert latest.expires > now + MANIFEST_LIFETIME


def test_a_manifest_the_broker_did_not_take_is_published_at_the_next_check(
        app: Flask, lib: ContentLibrary, publisher: ManifestPublisher,
        broker: Broker) -> None:
    heard(app, "n1", "lobby")
    broker.up = False
    assert publisher.tick() == 0
    broker.up = True
    assert publisher.tick() == 1


def test_retired_items_leave_the_manifest(app: Flask, lib: ContentLibrary,
                                          publisher: ManifestPublisher,
                                          broker: Broker) -> None:
    heard(app, "n1", "lobby")
    coupon(lib, "old", targets=Targets(everywhere=True))
    publisher.tick()
    assert [i.key for i in decode_manifest(opened(broker.sent[-1][1], "n1").body).items] \
        == ["old"]
    lib.retire(CLI, "old")
    publisher.tick()
    assert decode_manifest(opened(broker.sent[-1][1], "n1").body).items == []


def test_the_snapshot_aims_items_by_node_zone_and_group(app: Flask,
                                                        lib: ContentLibrary) -> None:
    heard(app, "n-lobby", "lobby")
    lib.set_group(CLI, "screens", ["n-lobby"])
    coupon(lib, "by-zone", targets=Targets(zones=("lobby",)))
    coupon(lib, "by-group", targets=Targets(groups=("screens",)))
    coupon(lib, "by-node", targets=Targets(nodes=("n-lobby",)))
    coupon(lib, "elsewhere", targets=Targets(zones=("platform",)))
    snapshot = Snapshot.load(get_db(app).engine)
    assert [i.key for i in snapshot.for_node("n-lobby", "lobby")] == \
        ["by-group", "by-node", "by-zone"]
    assert [i.key for i in snapshot.for_node("n-other", "platform")] == ["elsewhere"]


def test_a_node_whose_set_cannot_be_sent_does_not_stop_the_others(
        app: Flask, lib: ContentLibrary, publisher: ManifestPublisher,
        broker: Broker) -> None:
    heard(app, "n-lobby", "lobby")
    heard(app, "n-other", "platform")
    for i in range(40):  # 40 x 20,000 characters that JSON escapes 6-fold: over 4 MiB
        lib.create(CLI, f"long-{i}", "article", ItemInput("Long", "\x01" * 20_000),
                   targets=Targets(zones=("lobby",)))
    assert publisher.tick() == 1
    assert [t for t, _ in broker.sent] == [manifest_topic("n-other")]


# ------------------------------------------------------------------ node file requests


def file_url(sha: str, node_id: str = "n1", *, ts: int | None = None,
             key: bytes | None = None) -> str:
    ts = int(time.time()) if ts is None else ts
    sig = file_request_sig(key or stream_key(SECRET, node_id), node_id, sha, ts)
    return f"{FILES_PATH}{sha}?node={node_id}&ts={ts}&sig={sig}"


def test_a_node_fetches_a_library_file_with_a_signed_request_and_resumes_it(
        app: Flask, lib: ContentLibrary) -> None:
    item = coupon(lib, "coffee")
    sha = item["version"]["file"]["sha256"]
    c = app.test_client()
    whole = c.get(file_url(sha))
    assert whole.status_code == 200 and whole.data == PNG
    rest = c.get(file_url(sha), headers={"Range": "bytes=30-"})
    assert rest.status_code == 206 and rest.data == PNG[30:]


@pytest.mark.parametrize("case,status", [
    ("another node's key", 403), ("a stale timestamp", 403), ("a garbled sig", 403),
    ("a missing parameter", 400), ("a file nobody uploaded", 404),
])
def test_a_node_file_request_that_does_not_hold_is_refused_and_counted(
        app: Flask, lib: ContentLibrary, case: str, status: int) -> None:
    sha = coupon(lib, "coffee")["version"]["file"]["sha256"]
    url = {
        "another node's key": file_url(sha, key=stream_key(SECRET, "n2")),
        "a stale timestamp": file_url(sha, ts=int(time.time()) - 3600),
        "a garbled sig": file_url(sha).replace("sig=", "sig=00")[:-2],
        "a missing parameter": f"{FILES_PATH}{sha}?node=n1",
        "a file nobody uploaded": file_url("0" * 64),
    }[case]
    before = auth_counts()["auth_failures"]
    r = app.test_client().get(url)
    assert r.status_code == status and r.json["error"]
    assert auth_counts()["auth_failures"] - before == (1 if status == 403 else 0)


def test_a_hub_web_without_the_stream_secret_says_what_to_install(
        hub_database: str, tmp_path: Path) -> None:
    config = load(HubConfig, data={"hub": {"database": hub_database,
                                           "files": str(tmp_path / "files"),
                                           "stream_secret": str(tmp_path / "none")}},
                  environ={})
    app = create_app(config)
    try:
        sha = coupon(library(app), "coffee")["version"]["file"]["sha256"]
        r = app.test_client().get(file_url(sha))
        assert r.status_code == 503 and "stream_secret" in r.json["error"]
    finally:
        get_db(app).close()


def test_the_manifest_and_the_file_request_match_their_documented_vectors() -> None:
    """docs/content.md shows these bytes; a change to either format fails here."""
    from tapcast.protocol.manifest import Manifest, ManifestFile, ManifestItem, \
        encode_manifest

    manifest = Manifest("n1", "Europe/Berlin", "http://hub:8080", [ManifestItem(
        "coffee", 2, "coupon", "Coffee", "Second cup free", 0,
        ManifestFile("ab" * 32, 69, "image/png", "coffee.png"),
        Schedule(windows=[Window("07:00", "11:00")]))])
    assert encode_manifest(manifest) == (
        b'{"node_id":"n1","tz":"Europe/Berlin","files_url":"http://hub:8080","items":'
        b'[{"key":"coffee","version":2,"kind":"coupon","title":"Coffee","body":'
        b'"Second cup free","price_cents":0,"file":{"sha256":"' + b"ab" * 32 +
        b'","size":69,"media_type":"image/png","name":"coffee.png"},"schedule":'
        b'{"windows":[{"start":"07:00","end":"11:00"}]}}]}')
    assert msgspec.json.decode(encode_manifest(manifest))["node_id"] == "n1"
    assert file_request_sig(bytes(32), "n1", "ab" * 32, 1_800_000_000) == \
        FILE_SIG_VECTOR


#: HMAC-SHA256(key 32 zero bytes, FILE_CONTEXT "n1" NUL "ab"*32 NUL "1800000000").
FILE_SIG_VECTOR = "7d6da87d368a22257d9e0622e1fb42201af787aa8636637c5bc0fc2af6c1c1db"


def test_a_node_that_reports_its_time_zone_gets_manifests_in_it(
        app: Flask, lib: ContentLibrary, publisher: ManifestPublisher,
        broker: Broker) -> None:
    now = time.time()
    get_db(app).write_batch([], states=[
        ("n-ny", NodeState(node_id="n-ny", ts=now, version="1", zone="lobby", uptime=1.0,
                           outbox_depth=0, tz="America/New_York"), now),
        ("n-odd", NodeState(node_id="n-odd", ts=now, version="1", zone="lobby", uptime=1.0,
                            outbox_depth=0, tz="Mars/Olympus_Mons"), now)])
    publisher.tick()
    tz = {topic: decode_manifest(opened(payload, topic.split("/")[3]).body).tz
          for topic, payload in broker.sent}
    assert tz == {manifest_topic("n-ny"): "America/New_York",
                  manifest_topic("n-odd"): "Europe/Berlin"}  # unknown: the hub's
    assert lib.node_timezone("n-ny", "UTC") == "America/New_York"


def test_a_check_with_nothing_changed_builds_no_manifest(
        app: Flask, lib: ContentLibrary, publisher: ManifestPublisher,
        monkeypatch: pytest.MonkeyPatch) -> None:
    heard(app, "n1", "lobby")
    coupon(lib, "welcome", targets=Targets(everywhere=True))
    publisher.tick()
    loads = []
    real = Snapshot.load
    monkeypatch.setattr(Snapshot, "load", classmethod(
        lambda cls, engine: loads.append(1) or real(engine)))
    assert publisher.tick() == 0 and loads == []  # nothing changed: nothing built
    lib.set_group(CLI, "screens", ["n1"])  # any library change moves the revision on
    assert publisher.tick() == 0 and loads == [1]  # built, same body: not published


def test_a_changed_manifest_the_broker_did_not_take_is_published_at_the_next_check(
        app: Flask, lib: ContentLibrary, publisher: ManifestPublisher,
        broker: Broker) -> None:
    heard(app, "n1", "lobby")
    publisher.tick()
    coupon(lib, "welcome", targets=Targets(everywhere=True))
    broker.up = False
    assert publisher.tick() == 0
    broker.up = True
    assert publisher.tick() == 1
    assert [i.key for i in decode_manifest(opened(broker.sent[-1][1], "n1").body).items] \
        == ["welcome"]
