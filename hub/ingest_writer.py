"""The ingest's writer: authenticate, decode, store and seal the acks of what the MQTT
side received, in a process of its own by default.

Why a process: paho's receive-and-PUBACK path alone costs one core about what the bare
acking subscriber does (bench_ingest's floor), and the writer (checking tags, decoding,
SQL, sealing acks) costs as much again. On one interpreter they take turns on one GIL,
and the hub took in about a third of the floor's rate (docs/performance.md). So the
process that holds the MQTT connection only routes each message by its topic and hands
the raw bytes over a pipe; this one does everything else and hands back sealed acks to
publish (after the commit that they confirm) and what to add to the counters. The bytes
are parsed once, here.

``WriterCore`` is the work itself, the same in a thread (``[mqtt] writer_process =
false``, and the status lane, which stays in the MQTT process) and in the process
(``run_writer_process``).

The pipe's frames (pickled: both ends are this module, in one version):
* MQTT side -> writer: a list of ``Raw`` messages as plain tuples (in Raw's field
  order), or None (stop after these);
* writer -> MQTT side: ``("ready", None)`` once the database is open,
  ``("outcome", Outcome)`` after each piece of work, ``("fatal", reason)`` when it
  cannot start (the database will not open), and ``("bye", None)`` once it has written
  everything before the None.
"""
from __future__ import annotations

import functools
import gc
import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from hub.config import HubConfig
from hub.db import HubDB, Quarantined, open_db
from tapcast.protocol.mqtt import (BATCH_CONTEXT, EventAck, ForgedError, NodeState,
                                   PayloadError, decode_batch, decode_batch_header,
                                   decode_state, decode_status, events_ack_topic, open_sealed,
                                   seal_ack, stream_key)
from tapcast.ratelog import RateLimitedLog
from tapcast.streamkeys import load_stream_secret

log = logging.getLogger(__name__)


class Raw(NamedTuple):
    """One MQTT message as the MQTT side received it: routed by its topic, not parsed.
    ``heard`` is when it arrived live, None for a retained message replayed by the
    broker (it says nothing about the node being alive now)."""

    leaf: str  # "events", "state" or "status"
    node_id: str
    topic: str
    payload: bytes
    heard: float | None


@dataclass
class Outcome:
    """What one piece of the writer's work leaves for the MQTT side: acks to publish
    (every one confirms a commit already made), counter increments, and how many Raw
    messages it consumed (for the MQTT side's backpressure)."""

    handled: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    acks: list[tuple[str, bytes]] = field(default_factory=list)
    logs: list[logging.LogRecord] = field(default_factory=list)


# (what, node_id, body, heard): what is "events" (an EventBatch), "quarantine"
# (Quarantined), "state" (NodeState) or "status" ("online"/"offline").
Item = tuple[str, str, Any, float | None]


