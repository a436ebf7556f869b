"""The hall display: a local web page for the kiosk browser beside the NFC reader, and
the node's WLAN file server (the source documents' WLAN alternative to Bluetooth).

The page shows the scheduled loop (one item a slot), a "tap your phone here" call to
action, feedback per tap ("3 items sent to your phone"), and an offline badge while the
hub is unreachable. It follows the node over server-sent events, so the node decides
what is shown: each slot shown while at least one page is open is recorded as an
``impression`` event (proof of play). Nothing is recorded for a loop nobody displays.

Large items go to the phone as a short-lived URL on this server instead of over BLE:
``/wlan/<sha256>?exp=<unix s>&sig=<hex>``, HMAC-SHA256 under a key made at start (so a
URL dies with the process, or at ``exp``, whichever comes first); HTTP Range works, so
a phone resumes a cut download.

Why aiohttp: the node is asyncio, and this server shares its loop (no thread, no second
copy of the node's state).
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

__all__ = ["Display", "DisplayItem", "WLAN_CONTEXT"]

WLAN_CONTEXT = b"tapcast/v1 wlan file\x00"
_SHA = frozenset("0123456789abcdef")
_EXP = re.compile(r"[0-9]{1,12}")
_SIG = re.compile(r"[0-9a-f]{64}")
#: The kiosk browser runs on the node itself: only it is served /files and it is
#: always admitted to /events (phones get files from signed /wlan links).
LOOPBACK = ("127.0.0.1", "::1")
#: Pages (kiosk browsers) one node serves at once; more are refused with 503 (a page
#: from the node itself, the kiosk, is always admitted).
MAX_CLIENTS = 16
#: How long the page keeps a tap's feedback on screen, in seconds.
FEEDBACK_SECONDS = 5.0


@dataclass(frozen=True)
class DisplayItem:
    """One loop slot's item, as the page renders it."""

    key: str
    title: str
    kind: str
    body: str
    price_cents: int = 0
    file_sha256: str | None = None
    media_type: str | None = None


