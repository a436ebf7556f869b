"""The code path on the node: a short-lived code on the display for handsets without
NFC, authenticated through the hub with the NFC exchange's own messages
(docs/protocol.md, "Without NFC"; tapcast.protocol.presence).

While a display page is open and the hub is reachable, the node shows a code (8 digits
and a QR of ``tapcast:code/<digits>``), new every ``period`` seconds and as soon as one
is used. For each code it makes a fresh NFC HELLO (NodeAuth.begin: new nonce, new
ephemeral key) and offers it to the hub, sealed with its stream key. A code may be
presented for ``period + grace`` seconds (grace: half the period by default; the
display moved on while someone typed);
its HELLO takes an answer until then plus ANSWER_GRACE, by the monotonic clock.

An answer the hub relays is checked exactly as an NFC answer (NodeHandshake.
check_answer_data: decryption, handset certificate offline with the node's best time
and revocation list, signature over the transcript); its offer is removed first, so an
offer is answered once. Only the first answer for an offer this node made (in the last
``period + grace + ANSWER_GRACE + REMEMBER`` seconds) gets a verdict; an answer for an
offer already judged or never made here (a replay of the hub's sealed relay by anyone on
the broker, a QoS 1 copy, an offer from before a restart) is counted (``replayed``) and
dropped: no event, no result, so a replay loop cannot fill the outbox. An answer for an
offer that expired or was pushed out by newer ones is "unknown_offer", once.
The certificate must also be the handset of the account that claimed the code (the hub
names it in the relayed message): "wrong_handset" otherwise. The verdict goes back to
the hub (with the CONFIRM MAC when ok) and to the daemon, which records the tap as
channel "code" and pushes over BLE as after a tap.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tapcast.protocol.mqtt import (PRESENCE_ANSWER, PRESENCE_OFFER, PRESENCE_RESULT,
                                   ForgedError, PayloadError, presence_topic)
from tapcast.protocol.nfc import NodeAuth, NodeHandshake, NodeSession, NodeVerdict
from tapcast.protocol.presence import (Offer, Result, code_uri, new_code, open_answer,
                                       seal_code, seal_offer, seal_result)
from tapcast.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

__all__ = ["CodePresence", "CodeVerdict", "qr_svg", "ANSWER_GRACE"]

#: Seconds past a code's lifetime its HELLO still takes an answer (the hub's relay).
ANSWER_GRACE = 10.0
#: Live offers kept at most (the newest; older ones are dropped).
MAX_LIVE = 4
#: Seconds an offer id is remembered past its answer deadline (a late relay gets
#: "unknown_offer" once), and how many ids at most.
REMEMBER = 60.0
MAX_REMEMBERED = 256


def qr_svg(text: str) -> str:
    """The QR code of ``text`` as an SVG data URI, for an <img> on the display page
    (segno, imported on first use)."""
    import segno

    return segno.make(text, error="m").svg_data_uri(scale=8, border=2, dark="#111",
                                                    light="#fff")


@dataclass
class _Live:
    code: str
    handshake: NodeHandshake
    until: float  # monotonic: presentable until then


@dataclass(frozen=True)
class CodeVerdict:
    """One relayed answer as the node judged it: the session when ``reason`` is ok."""

    offer_id: str
    reason: str
    detail: str = ""
    session: NodeSession | None = None
    confirm: str = ""  # the CONFIRM MAC, hex, when ok
    started: float = field(default_factory=time.monotonic)

    @property
    def ok(self) -> bool:
        return self.reason == "ok"


class CodePresence:
    """Shows codes, offers them, judges relayed answers. ``show(code, uri, svg,
    seconds)`` puts a code on the display (None: none); ``watched()`` says whether a
    page is open; ``on_verdict`` gets every verdict (on the loop)."""

    def __init__(self, node_id: str, auth: NodeAuth, uplink: Any, stream_key: bytes, *,
                 show: Callable[[dict[str, Any] | None], None],
                 watched: Callable[[], bool],
                 on_verdict: Callable[[CodeVerdict], None],
                 period: float = 60.0, grace: float | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        grace = period / 2 if grace is None else grace
        if period <= 0 or grace < 0:
            raise ValueError("a code's period must be > 0 s and its grace >= 0 s")
        self.node_id = node_id
        self.auth = auth
        self.uplink = uplink
        self._key = stream_key
        self._show = show
        self._watched = watched
        self.on_verdict = on_verdict
        self.period = period
        self.grace = grace
        self._monotonic = monotonic
        self.live: dict[str, _Live] = {}
        #: offer ids made here and not judged yet -> forget at (monotonic)
        self._unjudged: dict[str, float] = {}
        self.current: str | None = None  # the offer id on screen
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.forged = 0  # relayed answers whose tag did not verify: dropped
        self.malformed = 0  # sealed by the hub's side, but not a RelayedAnswer: dropped
        self.replayed = 0  # relayed answers for offers judged already or not ours: dropped
        self._ratelog = RateLimitedLog(log)

    def start(self) -> None:
        self.uplink.subscribe(presence_topic(self.node_id, PRESENCE_ANSWER), self.on_answer)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="codes")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def wake(self) -> None:
        """Something changed (a page opened, the hub came back): look again now."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                wait = self._rotate()
            except Exception:  # noqa: BLE001 - the display goes on without a code
                log.exception("could not make a new code; trying again")
                wait = self.period
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass

    def _rotate(self) -> float:
        """A new code when one is wanted and the hub can hear of it; seconds until the
        next look."""
        now = self._monotonic()
        for offer_id in [k for k, v in self.live.items() if v.until + ANSWER_GRACE < now]:
            del self.live[offer_id]
        for offer_id in [k for k, v in self._unjudged.items() if v < now]:
            del self._unjudged[offer_id]
        current = self.live.get(self.current) if self.current else None
        if not self._watched() or not self.uplink.connected:
            if self.current is not None:
                self.current = None
                self._show(None)
            return self.period
        if current is not None and now < current.until - self.grace:
            return current.until - self.grace - now  # still the code on screen
        return self.new_code()

    def new_code(self) -> float:
        """Make, offer and show a new code; seconds it stays on screen."""
        code, offer_id = new_code(), secrets.token_hex(16)
        ttl = self.period + self.grace
        handshake = self.auth.begin()
        handshake.deadline = ttl + ANSWER_GRACE
        offer = Offer(offer_id=offer_id, code=seal_code(self._key, offer_id, code), ttl=ttl,
                      hello=handshake.hello.hex())
        if not self.uplink.publish(presence_topic(self.node_id, PRESENCE_OFFER),
                                   seal_offer(self._key, self.node_id, offer)):
            return 1.0  # the hub is away just now: no code it cannot know
        until = self._monotonic() + ttl
        self.live[offer_id] = _Live(code, handshake, until)
        while len(self.live) > MAX_LIVE:
            del self.live[next(iter(self.live))]
        self._unjudged[offer_id] = until + ANSWER_GRACE + REMEMBER
        while len(self._unjudged) > MAX_REMEMBERED:
            del self._unjudged[next(iter(self._unjudged))]
        self.current = offer_id
        uri = code_uri(code)
        self._show({"code": code, "uri": uri, "qr": qr_svg(uri),
                    "seconds": self.period})
        log.debug("code offer %s shown", offer_id)
        return self.period

    # ------------------------------------------------------------ answers

    def on_answer(self, payload: bytes) -> None:
        """A relayed answer (on the loop): judged, reported to the hub and the daemon."""
        try:
            relayed = open_answer(self._key, self.node_id, payload)
        except ForgedError as exc:
            self.forged += 1
            self._ratelog.warn("answer", "dropped a presence answer that is not the hub's: "
                               "%s", exc)
            return
        except PayloadError as exc:
            self.malformed += 1
            self._ratelog.warn("malformed", "dropped a malformed presence answer: %s", exc)
            return
        if self._unjudged.pop(relayed.offer_id, None) is None:
            self.replayed += 1
            self.live.pop(relayed.offer_id, None)
            self._ratelog.warn("replayed", "dropped a presence answer for offer %s: judged "
                               "already, or not this node's", relayed.offer_id)
            return
        verdict = self.judge(relayed.offer_id, relayed.handset_id, relayed.answer)
        result = Result(offer_id=relayed.offer_id, reason=verdict.reason,
                        detail=verdict.detail[:200], confirm=verdict.confirm)
        self.uplink.publish(presence_topic(self.node_id, PRESENCE_RESULT),
                            seal_result(self._key, self.node_id, result))
        self.on_verdict(verdict)  # refusals too: each is an auth event (counted)
        if relayed.offer_id == self.current:  # used (or spoilt): the next one now
            self.current = None
            self.wake()

    def judge(self, offer_id: str, handset_id: str, answer_hex: str) -> CodeVerdict:
        """Check one answer to the HELLO of ``offer_id``; the offer is gone afterwards."""
        live = self.live.pop(offer_id, None)
        if live is None:
            return CodeVerdict(offer_id, "unknown_offer",
                               "no live code of this node has this offer (expired or used)")
        try:
            data = bytes.fromhex(answer_hex)
        except ValueError:
            return CodeVerdict(offer_id, "malformed", "the answer is not hex")
        verdict: NodeVerdict = live.handshake.check_answer_data(data)
        if not verdict.ok or verdict.session is None:
            return CodeVerdict(offer_id, verdict.reason, verdict.detail)
        if verdict.session.handset_id != handset_id:
            return CodeVerdict(offer_id, "wrong_handset",
                               f"the certificate is handset {verdict.session.handset_id}, "
                               f"the code was claimed for {handset_id}")
        return CodeVerdict(offer_id, "ok", session=verdict.session,
                           confirm=live.handshake.confirmation().hex())