class WriterCore:
    """Authenticate and decode Raw messages, write them in transactions of at most
    ``mqtt.batch_size`` events, and seal one EventAck per stream each commit advanced."""

    def __init__(self, config: HubConfig, db: HubDB) -> None:
        self.db = db
        self.batch_size = max(1, config.mqtt.batch_size)
        # Raises StreamKeyError (a ValueError: one line at start-up) when it is missing.
        secret = load_stream_secret(config.hub.stream_secret)
        # Node keys derived once each; bounded, since topics are chosen by whoever publishes.
        self.key = functools.lru_cache(maxsize=100_000)(functools.partial(stream_key, secret))
        self._ratelog = RateLimitedLog(log)

    def handle(self, raws: list[Raw]) -> Outcome:
        """All of ``raws``: the refused counted (and logged, rate-limited), the rest
        written, a transaction per ``batch_size`` events."""
        out = Outcome(handled=len(raws))
        self.write_all(self.open_all(raws, out.counts), out)
        return out

    def open_all(self, raws: list[Raw], counts: Counter[str]) -> list[Item]:
        """The messages that pass, checked and decoded; the others counted."""
        opened = (self._open(raw, counts) for raw in raws)
        return [item for item in opened if item is not None]

    def write_all(self, items: list[Item], out: Outcome) -> None:
        """``items`` in transactions of at most ``batch_size`` events each."""
        start = weight = 0
        for i, item in enumerate(items):
            weight += len(item[2].events) if item[0] == "events" else 1
            if weight >= self.batch_size:
                self.write(items[start:i + 1], out)
                start, weight = i + 1, 0
        if start < len(items):
            self.write(items[start:], out)

    def _open(self, raw: Raw, counts: Counter[str]) -> Item | None:
        """The message checked and decoded, or None (counted) when it is refused."""
        leaf, node_id, topic, payload, heard = raw
        try:
            if leaf == "events":
                return self._open_batch(node_id, topic, payload, heard, counts)
            if leaf == "state":
                state = decode_state(payload)
                if state.node_id != node_id:
                    raise PayloadError(f"state names node {state.node_id!r} but was "
                                       f"published under {node_id!r}")
                return ("state", node_id, state, heard)
            if leaf == "status":
                return ("status", node_id, decode_status(payload), heard)
            raise PayloadError(f"the hub does not handle topic leaf {leaf!r}")
        except ForgedError as exc:
            counts["forged"] += 1
            self._ratelog.warn("forged", "dropped a batch on %r that is not from that node "
                               "(%s)", topic, exc)
        except PayloadError as exc:
            counts["malformed"] += 1
            self._ratelog.warn("malformed", "dropped a malformed message on %r (%d bytes): "
                               "%s", topic[:200], len(payload), str(exc)[:300])
        except Exception as exc:  # noqa: BLE001 - one message must not stop the writer
            counts["malformed"] += 1
            self._ratelog.warn("unexpected", "unexpected error handling %s: %s: %s",
                               topic[:200], type(exc).__name__, exc, level=logging.ERROR)
        return None

    def _open_batch(self, node_id: str, topic: str, payload: bytes, heard: float | None,
                    counts: Counter[str]) -> Item:
        """Authenticate (ForgedError), then decode once; an authentic batch that does not
        decode goes to quarantine (verbatim), acked past when its header is readable."""
        body = open_sealed(self.key(node_id), BATCH_CONTEXT, topic, payload)
        try:
            batch = decode_batch(body, node_id)
        except PayloadError as exc:
            try:
                header = decode_batch_header(body, node_id)
            except PayloadError:
                header = None
            self._ratelog.warn("quarantine", "quarantined a batch from node %s: %s",
                               node_id, exc)
            return ("quarantine", node_id, Quarantined(node_id, payload, str(exc), header),
                    heard)
        counts["received"] += len(batch.events)
        return ("events", node_id, batch, heard)

    def write(self, items: list[Item], out: Outcome) -> None:
        """Store ``items`` in one transaction and seal the acks it earned into ``out``;
        when that fails, one by one, so only the culprit fails (and is not acked: its
        node re-sends it)."""
        batches = []
        quarantined = []
        states: dict[str, tuple[str, NodeState, float | None]] = {}
        statuses: dict[str, tuple[str, str, float | None]] = {}
        seen: dict[str, float] = {}
        for what, node_id, body, heard in items:
            if what == "events":
                batches.append(body)
            elif what == "quarantine":
                quarantined.append(body)
            elif what == "state":
                states[node_id] = (node_id, body, heard)  # the latest wins
            else:
                statuses[node_id] = (node_id, body, heard)
            if heard is not None and not (what == "status" and body == "offline"):
                seen[node_id] = max(seen.get(node_id, 0.0), heard)
        try:
            # Node rows in one order (node id) in every transaction, whichever lane or
            # worker writes it: concurrent writers then never wait on each other in a
            # cycle (a deadlock, with row locks on PostgreSQL).
            result = self.db.write(batches, quarantined=quarantined,
                                   states=[states[k] for k in sorted(states)],
                                   statuses=[statuses[k] for k in sorted(statuses)],
                                   seen={k: seen[k] for k in sorted(seen)})
        except Exception:  # noqa: BLE001 - disk full, locked...: nodes re-send, we go on
            if len(items) > 1:
                # One bad message must not sink the others coalesced with it (and again
                # on every re-send).
                self._ratelog.warn("split", "a batch of %d messages failed to store; "
                                   "retrying one by one", len(items))
                for item in items:
                    self.write([item], out)
                return
            self._ratelog.warn("write", "hub could not store a message from %s; not acking "
                               "it (the node re-sends)", items[0][1], level=logging.ERROR)
            log.debug("write failure", exc_info=True)
            out.counts["write_errors"] += 1
            return
        c = out.counts
        c["stored"] += result.stored
        c["duplicates"] += result.duplicates
        c["conflicts"] += result.conflicts
        c["lost"] += result.lost
        c["quarantined"] += result.quarantined
        c["transactions"] += 1
        now = time.time()
        for node_id, epoch, seq in result.acks:
            if seq > 0:  # seq 0: nothing contiguous stored yet, nothing to delete
                out.acks.append((events_ack_topic(node_id), seal_ack(
                    self.key(node_id), node_id, EventAck(epoch=epoch, seq=seq, ts=now))))
        if result.duplicates:
            log.debug("dropped %d duplicate events", result.duplicates)


