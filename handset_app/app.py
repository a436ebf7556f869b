"""The app customers hold: a Kivy front end on :class:`handset_app.phone.Phone`.

Screens (handset_app/screens/): sign in or register, inbox (and one item opened),
the catalogue of the node just tapped, places, settings; in simulation also "tap"
(one button per hall display, and the code a display shows for phones without NFC).

One asyncio loop runs it all: Kivy with ``App.async_run(async_lib="asyncio")``, the
phone's bumble adapter, the hub client; nfcpy's card emulation runs in its own thread
inside Phone.tap. The phone calls the app back (a TapListener) on that loop, so the
callbacks change widgets directly.

Kivy reads its environment when first imported: this module sets KIVY_NO_ARGS (the
command line belongs to `tapcast`, not Kivy) and KIVY_LOG_MODE=PYTHON (else Kivy takes
the root logger) unless they are set already.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

os.environ.setdefault("KIVY_NO_ARGS", "1")
os.environ.setdefault("KIVY_LOG_MODE", "PYTHON")
os.environ.setdefault("KIVY_NO_FILELOG", "1")
os.environ.setdefault("KIVY_CLIPBOARD", "sdl2")  # not xsel/xclip, which Debian may lack



class _NoCutbufferNoise(logging.Filter):
    """Kivy's text inputs look for xclip/xsel (the X11 primary selection) and log a
    CRITICAL with tracebacks when neither is installed; the app does not need them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Cutbuffer:")


logging.getLogger("kivy").addFilter(_NoCutbufferNoise())

from kivy.app import App  # noqa: E402 - after the environment above
from kivy.base import ExceptionHandler, ExceptionManager  # noqa: E402
from kivy.core.window import Window  # noqa: E402
from kivy.properties import BooleanProperty, StringProperty  # noqa: E402
from kivy.uix.boxlayout import BoxLayout  # noqa: E402
from kivy.uix.button import Button  # noqa: E402
from kivy.uix.screenmanager import NoTransition  # noqa: E402

from handset_app.screens import Display, load_kv, parse_display  # noqa: E402,F401

if TYPE_CHECKING:
    from handset_app.phone import InboxEntry, Phone, PhoneSession
    from tapcast.protocol.ble import CatalogueEntry

log = logging.getLogger(__name__)

#: Portrait, as a phone is held.
WINDOW_SIZE = (420, 760)
#: Why the phone refused an item (handset_app.consent's reasons), as the customer reads it.
REFUSALS = {"merchant": "you blocked its merchant", "kind": "you do not take this kind",
            "quiet_hours": "your quiet hours", "cap": "today's cap is reached"}
#: Status lines the app keeps (for the window tests and a glance back).
KEEP_LINES = 200


class _ShowErrors(ExceptionHandler):
    """A bug behind a button must not close the customer's app: Kivy hands every
    exception from its callbacks here; it is logged, shown, and the app goes on."""

    def __init__(self, app: TapcastApp) -> None:
        self.app = app

    def handle_exception(self, inst: BaseException) -> int:
        if isinstance(inst, (KeyboardInterrupt, SystemExit)):
            return int(ExceptionManager.RAISE)
        log.error("app: unexpected error", exc_info=inst)
        self.app.report_error(f"something went wrong: {type(inst).__name__}: {inst}")
        return int(ExceptionManager.PASS)


class Root(BoxLayout):
    status_text = StringProperty("")
    status_is_error = BooleanProperty(False)


class UiListener:
    """The phone's TapListener: each callback goes to the app's widgets."""

    def __init__(self, app: TapcastApp) -> None:
        self.app = app

    def on_authenticated(self, node_id: str, zone: str) -> None:
        self.app.session_started(node_id, zone)

    def on_catalogue(self, entries: list[CatalogueEntry]) -> None:
        self.app.catalogue.show_entries(entries)
        self.app.report(f"{len(entries)} item(s) on offer here (Catalogue)")

    def on_progress(self, item_id: str, done: int, total: int) -> None:
        self.app.catalogue.progress(item_id, done, total)
        self.app.updated.set()

    def on_item(self, entry: InboxEntry) -> None:
        self.app.item_arrived(entry)

    def on_refused(self, item_id: str, reason: str) -> None:
        self.app.catalogue.mark(item_id, "Refused")
        self.app.refusals.append((item_id, reason))
        self.app.report(f"refused {item_id}: {REFUSALS.get(reason, reason)}")

    def on_error(self, message: str) -> None:
        self.app.report_error(message)

    def on_closed(self, reason: str) -> None:
        self.app.session_closed(reason)


