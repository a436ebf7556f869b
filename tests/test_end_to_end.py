"""The spine, end to end on real stacks: nfcpy udp taps, bleak+bumble push, real
Mosquitto, the hub's ingest into SQLite. Each test builds a small virtual hall."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from handset_app.sim import SimulatedHandset
from hall.testing.hub import HubServer
from hub import get_db, get_ingest
from hall.virtual import VirtualHall
from tapcast.keys import HubAuthority, make_handset_credentials
from tapcast.mqttclient import make_client
from tapcast.protocol import mqtt as m
from hall.testing.mosquitto import Mosquitto

pytestmark = pytest.mark.slow


@pytest.fixture
async def hall(mosquitto: Mosquitto, running_hub: HubServer, tmp_path: Path) -> AsyncIterator[VirtualHall]:
    h = VirtualHall(tmp_path / "hall", mosquitto.url, nodes=2, handsets=2, seed=7, hold_off=0.0,
                    processes=False, stream_secret=running_hub.stream_secret)
    await h.start()
    yield h
    await h.stop()


def hub_events(running_hub: HubServer) -> list[dict]:
    return [dict(row) for row in get_db(running_hub.app).query(
        "select node_id, seq, kind, data from events order by node_id, seq")]


@pytest.mark.parametrize("running_hub_database", ["sqlite", "postgresql"], indirect=True)
async def test_taps_deliver_content_and_every_event_reaches_the_hub_once(
        hall: VirtualHall, running_hub: HubServer) -> None:
    reports = []
    for round_ in range(3):
        for handset in hall.handsets:
            node = hall.nodes[round_ % len(hall.nodes)]
            reports.append(await hall.tap(handset, node))
    assert all(r.ok for r in reports), [r.error for r in reports if not r.ok]
    for report in reports:
        assert report.items[0] == "welcome"  # the featured item comes first
        assert len(report.items) == 2  # ... then the one asked for from the catalogue
        assert report.items[1] in report.catalogue
    assert await hall.drain(10.0)

    events = hub_events(running_hub)
    per_node: dict[str, list[int]] = {}
    for event in events:
        per_node.setdefault(event["node_id"], []).append(event["seq"])
    for node in hall.nodes:
        seqs = per_node[node.node_id]
        assert seqs == list(range(1, len(seqs) + 1))  # contiguous, each once
    kinds = [e["kind"] for e in events]
    assert kinds.count("tap") == 6
    assert kinds.count("auth") == 6
    assert kinds.count("delivery") == 12
    assert kinds.count("request") == 6
    auths = [json.loads(e["data"]) for e in events if e["kind"] == "auth"]
    assert {a["handset_id"] for a in auths} == {"handset-1", "handset-2"}
    assert all(a["ok"] for a in auths)


@pytest.mark.parametrize("make_bad, reason", [
    (lambda hall: make_handset_credentials(hall.authority, "late", time.time() - 60),
     "expired_certificate"),
    # trusts our hub (so it answers our node) but was certified by another hub
    (lambda hall: dataclasses.replace(
        make_handset_credentials(HubAuthority.generate(), "stranger", time.time() + 3600),
        hub_public_key=hall.authority.public_key_bytes), "unknown_key_id"),
])
async def test_bad_certificate_is_refused_and_reported_to_the_hub(
        hall: VirtualHall, running_hub: HubServer, make_bad, reason: str) -> None:
    stranger = SimulatedHandset(make_bad(hall), hall.air.local_adapter("stranger"))
    await stranger.start()
    try:
        report = await hall.tap(stranger, hall.nodes[0], nfc_timeout=2.0)
    finally:
        await stranger.close()
    assert report.authenticated is None
    assert report.items == []
    assert await hall.drain(10.0)
    auths = [json.loads(e["data"]) for e in hub_events(running_hub) if e["kind"] == "auth"]
    assert [(a["ok"], a["reason"]) for a in auths] == [(False, reason)]


async def test_malformed_mqtt_payload_is_counted_and_ingest_keeps_storing(
        hall: VirtualHall, running_hub: HubServer, mosquitto: Mosquitto) -> None:
    rogue = make_client("rogue")
    rogue.connect("127.0.0.1", mosquitto.port)
    rogue.loop_start()
    try:
        for payload in (b"{not json", b'{"node_id":"node-1","events":[{"seq":"x"}]}',
                        m.seal_batch(m.stream_key(bytes(32), "node-1"), m.EventBatch(
                            node_id="node-1", epoch="e", low=1, first=1, last=1,
                            events=[]))):  # tagged with a guessed key
            rogue.publish(m.events_topic("node-1"), payload, qos=1).wait_for_publish(5)
    finally:
        rogue.loop_stop()
        rogue.disconnect()
    ingest = get_ingest(running_hub.app)
    assert ingest is not None
    assert await asyncio.to_thread(ingest.wait_for, lambda c: c.forged >= 3, 10.0)
    report = await hall.tap(hall.handsets[0], hall.nodes[0])
    assert report.ok, report.error
    assert await hall.drain(10.0)
    assert [e["kind"] for e in hub_events(running_hub)].count("tap") == 1


@pytest.mark.parametrize("running_hub_database", ["sqlite", "postgresql"], indirect=True)
async def test_broker_restart_mid_run_loses_no_event_and_duplicates_none(
        hall: VirtualHall, running_hub: HubServer, mosquitto: Mosquitto) -> None:
    async def tap_all(rounds: int) -> None:
        for _ in range(rounds):
            for i, handset in enumerate(hall.handsets):
                report = await hall.tap(handset, hall.nodes[i % len(hall.nodes)])
                assert report.ok, report.error

    await tap_all(2)
    await asyncio.to_thread(mosquitto.stop)
    await tap_all(2)  # served offline: events wait in the outboxes
    assert hall.outbox_depth() > 0
    await asyncio.to_thread(mosquitto.start)
    await tap_all(1)
    assert await hall.drain(30.0)

    recorded = {n.node_id: n.daemon.outbox.last_seq() for n in hall.nodes}
    events = hub_events(running_hub)
    keys = [(e["node_id"], e["seq"]) for e in events]
    assert len(keys) == len(set(keys))
    assert sorted(keys) == sorted((node_id, seq) for node_id, last in recorded.items()
                                  for seq in range(1, last + 1))
    assert [e["kind"] for e in events].count("tap") == 10


def test_paho_client_helper_sets_tcp_nodelay(mosquitto: Mosquitto) -> None:
    import socket

    client = make_client("nodelay-check")
    client.connect("127.0.0.1", mosquitto.port)
    try:
        sock = client.socket()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        client.disconnect()
    assert isinstance(client, paho.Client)


async def test_request_for_an_item_the_node_lacks_gets_a_clear_refusal(
        hall: VirtualHall, running_hub: HubServer) -> None:
    report = await hall.tap(hall.handsets[0], hall.nodes[0], ask_for=["no-such-item"])
    assert report.items == ["welcome"]
    assert "no item 'no-such-item' here" in report.error
    assert await hall.drain(10.0)
    requests = [json.loads(e["data"]) for e in hub_events(running_hub) if e["kind"] == "request"]
    assert [(r["item_id"], r["found"]) for r in requests] == [("no-such-item", False)]
    again = await hall.tap(hall.handsets[0], hall.nodes[0])  # the node still serves
    assert again.ok, again.error
