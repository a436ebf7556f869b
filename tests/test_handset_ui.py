"""The app customers hold, in a real window (Kivy on Xvfb, SDL's x11 driver), tapped on
the virtual hall's nodes: real nfcpy (udp driver) and bumble air, real Mosquitto, and
the nodes' daemons in this process (processes=False) on the app's asyncio loop.

Every test checks the widget tree (what Labels say, which screen is shown), not pixels
alone, and saves a screenshot under test-artifacts/handset_ui/ (the path is printed;
TAPCAST_TEST_ARTIFACTS moves it). One window for the module: Kivy has one per process
and starting it dominates."""
from __future__ import annotations

import asyncio
import base64
import datetime
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from hall.testing.hub import HubServer
from hall.testing.mosquitto import Mosquitto
from hall.virtual import VirtualHall
from tests.ui_support import (Xvfb, assert_real_window, find, kivy_environment, label_texts,
                              screenshot)

pytestmark = [pytest.mark.ui, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.timeout(90)]

WAIT = 15.0


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def xdisplay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private Xvfb and Kivy's environment for a real X11 window on it."""
    xvfb = Xvfb()
    display = xvfb.start()
    env = kivy_environment(display, tmp_path_factory.mktemp("kivy-home"))
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    yield display
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    xvfb.stop()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    mosquitto = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture(scope="module")
def hub(broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    """The hub in this process (web + ingest): accounts for the app, and the relay of
    the no-NFC code path. Cheap password hashing while it runs (a real hash costs about
    a second here)."""
    import hub.accounts
    from hall.testing.hub import cheap_password_hashing, hub_config, serve

    saved = hub.accounts.HASHER
    hub.accounts.HASHER = cheap_password_hashing()
    from hall.virtual import LIBRARY
    from hub.accounts import Actor
    from hub.content import import_directory
    from hub.content_api import library

    directory = tmp_path_factory.mktemp("hub")
    server = serve(hub_config(directory / "hub.db", broker.url, secret_dir=directory),
                   wait_ingest=10.0, publish_manifests=True)
    # the sample library, as the demo's hub has it: the nodes sync it as signed manifests
    import_directory(library(server.app), LIBRARY.parent, Actor.cli())
    yield server
    server.shutdown()
    hub.accounts.HASHER = saved


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hall(broker: Mosquitto, hub: HubServer, tmp_path_factory: pytest.TempPathFactory
               ) -> AsyncIterator[VirtualHall]:
    """Two nodes (lobby, food-court) serving the sample library they were seeded with,
    reporting to ``hub`` (its authority signs the nodes' and phones' certificates)."""
    hall = VirtualHall(tmp_path_factory.mktemp("hall"), broker.url, nodes=2, handsets=1,
                       hold_off=0.0, processes=False, stream_secret=hub.stream_secret,
                       authority=hub.authority)
    await hall.start()
    for node in hall.nodes:  # running the hub's signed manifest, not only the seed
        assert node.daemon is not None
        await node.daemon.sync.wait_for(lambda d=node.daemon: d.store.content_serial() > 0,
                                        WAIT)
    yield hall
    await hall.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app(xdisplay: str, hall: VirtualHall, hub: HubServer,
              tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    """The app, signed in (credentials of the hall's authority), on its own controller
    of the hall's air, with the hall's displays on its Tap screen; one window for the
    module."""
    from handset_app.app import Display, TapcastApp, run_app
    from handset_app.phone import Phone
    from tapcast.keys import make_handset_credentials

    assert hall.air is not None
    phone = Phone(tmp_path_factory.mktemp("phone"))
    phone.install_credentials(make_handset_credentials(hall.authority, "app-phone",
                                                       time.time() + 3600))
    app = TapcastApp(phone, ble_adapter=hall.air.local_adapter("app-phone"),
                     displays=[Display(n.node_id, n.nfc_device) for n in hall.nodes],
                     hub_url=hub.url)
    task = asyncio.ensure_future(run_app(app))
    try:
        async with asyncio.timeout(WAIT):
            await app.ready.wait()
    except TimeoutError:
        task.cancel()
        raise AssertionError(f"the app did not get ready: {app.lines}") from None
    assert_real_window()  # every test of the module sees a real X11 window
    yield app
    app.stop()
    await asyncio.wait_for(task, WAIT)


# ------------------------------------------------------------------- helpers

async def until(app: Any, condition: Callable[[], bool], what: str,
                timeout: float = WAIT) -> None:
    """Until ``condition`` holds, looked at each time the app shows something new (its
    ``updated`` event). Not frame by frame: forcing a redraw every frame would starve
    the loop the BLE exchange runs on."""
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                app.updated.clear()
                if condition():
                    break
                await app.updated.wait()
    except TimeoutError:
        raise AssertionError(f"not within {timeout:.0f} s: {what}; the app said "
                             f"{app.lines[-8:]}") from None


def press(widget: Any) -> None:
    """A finger on the widget: press and release, as a touch does."""
    widget.trigger_action(duration=0)


def nav(app: Any, label: str) -> None:
    from kivy.uix.button import Button

    (button,) = find(app.root.ids.nav, Button, text=label)
    press(button)


async def tap(app: Any, display: str) -> None:
    """Press the Tap screen's button of ``display`` and wait for the session."""
    nav(app, "Tap")
    assert app.screen() == "tap"
    errors, before = len(app.errors), app.session
    press(app.tap_screen.buttons[display])
    await until(app, lambda: app.session not in (None, before) or len(app.errors) > errors,
                f"a session at {display}")
    assert app.session not in (None, before), app.errors[errors:]


async def session_over(app: Any) -> None:
    await until(app, lambda: app.session is None, "the node's bye")


# --------------------------------------------------------------------- tests

async def test_the_app_opens_a_real_window_ready_on_the_inbox(app: Any) -> None:
    assert_real_window()
    assert app.screen() == "inbox"
    assert "Nothing yet: tap a display in the hall." in label_texts(app.inbox)
    await screenshot(app, "01-start")


def png(width: int, height: int) -> bytes:
    """A PNG of a gradient (what a media item's image is)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = b"".join(b"\0" + b"".join(bytes((x * 4 % 256, y * 4 % 256, 160))
                                       for x in range(width))
                    for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def wav(seconds: float) -> bytes:
    """A WAV of a 440 Hz tone."""
    import io
    import math
    import struct
    import wave

    rate = 22050
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
                               for i in range(int(rate * seconds))))
    return out.getvalue()


def mp4(path: Path, frames: int = 20) -> bytes:
    """An MPEG-4 video of ``frames`` frames at 10 per second, written with FFmpeg (the
    ffpyplayer wheel Kivy's Video plays with)."""
    from ffpyplayer.pic import Image as Picture
    from ffpyplayer.writer import MediaWriter

    width, height = 64, 48
    writer = MediaWriter(str(path), [{"pix_fmt_in": "rgb24", "pix_fmt_out": "yuv420p",
                                      "width_in": width, "height_in": height,
                                      "codec": "mpeg4", "frame_rate": (10, 1)}])
    for i in range(frames):
        frame = bytes(((i * 12) % 256, 90, 200)) * (width * height)
        writer.write_frame(img=Picture(plane_buffers=[frame], pix_fmt="rgb24",
                                       size=(width, height)), pts=i / 10, stream=0)
    writer.close()
    return path.read_bytes()


async def test_an_image_plays_audio_and_video_items_with_kivys_own_widgets(
        app: Any, tmp_path: Path) -> None:
    """Media items kept on the phone (as Phone stores what a node sent: the file under
    its sha256), opened from the inbox: Kivy's Image shows the picture, SoundLoader
    plays the sound, Video plays the film."""
    import hashlib

    from kivy.uix.button import Button
    from kivy.uix.image import Image
    from kivy.uix.video import Video

    from handset_app.phone import InboxEntry
    from handset_app.screens.inbox import InboxRow

    files = {"hall-photo": ("Hall photo", "image/png", png(64, 64)),
             "jingle": ("Hall jingle", "audio/wav", wav(1.0)),
             "tour": ("Hall tour", "video/mp4", mp4(tmp_path / "tour.mp4"))}
    store = app.phone.store
    for item_id, (title, media_type, data) in files.items():
        kept = store.keep_file(hashlib.sha256(data).hexdigest(), data)
        store.add_item(InboxEntry(item_id, 1, "media", title, f"{title}, kept on the phone",
                                  media_type, kept, "Hall", "node-1", "lobby", time.time(),
                                  True, False))
    nav(app, "Inbox")
    assert {"Hall photo", "Hall jingle", "Hall tour"} <= set(label_texts(app.inbox))

    def open_row(item_id: str) -> None:
        nav(app, "Inbox")
        (row,) = find(app.inbox, InboxRow, item_id=item_id)
        press(row)
        assert app.screen() == "item" and app.item_screen.item_id == item_id

    open_row("hall-photo")
    (picture,) = [w for w in find(app.item_screen, Image) if not isinstance(w, Video)]
    assert Path(picture.source) == app.phone.item("hall-photo").file
    assert picture.texture is not None and tuple(picture.texture.size) == (64, 64)
    await screenshot(app, "02a-image")

    open_row("jingle")
    (play,) = find(app.item_screen, Button, text="Play")
    press(play)
    assert app.item_screen.sound is not None and app.item_screen.sound.state == "play"
    assert play.text == "Stop"
    press(play)
    assert app.item_screen.sound.state == "stop"

    open_row("tour")
    (video,) = find(app.item_screen, Video)
    (play,) = find(app.item_screen, Button, text="Play")
    press(play)
    assert video.state == "play"

    async def playing() -> None:  # the video's own frames: nothing else to wait on
        while not (video.loaded and video.position > 0):
            await app.next_frame()

    await asyncio.wait_for(playing(), WAIT)
    assert video.texture is not None and tuple(video.texture.size) == (64, 48)
    await screenshot(app, "02b-video")
    nav(app, "Inbox")  # leaving the item stops the player
    assert app.item_screen.video is None

async def test_a_tap_puts_the_pushed_item_in_the_inbox_on_screen(
        app: Any, hall: VirtualHall) -> None:
    from handset_app.screens.inbox import InboxRow

    lobby = hall.nodes[0]
    await tap(app, lobby.node_id)
    await until(app, lambda: "Welcome to the hall" in label_texts(app.inbox),
                "the pushed item's title in the inbox")
    assert app.screen() == "inbox"
    (row,) = find(app.inbox, InboxRow, item_id="welcome")
    assert "lobby" in row.subtitle
    # the catalogue of the node just tapped, from its Catalogue message
    await until(app, lambda: "cinema-ticket" in app.catalogue.rows, "the catalogue")
    assert app.catalogue.heading == "lobby"
    await screenshot(app, "02-tap-inbox")
    assert not app.errors, app.errors


async def test_a_ticket_asked_for_from_the_catalogue_shows_its_signed_code(
        app: Any, hall: VirtualHall) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from kivy.uix.image import Image

    from handset_app.screens.qr import qr_matrix

    if app.session is None:
        await tap(app, hall.nodes[0].node_id)
        await until(app, lambda: "cinema-ticket" in app.catalogue.rows, "the catalogue")
    nav(app, "Here")
    row = app.catalogue.rows["cinema-ticket"]
    press(row.ids.request)
    await until(app, lambda: row.action == "Received", "the requested ticket")
    await screenshot(app, "03-catalogue")
    entry = app.phone.item("cinema-ticket")
    assert entry is not None and entry.requested
    nav(app, "Inbox")
    await until(app, lambda: "Cinema: tonight 20:15" in label_texts(app.inbox), "the ticket")
    from handset_app.screens.inbox import InboxRow

    (ticket_row,) = find(app.inbox, InboxRow, item_id="cinema-ticket")
    press(ticket_row)
    assert app.screen() == "item"
    (qr,) = [w for w in find(app.item_screen, Image) if hasattr(w, "ticket_code")]
    # the code on screen is the ticket's, signed by this phone's key
    prefix, item_id, version, holder, signature = qr.ticket_code.split(":")
    assert (prefix, item_id, holder) == ("TAPCAST-TICKET", "cinema-ticket", "app-phone")
    public: Ed25519PublicKey = app.phone.credentials.private_key.public_key()
    public.verify(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),
                  qr.ticket_code.rsplit(":", 1)[0].encode())
    # and the texture holds exactly that code's modules (dark texels where dark modules)
    modules = qr_matrix(qr.ticket_code)
    pixels = qr.texture.pixels
    width = qr.texture.width
    assert (qr.texture.width, qr.texture.height) == (len(modules[0]), len(modules))
    for y, row_modules in enumerate(reversed(modules)):
        for x, dark in enumerate(row_modules):
            assert (pixels[(y * width + x) * 4] == 0) == dark
    assert "Show this code at the entrance" in label_texts(app.item_screen)
    # opening it queued a handset-signed open event for the next contact
    assert app.phone.item("cinema-ticket").opened
    assert app.phone.pending_events() >= 1
    await screenshot(app, "04-ticket")
    await app.leave_session()


async def test_a_large_item_asked_for_shows_its_progress_and_arrives(
        app: Any, hall: VirtualHall, hub: HubServer) -> None:
    """A media item too large for the BLE message: the node sends a link on its WLAN
    server, the phone fetches it with progress, and the catalogue's row shows it."""
    import io

    from hub.accounts import Actor
    from hub.content import ItemInput, Targets
    from hub.content_api import library

    big = png(64, 64)
    big += bytes(1_500_000)  # past the BLE message: over the node's WLAN link
    lib = library(hub.app)
    stored = lib.store_file(io.BytesIO(big), "media")
    lib.create(Actor.cli(), "hall-map", "media", ItemInput("Hall map", "", 0, stored, "map.png"),
               targets=Targets(everywhere=True))
    lobby = hall.nodes[0]
    assert lobby.daemon is not None
    await lobby.daemon.sync.wait_for(
        lambda: any(i.id == "hall-map" for i in lobby.daemon.store.items()), 30)
    await tap(app, lobby.node_id)
    await until(app, lambda: "hall-map" in app.catalogue.rows, "the catalogue")
    nav(app, "Here")
    row = app.catalogue.rows["hall-map"]
    seen: list[tuple[int, int]] = []
    row.bind(done=lambda r, done: seen.append((done, r.total)))
    press(row.ids.request)
    await until(app, lambda: row.action in ("Received", "Failed"), "the large item", 30)
    assert row.action == "Received", app.errors[-2:]
    assert row.total == len(big) and row.done == len(big)
    assert len(seen) > 2 and seen[0][0] < len(big), seen  # it moved, chunk by chunk
    assert row.ids.progress.value == row.ids.progress.max == len(big)
    await screenshot(app, "05a-progress")
    assert app.phone.item("hall-map").file.read_bytes() == big
    await app.leave_session()

async def test_quiet_hours_set_in_settings_refuse_the_pushed_item_and_say_so(
        app: Any, hall: VirtualHall) -> None:
    now = datetime.datetime.now()
    start = (now - datetime.timedelta(hours=1)).strftime("%H:%M")
    end = (now + datetime.timedelta(hours=1)).strftime("%H:%M")
    nav(app, "Settings")
    settings = app.settings_screen
    settings.ids.quiet_start.text, settings.ids.quiet_end.text = start, end
    press(settings.ids.save)
    assert app.phone.consent().quiet_start == start, app.lines[-3:]
    await screenshot(app, "05-settings")
    try:
        food_court = hall.nodes[1]
        await tap(app, food_court.node_id)
        await until(app, lambda: bool(app.refusals), "a refusal")
        item_id, reason = app.refusals[-1]
        assert (item_id, reason) == ("welcome", "quiet_hours")
        assert "refused welcome: your quiet hours" in app.lines
        await until(app, lambda: "welcome" in app.catalogue.rows, "the catalogue")
        assert app.catalogue.rows["welcome"].action == "Refused"
        assert "Refused" in label_texts(app.catalogue)  # the row's button says so
        nav(app, "Here")
        await screenshot(app, "06-refused")
        # not kept: the inbox still has the welcome from the lobby only
        assert app.phone.item("welcome").zone == "lobby"
    finally:
        nav(app, "Settings")
        settings.ids.quiet_start.text = settings.ids.quiet_end.text = ""
        press(settings.ids.save)
        assert app.phone.consent().quiet_start is None
        await app.leave_session()


async def test_garbled_and_wrongly_sealed_messages_are_shown_as_errors_and_dropped(
        app: Any, hall: VirtualHall) -> None:
    """A node (here: a bleak central holding the session key, on the hall's air) sends an
    item whose bytes do not match its sha256, then a message sealed with another key in
    authentic frames, then frames of another session altogether: each is an error on
    screen, nothing of them is kept, and the app carries on (the next tap works)."""
    from bleak.exc import BleakError

    from node.ble_push import open_session
    from tapcast.protocol import ble
    from tapcast.radio.bumble import BumbleBleakClient

    assert hall.air is not None
    key = os.urandom(32)
    before = len(app.errors)
    session = await app.attach("node-rogue", "lobby", key, channel="code")
    peripheral = app.phone.peripheral
    radio = hall.air.local_adapter("rogue-node")
    node = await open_session(peripheral.address, peripheral.address_type, key,
                              backend=BumbleBleakClient, backend_kwargs={"hci_adapter": radio},
                              connect_timeout=2.0)
    try:
        # 1. garbled: the text does not match the sha256 the item names
        await node.send(ble.ContentItem(id="forged", title="Forged offer", kind="article",
                                        body="tampered on the way", sha256="00" * 32))
        await until(app, lambda: any("forged" in e and "sha256" in e for e in app.errors),
                    "the garbled item's error")
        # 2. wrongly sealed: authentic frames around a message sealed with another key
        endpoint = node.endpoint
        endpoint.last_sent += 1
        direction = ble.Direction.NODE_TO_HANDSET
        sealed = ble.seal(ble.direction_key(os.urandom(32), direction), direction,
                          endpoint.last_sent,
                          ble.ContentItem(id="sealed-wrong", title="Sealed wrong",
                                          kind="article", body="x", sha256="00" * 32))
        for frame in ble.Outgoing(endpoint.last_sent, sealed, endpoint).chunks(100):
            try:
                await node.client.write_gatt_char(ble.RX_UUID, endpoint.wrap(frame),
                                                  response=True)
            except BleakError:
                pass  # the phone answers the refused frame with an ATT error
        await until(app, lambda: any("refused a message" in e for e in app.errors),
                    "the wrongly sealed message's error")
        # 3. frames of another session (another key): dropped unread
        other = ble.Endpoint(os.urandom(32), "node")
        for frame in other.seal(ble.Bye("forged")).chunks(100):
            try:
                await node.client.write_gatt_char(ble.RX_UUID, other.wrap(frame),
                                                  response=True)
            except BleakError:
                pass
        await until(app, lambda: any("unauthentic" in e for e in app.errors),
                    "the forged frames' error")
        # on screen: the status bar shows the last error, in the error colour
        assert app.root.status_is_error
        assert app.root.status_text == app.errors[-1]
        assert app.root.status_text in label_texts(app.root)
        await screenshot(app, "07-errors")
        # dropped: nothing of it is kept, and the session did not end
        assert app.phone.item("forged") is None and app.phone.item("sealed-wrong") is None
        assert "Forged offer" not in label_texts(app.inbox)
        assert len(app.errors) - before >= 3
        assert not session.closed
    finally:
        await node.close()
        await radio.close()
    await until(app, lambda: app.session is None, "the rogue session's end")
    # and the app carries on: a real tap still delivers
    await tap(app, hall.nodes[0].node_id)
    await until(app, lambda: any(line.startswith("new: ") for line in app.lines[-4:])
                or "In inbox" in label_texts(app.catalogue), "the next tap's items")
    await app.leave_session()

async def test_an_exception_in_a_kivy_callback_is_shown_and_the_app_goes_on(app: Any) -> None:
    """Kivy closes an app whose callback raises, unless a handler says otherwise: the
    app's handler shows it instead (a bug behind a button must not lose the window)."""
    from kivy.clock import Clock

    errors = len(app.errors)

    def broken(_dt: float) -> None:
        raise ZeroDivisionError("a bug behind a button")

    Clock.schedule_once(broken, 0)
    await until(app, lambda: len(app.errors) > errors, "the error on screen")
    assert app.errors[-1] == ("something went wrong: ZeroDivisionError: a bug behind a "
                              "button")
    await app.next_frame()  # still drawing
    assert app.root.status_is_error

async def displayed_code(display_url: str) -> str:
    """The code the node's display shows now, read from its page's event stream."""
    import aiohttp

    from hall.testing.display import next_code

    async with aiohttp.ClientSession() as http, http.get(display_url + "/events") as stream:
        return str((await next_code(stream, WAIT))["code"])


def offer_stored(hub: HubServer, code: str, timeout: float = WAIT) -> bool:
    """Whether the hub holds the offer for ``code`` within ``timeout`` (looked at each
    time its relay stores an offer)."""
    from sqlalchemy import select

    from hub import get_db, get_ingest
    from hub.schema import presence_offers
    from tapcast.protocol.presence import code_hash

    relay = get_ingest(hub.app).presence
    query = select(presence_offers.c.offer_id).where(
        presence_offers.c.code_hash == code_hash(code))

    def stored(counters: object) -> bool:
        with get_db(hub.app).engine.connect() as conn:
            return conn.execute(query).first() is not None

    return relay.wait_for(stored, timeout)


async def test_register_then_present_a_displays_code_without_nfc(
        app: Any, hall: VirtualHall, hub: HubServer) -> None:
    """The no-NFC path end to end through the screens: register with the hub (a key made
    on the phone, a certificate from the hub), type the code the display shows, and the
    node pushes over BLE as after a tap."""
    old = app.phone.credentials
    nav(app, "Account")
    account = app.account
    assert account.ids.hub_url.text == hub.url
    account.ids.username.text = "carol"
    account.ids.password.text = "a long walk by the river"
    press(account.ids.register)
    await until(app, lambda: any(line.startswith("signed in") for line in app.lines)
                or any(e.startswith("registering failed") for e in app.errors),
                "the registration")
    creds = app.phone.credentials
    assert creds is not None and creds.handset_id != old.handset_id, app.errors[-1:]
    assert app.screen() == "inbox"
    node = hall.nodes[1]
    assert node.daemon is not None
    await node.daemon.uplink.wait_connected(10)
    code = await displayed_code(node.daemon.display.url)
    # The display shows a code as its node offers it; a person reads it later than the
    # hub stores the offer, a test must wait for that.
    assert await asyncio.to_thread(offer_stored, hub, code), f"the hub never got {code}"
    nav(app, "Tap")
    app.tap_screen.ids.code.text = code
    before = app.session
    press(app.tap_screen.ids.enter_code)
    await until(app, lambda: app.session not in (None, before) or any(
        e.startswith(f"code {code} not accepted") for e in app.errors), "the code session")
    assert app.session not in (None, before), app.errors[-1:]
    assert app.session.channel == "code"
    await until(app, lambda: any(e.zone == node.zone for e in app.phone.inbox()),
                "an item from the display that showed the code")
    nav(app, "Inbox")
    entry = next(e for e in app.phone.inbox() if e.zone == node.zone)
    assert entry.title in label_texts(app.inbox)
    await screenshot(app, "08-code-inbox")
    await app.leave_session()
    nav(app, "Places")
    assert any(f"{node.zone} (node {node.node_id}, code)" in text
               for text in label_texts(app.places))
    await screenshot(app, "09-places")

async def test_settings_reset_the_identity_and_delete_everything_kept(
        app: Any, hall: VirtualHall) -> None:
    settings = app.settings_screen
    nav(app, "Settings")
    assert app.phone.credentials is not None and app.phone.inbox()
    press(settings.ids.reset_identity)  # the first press only asks to confirm
    assert app.phone.credentials is not None
    assert settings.reset_label.endswith("(press again to confirm)")
    press(settings.ids.reset_identity)
    assert app.phone.credentials is None
    assert app.screen() == "account"
    assert "Not signed in: sign in or register to receive content." in label_texts(app.account)
    assert app.phone.inbox(), "resetting the identity keeps the inbox"
    nav(app, "Settings")
    press(settings.ids.delete_data)
    press(settings.ids.delete_data)
    assert app.phone.inbox() == [] and app.phone.places() == []
    nav(app, "Inbox")
    assert "Nothing yet: tap a display in the hall." in label_texts(app.inbox)
    await screenshot(app, "10-deleted")
    # a phone without an identity does not answer a display
    errors = len(app.errors)
    nav(app, "Tap")
    press(app.tap_screen.buttons[hall.nodes[0].node_id])
    await until(app, lambda: len(app.errors) > errors, "the refusal to tap")
    assert app.errors[-1].startswith("sign in first")
    # signing in again (the account registered above) gives a new pseudonymous id
    if app.hub_client is not None and app.hub_client.token:  # registered above
        earlier = [line for line in app.lines if line.startswith("signed in")]
        nav(app, "Account")
        app.account.ids.username.text = "carol"
        app.account.ids.password.text = "a long walk by the river"
        press(app.account.ids.sign_in)
        await until(app, lambda: app.phone.credentials is not None or any(
            e.startswith("signing in failed") for e in app.errors[errors:]), "the sign-in")
        assert app.phone.credentials is not None, app.errors[-1:]
        assert f"signed in: this phone is {app.phone.credentials.handset_id}" in app.lines
        assert all(app.phone.credentials.handset_id not in line for line in earlier)
        assert app.screen() == "inbox"

async def test_tapcast_handset_app_opens_its_window_and_says_when_it_is_ready(
        xdisplay: str, tmp_path: Path) -> None:
    """The command as a person runs it (its own process, the same X server)."""
    import subprocess
    import sys

    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "hall.cli", "handset", "app", "--data-dir", str(tmp_path),
         "--display", "lobby=udp:127.0.0.1:9", "--exit-when-ready"],
        capture_output=True, text=True, timeout=60, env={**os.environ})
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.match(r"handset app ready in \d+\.\d\d s \(not signed in, 1 display\(s\)\)",
                    result.stdout), result.stdout
    assert "Traceback" not in result.stderr


async def test_demo_app_opens_one_app_window_among_the_handsets(
        xdisplay: str, tmp_path: Path) -> None:
    """`tapcast demo --app`: the app's own process on the hall's air, ready, and the demo
    still ends ok."""
    import subprocess
    import sys

    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "hall.cli", "demo", "--app", "--nodes", "2",
                         "--handsets", "2", "--duration", "4", "--hub-port", "0",
                         "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env={**os.environ})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert re.search(r"^app window: handset app ready in \d+\.\d\d s \(handset-app, "
                     r"2 display\(s\)\)", result.stdout, re.M), result.stdout
    assert "result: ok" in result.stdout
    (log,) = tmp_path.glob("*/app/app.log")
    assert "Traceback" not in log.read_text()