class TapcastApp(App):
    """The app. ``phone`` is a handset_app.phone.Phone on the app's data dir;
    ``ble_adapter`` its radio (started with the app); ``displays`` the hall displays
    offered on the Tap screen; ``hub_client`` a handset_app.hubclient.HubClient (the
    one saved in the data dir, or one for ``hub_url``), None before signing in."""

    title = "Tapcast"

    def __init__(self, phone: Phone, *, ble_adapter: Any = None,
                 displays: Sequence[Display] = (), hub_client: Any = None,
                 hub_url: str = "", radio_ready: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.phone = phone
        self.ble_adapter = ble_adapter
        self.displays = list(displays)
        self.hub_client = hub_client
        self.hub_url = hub_url
        self.listener = UiListener(self)
        self.session: PhoneSession | None = None
        self.ready = asyncio.Event()
        #: set whenever the app shows something new (a status line, a session); tests
        #: and benchmarks clear it and wait on it instead of polling frames
        self.updated = asyncio.Event()
        self.created_at = time.monotonic()
        self.ready_at: float | None = None
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.refusals: list[tuple[str, str]] = []
        #: called with each InboxEntry once it is on screen (benchmarks, tests)
        self.item_shown: list[Callable[[InboxEntry], None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        #: the phone's radio is on (Phone.start with ble_adapter, or set up by the caller:
        #: ``radio_ready`` on Android, where the GATT server is not bumble's)
        self._phone_started = radio_ready

    # ---------------------------------------------------------------- building
    def build(self) -> Root:
        load_kv()
        self._errors_handler = _ShowErrors(self)
        ExceptionManager.add_handler(self._errors_handler)
        from handset_app.screens.account import SignInScreen
        from handset_app.screens.catalogue import CatalogueScreen
        from handset_app.screens.inbox import InboxScreen, ItemScreen
        from handset_app.screens.places import PlacesScreen
        from handset_app.screens.settings import SettingsScreen
        from handset_app.screens.tap import TapScreen

        Window.size = WINDOW_SIZE
        root = Root()
        screens = root.ids.screens
        screens.transition = NoTransition()  # a tap's item shows at once
        self.inbox = InboxScreen(name="inbox")
        self.item_screen = ItemScreen(name="item")
        self.catalogue = CatalogueScreen(name="catalogue")
        self.places = PlacesScreen(name="places")
        self.settings_screen = SettingsScreen(name="settings")
        self.tap_screen = TapScreen(name="tap")
        self.account = SignInScreen(name="account")
        for screen in (self.inbox, self.item_screen, self.catalogue, self.places,
                       self.settings_screen, self.tap_screen, self.account):
            screens.add_widget(screen)
        # Tap: the simulation's displays, and a display's code (no NFC) everywhere
        nav = [("Inbox", "inbox"), ("Here", "catalogue"), ("Places", "places"),
               ("Settings", "settings"), ("Tap", "tap"), ("Account", "account")]
        for label, name in nav:
            button = Button(text=label)
            button.bind(on_release=lambda _b, n=name: self.show(n))
            root.ids.nav.add_widget(button)
        self.tap_screen.set_displays(self.displays)
        return root

    def on_start(self) -> None:
        self.show("inbox" if self.phone.credentials is not None else "account")
        self.report("ready" if self.phone.credentials is not None
                    else "sign in or register to receive content")
        self.spawn(self._start_phone())

    async def _start_phone(self) -> None:
        if self.ble_adapter is not None:
            try:
                await self.phone.start(self.ble_adapter)
            except Exception as exc:  # noqa: BLE001 - shown: the app stays usable offline
                log.exception("the phone's radio did not start")
                self.report_error(f"Bluetooth did not start ({exc}): the inbox works, "
                                  "taps do not")
            else:
                self._phone_started = True
        await self.next_frame()
        self.ready_at = time.monotonic()
        self.ready.set()

    def screen(self) -> str:
        return str(self.root.ids.screens.current)

    def show(self, name: str) -> None:
        screens = self.root.ids.screens
        if screens.current == "item" and name != "item":
            self.item_screen.stop_media()  # now, not after the screen change's frame
        if screens.current == name:
            screens.current_screen.refresh()
        else:
            screens.current = name

    def next_frame(self) -> asyncio.Future[None]:
        """Resolves once the window has drawn (and flipped) its next frame: what is on
        screen now is what the customer sees."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def flipped(*_args: Any) -> None:
            Window.unbind(on_flip=flipped)
            if not future.done():
                future.set_result(None)

        Window.bind(on_flip=flipped)
        Window.canvas.ask_update()
        return future

    # ---------------------------------------------------------------- status
    def report(self, line: str) -> None:
        log.info("app: %s", line)
        self._line(line, error=False)

    def report_error(self, line: str) -> None:
        log.warning("app error: %s", line)
        self.errors.append(line)
        self._line(line, error=True)

    def _line(self, line: str, *, error: bool) -> None:
        self.lines.append(("error: " if error else "") + line)
        del self.lines[:-KEEP_LINES]
        if self.root is not None:
            self.root.status_text = line
            self.root.status_is_error = error
        self.updated.set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` on the app's loop; a failure is shown, never lost."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                exc = t.exception()
                log.error("app task failed", exc_info=exc)
                self.report_error(f"{type(exc).__name__}: {exc}")

        task.add_done_callback(done)
        return task

    # ------------------------------------------------------------------ taps
    def start_tap(self, nfc_device: str) -> asyncio.Task[Any]:
        return self.spawn(self.tap(nfc_device))

    async def tap(self, nfc_device: str) -> PhoneSession | None:
        """Hold the phone to the display at ``nfc_device``."""
        if self.phone.credentials is None:
            self.report_error("sign in first: the display only talks to a signed-in phone")
            return None
        if not self._phone_started:
            self.report_error("Bluetooth is not on: no tap")
            return None
        name = next((d.name for d in self.displays if d.nfc_device == nfc_device), nfc_device)
        self.report(f"holding the phone to {name}...")
        try:
            session = await self.phone.tap(nfc_device, self.listener)
        except (OSError, TimeoutError, ConnectionError, ValueError) as exc:
            # (Phone.tap's TapError was shown already through on_error)
            self.report_error(f"tap on {name} failed: {exc}")
            return None
        self.session = session
        self.updated.set()
        return session

    def start_code(self, code: str) -> asyncio.Task[Any]:
        return self.spawn(self.present_code(code))

    async def present_code(self, code: str) -> PhoneSession | None:
        """The no-NFC path: the code a display shows, presented through the hub
        (handset_app.hubclient), then the BLE session as after a tap."""
        from handset_app.hubclient import HubError

        if self.hub_client is None:
            self.report_error("no hub known: sign in first (codes go through the hub)")
            return None
        if self.phone.credentials is None:
            self.report_error("sign in first: a code is presented as your account")
            return None
        if not self._phone_started:
            self.report_error("Bluetooth is not on: the display could not reach this phone")
            return None
        self.report(f"presenting code {code}...")
        try:
            session = await self.hub_client.attach(self.phone, code, listener=self.listener)
        except (HubError, ConnectionError, TimeoutError, ValueError) as exc:
            self.report_error(f"code {code} not accepted: {exc}")
            return None
        self.session = session
        self.updated.set()
        return session

    async def attach(self, node_id: str, zone: str, session_key: bytes, *,
                     channel: str = "code") -> PhoneSession:
        """A session authenticated elsewhere (the no-NFC path), with this app listening."""
        session = await self.phone.attach(node_id, zone, session_key, channel=channel,
                                          listener=self.listener)
        self.session = session
        return session

    def request_item(self, item_id: str) -> None:
        session = self.session
        if session is None:
            self.catalogue.mark(item_id, "Tap again")
            self.report_error("the session is over: tap the display again")
            return
        self.spawn(self._request(session, item_id))

    async def _request(self, session: PhoneSession, item_id: str) -> None:
        try:
            await session.request(item_id)
        except (ConnectionError, TimeoutError, ValueError) as exc:
            self.catalogue.mark(item_id, "Failed")
            self.report_error(f"could not ask for {item_id}: {exc}")

    async def leave_session(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            try:
                await session.leave()
            except (ConnectionError, TimeoutError) as exc:
                log.info("bye not delivered: %s", exc)

    # ------------------------------------------------- what the phone tells us
    def session_started(self, node_id: str, zone: str) -> None:
        self.catalogue.start(node_id, zone)
        self.report(f"connected to {zone or node_id} ({node_id})")
        if self.screen() not in ("inbox", "catalogue"):
            self.show("inbox")

    def item_arrived(self, entry: InboxEntry) -> None:
        self.catalogue.mark(entry.item_id, "Received", entry.title)
        if self.screen() == "inbox":
            self.inbox.refresh()
        self.report(f"new: {entry.title}")
        if self.item_shown:
            self.spawn(self._shown(entry))

    async def _shown(self, entry: InboxEntry) -> None:
        await self.next_frame()
        for callback in list(self.item_shown):
            callback(entry)

    def session_closed(self, reason: str) -> None:
        self.catalogue.closed(reason)
        self.session = None
        self.report(f"session over: {reason}")

    def open_item(self, item_id: str) -> None:
        entry = self.phone.item(item_id)
        if entry is None:
            self.report_error(f"{item_id} is not on this phone any more")
            return
        self.item_screen.show(entry)
        self.show("item")
        if not entry.opened and self.phone.credentials is not None:
            try:  # a signed open event, sent at the next contact
                self.phone.open_item(item_id)
            except (KeyError, RuntimeError, ValueError, OSError) as exc:
                self.report_error(f"could not record that you opened it: {exc}")

    # ----------------------------------------------------------- the account
    def start_sign_in(self, hub_url: str, username: str, password: str, *,
                      register: bool) -> asyncio.Task[Any]:
        return self.spawn(self.sign_in(hub_url, username, password, register=register))

    async def sign_in(self, hub_url: str, username: str, password: str, *,
                      register: bool) -> bool:
        from handset_app.hubclient import HubClient, HubError

        if not username or not password:
            self.report_error("give a user name and a password")
            return False
        what = "registering" if register else "signing in"
        try:
            client = self.hub_client
            if client is None or (hub_url and hub_url.rstrip("/") != client.url):
                client = HubClient(hub_url or self.hub_url)
        except ValueError as exc:
            self.report_error(f"{what}: {exc}")
            return False
        self.report(f"{what} as {username} at {client.url}...")
        call = client.register if register else client.sign_in
        try:  # blocking HTTP: in a thread, the window stays live
            await asyncio.to_thread(call, username, password, phone=self.phone)
        except (HubError, ValueError, KeyError) as exc:
            self.report_error(f"{what} failed: {exc}")
            return False
        self.hub_client = client
        self.hub_url = client.url
        creds = self.phone.credentials
        self.report(f"signed in: this phone is {creds.handset_id if creds else '?'}")
        self.account.refresh()
        self.show("inbox")
        return True

    def reset_identity(self) -> None:
        try:
            self.phone.reset_identity()
        except OSError as exc:
            self.report_error(f"the identity could not be reset: {exc}")
            return
        self.session = None
        self.report("identity reset: sign in again for a new pseudonymous id")
        self.show("account")

    def delete_local_data(self) -> None:
        try:
            self.phone.delete_local_data()
        except OSError as exc:
            self.report_error(f"the data could not be deleted: {exc}")
            return
        self.session = None
        self.inbox.refresh()
        self.report("everything this app kept is deleted")
        self.show("account")

    # --------------------------------------------------------------- closing
    async def shutdown(self) -> None:
        """After the window closed: stop what runs and close the phone's radio."""
        handler = getattr(self, "_errors_handler", None)
        if handler is not None and handler in ExceptionManager.handlers:
            ExceptionManager.remove_handler(handler)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._phone_started:
            await self.phone.close()
            self._phone_started = False


async def run_app(app: TapcastApp) -> None:
    """Run the app until its window closes (or ``app.stop()``), then shut it down."""
    try:
        await app.async_run(async_lib="asyncio")
    finally:
        await app.shutdown()
