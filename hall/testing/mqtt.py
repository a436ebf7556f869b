"""A stand-in for nodes on the broker, for hub tests: publishes what a node's uplink
publishes and collects the hub's acks per node, without a node's outbox or radios."""
from __future__ import annotations

import queue
import time
import uuid
from collections import defaultdict

from tapcast.mqttclient import make_client, parse_broker_url
from tapcast.protocol.mqtt import decode_ack, events_topic

TIMEOUT = 10.0


class NodePublisher:
    """A paho client standing in for nodes: publishes QoS1 and collects acks per node."""

    def __init__(self, broker_url: str, *, timeout: float = TIMEOUT) -> None:
        broker = parse_broker_url(broker_url)
        self.timeout = timeout
        self.acks: dict[str, queue.Queue[int]] = defaultdict(queue.Queue)
        self.client = make_client(f"test-node-{uuid.uuid4().hex[:8]}")
        subscribed: queue.Queue[bool] = queue.Queue()
        self.client.on_message = lambda c, u, m: self.acks[m.topic.split("/")[3]].put(
            decode_ack(m.payload).seq)
        self.client.on_subscribe = lambda *a: subscribed.put(True)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe("tapcast/v1/node/+/events/ack", qos=1)
        subscribed.get(timeout=timeout)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(self.timeout)

    def publish_events(self, node_id: str, payload: bytes) -> None:
        self.publish(events_topic(node_id), payload)

    def ack_for(self, node_id: str, seq: int) -> None:
        """The next ack the hub sends ``node_id`` must name exactly ``seq``."""
        assert self.acks[node_id].get(timeout=self.timeout) == seq

    def wait_acked(self, node_id: str, seq: int) -> None:
        """Until the hub acks ``seq`` (acks only grow; queue.Empty after the timeout)."""
        deadline = time.monotonic() + self.timeout
        acked = 0
        while acked < seq:
            acked = self.acks[node_id].get(timeout=max(0.0, deadline - time.monotonic()))
        assert acked == seq

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
