"""tapcast.mqttclient.RoutingClient: paho's client minus the per-topic filter walk, for
processes that route every message in on_message (the hub ingest)."""
from __future__ import annotations

import threading

import paho.mqtt.client as paho
import pytest

from hall.testing.mosquitto import Mosquitto
from tapcast.mqttclient import RoutingClient, make_client, parse_broker_url


def test_routing_client_hands_every_message_to_on_message(mosquitto: Mosquitto) -> None:
    broker = parse_broker_url(mosquitto.url)
    client = make_client("routing-test", client_class=RoutingClient)
    assert isinstance(client, RoutingClient) and RoutingClient._FAST
    got: list[tuple[str, bytes]] = []
    done = threading.Event()

    def on_message(c: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        if msg.payload == b"boom":
            raise RuntimeError("a callback that fails must not stop the loop")
        got.append((msg.topic, msg.payload))
        if len(got) == 3:
            done.set()

    client.on_message = on_message
    client.suppress_exceptions = True
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("t/#", qos=1)
    subscribed = threading.Event()
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        assert subscribed.wait(10)
        publisher = make_client("routing-test-pub")
        publisher.connect(broker.host, broker.port)
        publisher.loop_start()
        for payload in (b"one", b"boom", b"two", b"three"):
            publisher.publish("t/x", payload, qos=1).wait_for_publish(10)
        assert done.wait(10)
        publisher.loop_stop()
        publisher.disconnect()
    finally:
        client.loop_stop()
        client.disconnect()
    assert got == [("t/x", b"one"), ("t/x", b"two"), ("t/x", b"three")]


def test_routing_client_refuses_per_topic_callbacks() -> None:
    client = make_client("routing-test-2", client_class=RoutingClient)
    with pytest.raises(TypeError, match="on_message only"):
        client.message_callback_add("t/#", lambda *args: None)