class Display:
    """The page and the WLAN server. ``loop(now)`` gives the items the loop shows next,
    in order (tapcast.schedule.display_loop over the store's schedules); ``online()``
    says whether the hub is reachable; ``on_impression(key)`` records proof of play."""

    def __init__(self, *, loop: Callable[[float], Sequence[DisplayItem]],
                 online: Callable[[], bool], on_impression: Callable[[str], None],
                 files_dir: Path, host: str = "127.0.0.1", port: int = 0,
                 slot_seconds: float = 8.0, public_url: str = "") -> None:
        self._loop_items = loop
        self._online = online
        self._on_impression = on_impression
        self.files_dir = Path(files_dir)
        self.host, self.port = host, port
        self.slot_seconds = slot_seconds
        self.public_url = public_url
        self._key = secrets.token_bytes(32)
        self._clients: set[asyncio.Queue[str]] = set()
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.shown: DisplayItem | None = None
        self.impressions = 0
        #: The code on screen for handsets without NFC (node.presence), or None.
        self.code: dict[str, Any] | None = None
        #: Called when the first page opens or the last one closes (node.presence
        #: shows codes only while someone looks).
        self.on_watch: Callable[[], None] | None = None
        self._last_impression: float | None = None  # time.monotonic() of the last one
        self.url = ""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> str:
        app = web.Application(client_max_size=1024)
        app.router.add_get("/", self._page)
        app.router.add_get("/events", self._events)
        app.router.add_get("/files/{sha256}", self._file)
        app.router.add_get("/wlan/{sha256}", self._wlan)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        port = sockets[0].getsockname()[1] if sockets else self.port
        self.url = f"http://{self.host}:{port}"
        if not self.public_url:
            self.public_url = self.url
        self._task = asyncio.create_task(self._run_loop(), name="display-loop")
        log.info("hall display page at %s", self.url)
        return self.url

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for queue in list(self._clients):
            _end(queue)  # ends each stream
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ what the daemon tells it

    def tap_feedback(self, delivered: int, ok: bool = True) -> None:
        """Tell the page how the last tap went."""
        if not ok:
            text = "That did not work: please tap again"
        elif delivered == 0:
            text = "Connected: nothing new for you here right now"
        else:
            text = f"{delivered} item{'s' if delivered != 1 else ''} sent to your phone"
        self._send("tap", {"text": text, "ok": ok, "seconds": FEEDBACK_SECONDS})

    def status_changed(self) -> None:
        """The hub came or went: the page shows or hides its offline badge now."""
        self._send("status", {"online": self._online()})

    def content_changed(self) -> None:
        """A new content set: show from it at once."""
        self._wake.set()

    def show_code(self, code: dict[str, Any] | None) -> None:
        """Show a code for handsets without NFC (``code``, ``uri``, ``qr`` as a data URI
        of its SVG, ``seconds``), or none."""
        self.code = code
        self._send("code", code)

    @property
    def watched(self) -> bool:
        """Whether a page is open (someone can see a code)."""
        return bool(self._clients)

    def wlan_url(self, sha256: str, ttl: float = 300.0) -> str:
        """A URL the phone fetches the file from over the hall's WLAN, good for ``ttl``
        seconds (and while this process runs)."""
        exp = int(time.time() + ttl)
        return f"{self.public_url}/wlan/{sha256}?exp={exp}&sig={self._sig(sha256, exp)}"

    # ------------------------------------------------------------------ the loop

    async def _run_loop(self) -> None:
        """One slot after another while a page is open: show, record the impression.
        A failing iteration is logged and the loop goes on (it never dies silently)."""
        position = 0
        while True:
            try:
                position = await self._slot(position)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the page goes on; the log says why
                log.exception("display loop: a slot failed; going on")
                await asyncio.sleep(self.slot_seconds)

    async def _slot(self, position: int) -> int:
        if not self._clients:
            await self._wait(None)
            return position
        items = list(self._loop_items(time.time()))
        if not items:
            self.shown = None
            self._send("show", None)
            await self._wait(self.slot_seconds)
            return position
        item = items[position % len(items)]
        self.shown = item
        self._send("show", self._public(item))
        # At most one impression per slot_seconds, however often the loop is woken
        # (a new content set shows at once, but is not counted twice in one slot).
        now = time.monotonic()
        if self._last_impression is None or now - self._last_impression >= self.slot_seconds:
            self._last_impression = now
            self.impressions += 1
            try:
                self._on_impression(item.key)
            except Exception:  # noqa: BLE001 - the page goes on even if recording fails
                log.exception("could not record the impression of %s", item.key)
        await self._wait(self.slot_seconds)
        return position + 1

    async def _wait(self, seconds: float | None) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass

    # ------------------------------------------------------------------ handlers

    async def _page(self, request: web.Request) -> web.Response:
        html = resources.files("node").joinpath("display_page.html").read_text("utf-8")
        return web.Response(text=html, content_type="text/html",
                            headers={"Cache-Control": "no-store"})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if len(self._clients) >= MAX_CLIENTS and request.remote not in LOOPBACK:
            return web.json_response({"error": "too many display pages open"}, status=503)
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=100)
        queue.put_nowait(_frame("status", {"online": self._online()}))
        if self.shown is not None:
            queue.put_nowait(_frame("show", self._public(self.shown)))
        if self.code is not None:
            queue.put_nowait(_frame("code", self.code))
        # Counted before the first await, so concurrent requests cannot pass MAX_CLIENTS.
        first = not self._clients
        self._clients.add(queue)
        if first:
            self._wake.set()  # the loop starts showing now that someone looks
            self._watch_changed()
        # (a further page joins the current slot: it does not end it early)
        try:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                                   "Cache-Control": "no-store"})
            await response.prepare(request)
            while True:
                frame = await queue.get()
                if not frame:
                    break
                await response.write(frame.encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._clients.discard(queue)
            if not self._clients:
                self._watch_changed()
        return response

    def _watch_changed(self) -> None:
        if self.on_watch is not None:
            try:
                self.on_watch()
            except Exception:  # noqa: BLE001 - the page goes on
                log.exception("display: on_watch failed")

    async def _file(self, request: web.Request) -> web.StreamResponse:
        """A file of the node's content set, for the page (images, video in the loop).
        Only for the kiosk browser on the node itself; phones use signed /wlan links."""
        if request.remote not in LOOPBACK:
            return web.json_response({"error": "files are served to the local display "
                                      "only"}, status=403)
        return self._serve(request.match_info["sha256"])

    async def _wlan(self, request: web.Request) -> web.StreamResponse:
        sha = request.match_info["sha256"]
        exp_text, sig = request.query.get("exp", ""), request.query.get("sig", "")
        if not _EXP.fullmatch(exp_text) or not _SIG.fullmatch(sig):
            return web.json_response({"error": "exp and sig are required"}, status=403)
        exp = int(exp_text)
        if exp < time.time():
            return web.json_response({"error": "this link has expired: tap again"},
                                     status=403)
        if not _is_sha(sha) or not hmac.compare_digest(self._sig(sha, exp), sig):
            return web.json_response({"error": "not a link this node made"}, status=403)
        return self._serve(sha)

    def _serve(self, sha: str) -> web.StreamResponse:
        path = self.files_dir / sha
        if not _is_sha(sha) or not path.is_file():
            return web.json_response({"error": "no such file here"}, status=404)
        return web.FileResponse(path, headers={"Cache-Control": "private, max-age=300"})

    # ------------------------------------------------------------------ helpers

    def _sig(self, sha256: str, exp: int) -> str:
        return hmac.digest(self._key, WLAN_CONTEXT + sha256.encode() + b"\x00" +
                           str(exp).encode(), "sha256").hex()

    def _public(self, item: DisplayItem) -> dict[str, Any]:
        shown = asdict(item)
        shown["file_url"] = f"/files/{item.file_sha256}" if item.file_sha256 else None
        return shown

    def _send(self, event: str, data: Any) -> None:
        frame = _frame(event, data)
        for queue in list(self._clients):
            try:
                queue.put_nowait(frame)
            except asyncio.QueueFull:  # a page that stopped reading: end its stream
                self._clients.discard(queue)
                _end(queue)


def _end(queue: asyncio.Queue[str]) -> None:
    """End one page's stream: drop what it has not read, then the end marker (so the
    put cannot find the queue full)."""
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait("")


def _frame(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def _is_sha(value: str) -> bool:
    return len(value) == 64 and set(value) <= _SHA
