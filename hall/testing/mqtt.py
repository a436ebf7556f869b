"""A stand-in for nodes on the broker, for hub tests: publishes what a node's uplink
publishes (batches tagged with each node's stream key) and collects the hub's acks per
node, checking their tags, without a node's outbox or radios."""
from __future__ import annotations

import queue
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from tapcast.mqttclient import make_client, parse_broker_url
from tapcast.protocol.mqtt import (ACK_CONTEXT, Event, EventBatch, ForgedError, decode_ack,
                                   events_ack_topic, events_topic, open_sealed, seal_batch,
                                   stream_key)
from tapcast.streamkeys import load_stream_secret

TIMEOUT = 10.0


def make_batch(node_id: str, seqs: Sequence[int], *, epoch: str = "e1", low: int | None = None,
               kind: str = "tap") -> EventBatch:
    """A node-shaped batch of events with these seqs (ids unique per node, epoch, seq)."""
    events = [Event(id=f"{node_id}-{epoch}-{s}", seq=s, kind=kind, ts=1700000000.0 + s)
              for s in seqs]
    return EventBatch(node_id=node_id, epoch=epoch, low=low if low is not None else seqs[0],
                      first=seqs[0], last=seqs[-1], events=events)


class NodePublisher:
    """A paho client standing in for nodes: publishes QoS1 and collects acks per node.
    ``secret`` is the hub's stream secret (bytes, or the path of its file)."""

    def __init__(self, broker_url: str, secret: bytes | str | Path, *,
                 timeout: float = TIMEOUT) -> None:
        broker = parse_broker_url(broker_url)
        self.secret = secret if isinstance(secret, bytes) else load_stream_secret(secret)
        self.timeout = timeout
        self.acks: dict[str, queue.Queue[int]] = defaultdict(queue.Queue)
        self.epochs: dict[str, str] = {}  # node -> epoch of its last ack
        self.forged_acks = 0
        self.client = make_client(f"test-node-{uuid.uuid4().hex[:8]}")
        subscribed: queue.Queue[bool] = queue.Queue()
        self.client.on_message = lambda c, u, m: self._on_ack(m.topic, m.payload)
        self.client.on_subscribe = lambda *a: subscribed.put(True)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe("tapcast/v1/node/+/events/ack", qos=1)
        subscribed.get(timeout=timeout)

    def key(self, node_id: str) -> bytes:
        return stream_key(self.secret, node_id)

    def _on_ack(self, topic: str, payload: bytes) -> None:
        node_id = topic.split("/")[3]
        try:
            ack = decode_ack(open_sealed(self.key(node_id), ACK_CONTEXT,
                                         events_ack_topic(node_id), payload))
        except ForgedError:
            self.forged_acks += 1
            return
        self.epochs[node_id] = ack.epoch
        self.acks[node_id].put(ack.seq)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(self.timeout)

    def publish_events(self, node_id: str, payload: bytes) -> None:
        """Publish a raw payload on ``node_id``'s events topic (hostile tests)."""
        self.publish(events_topic(node_id), payload)

    def publish_batch(self, batch: EventBatch) -> None:
        """Publish ``batch`` tagged with its node's stream key, as a node does."""
        self.publish(events_topic(batch.node_id), seal_batch(self.key(batch.node_id), batch))

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
