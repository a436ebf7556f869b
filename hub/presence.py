"""The code path without NFC, on the hub: offers from nodes, claims and answers from
handset apps, the relay between them (docs/protocol.md, "Without NFC").

Two halves share the ``presence_offers`` table:

* ``PresenceStore`` (the web, hub/handsets_api.py): an account presents a code and
  claims the live offer it names, gets the node's HELLO, posts its answer, reads the
  node's verdict. A code is claimed once: a second claim is refused ("already used").
* ``PresenceRelay`` (the ingest, hub/ingest.py routes the node's presence topics to it):
  stores each offer a node publishes (its tag checked with the node's stream key, its
  code decrypted and kept only as a hash), relays each posted answer to its node, and
  stores the node's verdict. Why a poll of the table for answers to relay: ``hub web``
  never talks MQTT, and the ingest is the process that does; a look every
  RELAY_INTERVAL (an indexed read of the few rows in state "answered") keeps a code
  session well under a second end to end. With several ingest workers each polls; the
  one whose update moves the row from "answered" to "relayed" publishes it, so a node
  gets each answer once.

Hostile input: a payload that does not open under the node's key is counted
(``forged``) and dropped; one that does not decode, or an offer whose code does not
open, is counted (``malformed``) and dropped. Nothing of either is stored. Anyone on
the broker can publish on the presence topics, so what waits for the relay's thread is
bounded (MAX_QUEUED payloads of at most MAX_PRESENCE_PAYLOAD bytes; the rest counted
``dropped``), and the table is looked at every RELAY_INTERVAL, not per message. A
node's own key (a stolen Pi) could seal offers without end: each node may store
OFFERS_PER_MINUTE a minute (a burst as large), the rest are counted ``flood``, so the
table holds at most that rate times an offer's lifetime plus KEEP_AFTER_EXPIRY per node.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from tapcast.protocol.mqtt import (PRESENCE_ANSWER, PRESENCE_OFFER, PRESENCE_RESULT,
                                   ForgedError, PayloadError, presence_topic, stream_key)
from tapcast.protocol.presence import (MAX_ANSWER_HEX, RelayedAnswer, code_hash,
                                       open_code, open_offer, open_result, parse_code,
                                       seal_answer)
from tapcast.ratelog import RateLimitedLog

from hub.dbengine import writer
from hub.schema import presence_offers

log = logging.getLogger(__name__)

__all__ = ["PresenceStore", "PresenceRelay", "PresenceError", "Claim", "RELAY_INTERVAL",
           "KEEP_AFTER_EXPIRY", "MAX_QUEUED", "MAX_PRESENCE_PAYLOAD", "OFFERS_PER_MINUTE"]

#: Seconds between the relay's looks for answers to send.
RELAY_INTERVAL = 0.02
#: Rows are deleted this long after their offer expired (the account can still read
#: how its session went meanwhile).
KEEP_AFTER_EXPIRY = 3600.0
#: Seconds between two deletions of old rows.
CLEANUP_EVERY = 60.0
#: An offer may live at most this long on the hub, whatever the node says.
MAX_OFFER_TTL = 300.0
DONE = ("confirmed", "refused")
#: Payloads waiting for the relay's thread, at most (more are dropped and counted).
MAX_QUEUED = 1000
#: The largest presence payload taken (an offer is under 2.5 KiB, a result under 1 KiB).
MAX_PRESENCE_PAYLOAD = 8 * 1024
#: Offers stored per node a minute, at most (and as many at once): a node makes one a
#: period (60 s) and one for each code used.
OFFERS_PER_MINUTE = 30
#: An answered session still waits this long past its code's expiry for the node's
#: verdict (the node takes answers a little past it too) before it shows as expired.
ANSWER_GRACE = 10.0

Publish = Callable[[str, bytes], Any]


class PresenceError(ValueError):
    """A presence request that cannot be served; ``status`` is its HTTP answer and
    ``counted`` whether it is a failed attempt (rate limited per account)."""

    def __init__(self, message: str, status: int, *, counted: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.counted = counted


@dataclass(frozen=True)
class Claim:
    """One account's code session, as the API shows it."""

    id: str
    node_id: str
    state: str  # claimed, answered, relayed, confirmed, refused, expired
    hello: str  # the node HELLO, hex
    expires_at: float
    reason: str | None
    confirm: str | None

    def public(self) -> dict[str, Any]:
        return asdict(self)