# ------------------------------------------------------------------ the process


class _Collect(logging.Handler):
    """Keeps this process's log records for the MQTT side, which logs them as its own
    (its handlers: the CLI's stderr, pytest's caplog)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self._prepare = logging.handlers.QueueHandler(None).prepare  # type: ignore[arg-type]

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self._prepare(record))

    def take(self) -> list[logging.LogRecord]:
        records, self.records = self.records, []
        return records


def run_writer_process(inbox: Connection, outbox: Connection) -> None:
    """The writer process's main: its settings (the HubConfig and the log level) first,
    then Raw lists from ``inbox`` until None (or the MQTT side is gone: EOF), taking all
    that is waiting, up to ``mqtt.batch_size`` messages, at each step. Logs at that
    level and above go back with the outcomes.

    One thread: a second one opening the next messages while the database works on
    the last (the drivers let go of the GIL there) was tried and was slower (61k
    against 65-78k events/s in bench_ingest): the two took turns on the GIL."""
    # Ctrl-C reaches the whole process group: the MQTT side alone decides when this
    # stops (None after the last messages), and this one exits when that side is gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        config, level = inbox.recv()
        collect = _Collect()
        root = logging.getLogger()
        root.handlers[:] = [collect]
        root.setLevel(level)
        try:
            db = open_db(config.hub.database)
            core = WriterCore(config, db)
        except Exception as exc:  # noqa: BLE001 - told to the MQTT side, which says it
            text = str(exc)
            outbox.send(("fatal", text if text.startswith("hub database")
                         else f"{type(exc).__name__}: {text}"))
            return
        # The writer allocates a few objects per event (decoded batches, rows) that die
        # young and hold no cycles: with CPython's default (a collection every 700
        # allocations) the collector cost 12% of its time. Everything from start-up is
        # frozen out of the collections, and the youngest generation runs every 20,000.
        gc.freeze()
        gc.set_threshold(20_000, 50, 100)
        try:
            outbox.send(("ready", None))
            _serve(inbox, outbox, core, collect)
        finally:
            db.close()
    except (BrokenPipeError, ConnectionResetError, EOFError):
        return  # the MQTT side is gone: what was committed is acked on the node's re-send


def _serve(inbox: Connection, outbox: Connection, core: WriterCore, collect: _Collect) -> None:
    limit = core.batch_size
    while True:
        chunk = inbox.recv()
        if chunk is None:
            break
        raws = chunk
        stopping = False
        while len(raws) < limit and inbox.poll(0):
            more = inbox.recv()
            if more is None:
                stopping = True
                break
            raws += more
        out = core.handle(raws)
        out.logs = collect.take()
        outbox.send(("outcome", out))
        if stopping:
            break
    outbox.send(("bye", None))


def start_writer_process(config: HubConfig, level: int) -> tuple[subprocess.Popen[bytes],
                                                                  Connection, Connection]:
    """``python -m hub.ingest_writer`` with a pipe each way; (process, to it, from it).
    A plain child process (not multiprocessing's): it shows as what it is in ``ps``,
    needs no resource tracker beside it, and exits on its own when this side is gone."""
    child_in, to_child = os.pipe()
    from_child, child_out = os.pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "hub.ingest_writer", str(child_in), str(child_out)],
            pass_fds=(child_in, child_out), stdin=subprocess.DEVNULL)
    except BaseException:
        for fd in (child_in, to_child, from_child, child_out):
            os.close(fd)
        raise
    # Only the child holds these now: its exit is EOF on our end, and ours on its.
    os.close(child_in)
    os.close(child_out)
    sender = Connection(to_child, readable=False)
    try:
        sender.send((config, level))
    except OSError:
        pass  # it died at once: the reader gets EOF and says with which exit code
    return process, sender, Connection(from_child, writable=False)


if __name__ == "__main__":
    # Under its own name, not __main__'s: what it pickles must name hub.ingest_writer.
    from hub import ingest_writer

    ingest_writer.run_writer_process(Connection(int(sys.argv[1]), writable=False),
                                     Connection(int(sys.argv[2]), readable=False))