def _claim(row: Any, now: float) -> Claim:
    state = row.state
    grace = 0.0 if state in ("open", "claimed") else ANSWER_GRACE
    if state not in DONE and row.expires + grace <= now:
        state = "expired"
    return Claim(row.offer_id, row.node_id, state, row.hello, row.expires, row.reason,
                 row.confirm)


class PresenceStore:
    """The web's side: claim a code, answer, read the verdict."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self._writer = writer(engine)
        self._clock = clock

    def claim(self, code: str, user_id: int, handset_id: str | None) -> Claim:
        """The live offer ``code`` names, now this account's. PresenceError: 400 not a
        code; 404 no live offer has it (wrong or expired: counted); 409 already claimed
        (counted) or the account has no handset."""
        try:
            digits = parse_code(code)
        except ValueError as exc:
            raise PresenceError(str(exc), 400, counted=True) from None
        if handset_id is None:
            raise PresenceError("this account has no handset: sign in from the handset "
                                "app first (POST /api/v1/handsets/signin)", 409)
        now = self._clock()
        with self._writer.begin() as conn:
            rows = conn.execute(select(presence_offers).where(
                presence_offers.c.code_hash == code_hash(digits),
                presence_offers.c.expires > now)
                .order_by(presence_offers.c.received.desc())).all()
            if not rows:
                raise PresenceError("no display shows this code now: it is wrong or has "
                                    "expired; type the code the display shows", 404,
                                    counted=True)
            row = rows[0]
            if row.state != "open":
                raise PresenceError("this code was used already: wait for the display's "
                                    "next code", 409, counted=True)
            done = conn.execute(update(presence_offers).where(
                presence_offers.c.offer_id == row.offer_id,
                presence_offers.c.state == "open").values(
                state="claimed", user_id=user_id, handset_id=handset_id, claimed_at=now))
            if done.rowcount != 1:
                raise PresenceError("this code was used already: wait for the display's "
                                    "next code", 409, counted=True)
            row = conn.execute(select(presence_offers).where(
                presence_offers.c.offer_id == row.offer_id)).one()
        return _claim(row, now)

    def _mine(self, conn: Any, offer_id: str, user_id: int) -> Any:
        row = conn.execute(select(presence_offers).where(
            presence_offers.c.offer_id == offer_id,
            presence_offers.c.user_id == user_id)).first()
        if row is None:
            raise PresenceError(f"no code session {offer_id[:40]!r} of this account", 404)
        return row

    def answer(self, offer_id: str, user_id: int, answer_hex: str) -> Claim:
        """Store the handset's answer for the ingest to relay. PresenceError: 400 not
        hex (or too long), 404 not this account's session, 409 answered already or
        expired."""
        if len(answer_hex) > MAX_ANSWER_HEX or len(answer_hex) % 2 or \
                any(c not in "0123456789abcdef" for c in answer_hex):
            raise PresenceError(f"answer must be lowercase hex, at most {MAX_ANSWER_HEX} "
                                "digits", 400)
        now = self._clock()
        with self._writer.begin() as conn:
            row = self._mine(conn, offer_id, user_id)
            if row.state != "claimed":
                raise PresenceError(f"this code session is {row.state}: answer once", 409)
            if row.expires <= now:
                raise PresenceError("this code has expired: present the display's new "
                                    "code", 409)
            done = conn.execute(update(presence_offers).where(
                presence_offers.c.offer_id == offer_id,
                presence_offers.c.state == "claimed").values(
                state="answered", answer=answer_hex, answered_at=now))
            if done.rowcount != 1:  # another request answered it since we read it
                raise PresenceError("this code session is answered: answer once", 409)
            row = self._mine(conn, offer_id, user_id)
        return _claim(row, now)

    def get(self, offer_id: str, user_id: int) -> Claim:
        with self.engine.connect() as conn:
            row = self._mine(conn, offer_id, user_id)
        return _claim(row, self._clock())


@dataclass
class RelayCounters:
    offers: int = 0  # offers stored
    relayed: int = 0  # answers sent to nodes
    results: int = 0  # verdicts stored
    forged: int = 0  # payloads whose tag did not verify: dropped
    malformed: int = 0  # authentic payloads that did not decode (or too big): dropped
    late: int = 0  # verdicts for sessions not waiting for one: ignored
    dropped: int = 0  # payloads that found the relay's queue full: dropped
    flood: int = 0  # authentic offers past the node's rate (OFFERS_PER_MINUTE): dropped


class PresenceRelay:
    """The ingest's side: ``submit`` (paho's thread) queues a node's offer or result;
    a thread of its own stores them and relays answers. ``publish(topic, payload)``
    publishes at QoS 1 through the ingest's connection."""

    def __init__(self, engine: Engine, secret: bytes, publish: Publish, *,
                 clock: Callable[[], float] = time.time,
                 interval: float = RELAY_INTERVAL) -> None:
        self.engine = engine
        self._writer = writer(engine)
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        self._secret = secret
        self._publish = publish
        self._clock = clock
        self.interval = interval
        self.counters = RelayCounters()
        self._queue: queue.Queue[tuple[str, str, bytes] | None] = queue.Queue(MAX_QUEUED)
        #: node id -> (offers it may still store, when that was counted)
        self._allowance: dict[str, tuple[float, float]] = {}
        self._last_relay = 0.0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._last_cleanup = 0.0
        self._ratelog = RateLimitedLog(log)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hub-presence", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)  # while full, the thread empties it
        except queue.Full:
            log.warning("hub presence relay did not take its stop in %.0f s", timeout)
        self._thread.join(timeout)
        self._thread = None

    def submit(self, leaf: str, node_id: str, payload: bytes) -> None:
        """From paho's thread: queue, nothing slow (and nothing unbounded: a payload too
        big, or one that finds the queue full, is counted and dropped)."""
        if len(payload) > MAX_PRESENCE_PAYLOAD:
            self._count("malformed")
            self._ratelog.warn("big", "dropped a presence %s of %d bytes for %s (at most "
                               "%d)", leaf, len(payload), node_id, MAX_PRESENCE_PAYLOAD)
            return
        try:
            self._queue.put_nowait((leaf, node_id, bytes(payload)))
        except queue.Full:
            self._count("dropped")
            self._ratelog.warn("full", "the presence relay's queue is full: dropped a %s "
                               "for %s", leaf, node_id)

    def wait_for(self, predicate: Callable[[RelayCounters], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.counters), timeout)

    def _count(self, name: str) -> None:
        with self._cond:
            setattr(self.counters, name, getattr(self.counters, name) + 1)
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self.interval)
            except queue.Empty:
                item = ()
            try:
                if item is None:
                    return
                if item:
                    self.handle(*item)
                if time.monotonic() - self._last_relay >= self.interval:
                    self._last_relay = time.monotonic()
                    self.relay()
                now = self._clock()
                if now - self._last_cleanup > CLEANUP_EVERY:
                    self._last_cleanup = now
                    self.cleanup(now)
            except Exception:  # noqa: BLE001 - the relay must outlive any one message
                log.exception("hub presence relay failed; going on")

    # ------------------------------------------------------------ from nodes

    def handle(self, leaf: str, node_id: str, payload: bytes) -> None:
        key = stream_key(self._secret, node_id)
        try:
            if leaf == PRESENCE_OFFER:
                self._offer(key, node_id, payload)
            elif leaf == PRESENCE_RESULT:
                self._result(key, node_id, payload)
        except ForgedError as exc:
            self._count("forged")
            self._ratelog.warn("forged", "dropped a presence %s for %s that is not the "
                               "node's: %s", leaf, node_id, exc)
        except PayloadError as exc:
            self._count("malformed")
            self._ratelog.warn("malformed", "dropped a malformed presence %s from %s: %s",
                               leaf, node_id, exc)

    def _offer(self, key: bytes, node_id: str, payload: bytes) -> None:
        offer = open_offer(key, node_id, payload)
        code = open_code(key, offer.offer_id, offer.code)
        now = self._clock()
        if not self._allow(node_id, now):
            self._count("flood")
            self._ratelog.warn("flood", "dropped an offer from %s: more than %d a minute",
                               node_id, OFFERS_PER_MINUTE)
            return
        values = {"offer_id": offer.offer_id, "node_id": node_id,
                  "code_hash": code_hash(code), "hello": offer.hello, "received": now,
                  "expires": now + min(offer.ttl, MAX_OFFER_TTL), "state": "open"}
        # A re-delivery (QoS 1), or the same offer stored by another ingest worker at
        # the same moment: kept once.
        with self._writer.begin() as conn:
            stored = conn.execute(self._insert(presence_offers).values(**values)
                                  .on_conflict_do_nothing(index_elements=["offer_id"])
                                  .returning(presence_offers.c.offer_id)).first()
        if stored is not None:
            self._count("offers")

    def _allow(self, node_id: str, now: float) -> bool:
        """Take one from the node's allowance of offers (OFFERS_PER_MINUTE a minute)."""
        left, then = self._allowance.get(node_id, (float(OFFERS_PER_MINUTE), now))
        left = min(float(OFFERS_PER_MINUTE),
                   left + max(0.0, now - then) * OFFERS_PER_MINUTE / 60.0)
        if left < 1.0:
            self._allowance[node_id] = (left, now)
            return False
        self._allowance[node_id] = (left - 1.0, now)
        return True

    def _result(self, key: bytes, node_id: str, payload: bytes) -> None:
        result = open_result(key, node_id, payload)
        now = self._clock()
        with self._writer.begin() as conn:
            done = conn.execute(update(presence_offers).where(
                presence_offers.c.offer_id == result.offer_id,
                presence_offers.c.node_id == node_id,
                presence_offers.c.state.in_(("answered", "relayed"))).values(
                state="confirmed" if result.ok else "refused", reason=result.reason,
                confirm=result.confirm or None, done_at=now, answer=None))
        if done.rowcount != 1:
            self._count("late")
            return
        log.info("code session %s at %s: %s %s", result.offer_id, node_id, result.reason,
                 result.detail)
        self._count("results")

    # ------------------------------------------------------------ to nodes

    def relay(self) -> int:
        """Send each answer waiting in the table to its node; how many were sent."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(
                presence_offers.c.offer_id, presence_offers.c.node_id,
                presence_offers.c.handset_id, presence_offers.c.answer).where(
                presence_offers.c.state == "answered")).all()
        sent = 0
        for row in rows:
            with self._writer.begin() as conn:
                taken = conn.execute(update(presence_offers).where(
                    presence_offers.c.offer_id == row.offer_id,
                    presence_offers.c.state == "answered").values(state="relayed"))
            if taken.rowcount != 1:
                continue  # another ingest worker took it
            message = RelayedAnswer(offer_id=row.offer_id, handset_id=row.handset_id,
                                    answer=row.answer)
            self._publish(presence_topic(row.node_id, PRESENCE_ANSWER),
                          seal_answer(stream_key(self._secret, row.node_id), row.node_id,
                                      message))
            sent += 1
            self._count("relayed")
        return sent

    def cleanup(self, now: float) -> int:
        """Delete rows whose offer expired more than KEEP_AFTER_EXPIRY ago (and forget
        the allowances of nodes quiet for a minute: they are full again)."""
        self._allowance = {k: v for k, v in self._allowance.items() if now - v[1] < 60.0}
        with self._writer.begin() as conn:
            return conn.execute(delete(presence_offers).where(
                presence_offers.c.expires < now - KEEP_AFTER_EXPIRY)).rowcount
