"""The inbox: what reached this phone, kept on it (works offline), and one item opened:
its text, its image, audio or video played with Kivy's own widgets, a ticket's
scannable code, a coupon to show at the counter. Opening an item tells the phone
(Phone.open_item), which queues a handset-signed open event for the next contact."""
from __future__ import annotations

import base64
import logging
import mimetypes
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kivy.core.audio import SoundLoader
from kivy.factory import Factory
from kivy.metrics import dp
from kivy.properties import BooleanProperty, NumericProperty, StringProperty
from kivy.uix.behaviors import ButtonBehavior
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.button import Button
from kivy.uix.image import Image
from kivy.uix.video import Video

from handset_app.screens.base import AppScreen, when
from handset_app.screens.qr import qr_texture

if TYPE_CHECKING:
    from handset_app.phone import InboxEntry
    from tapcast.keys import HandsetCredentials

log = logging.getLogger(__name__)

KIND_NAMES = {"article": "Article", "coupon": "Coupon", "media": "Media",
              "ticket": "E-ticket", "goods": "Digital good"}
#: Extensions of media types Python's mimetypes does not know under these names.
MEDIA_EXTENSIONS = {"audio/wav": ".wav", "audio/wave": ".wav", "audio/mpeg": ".mp3",
                    "audio/ogg": ".ogg", "audio/mp4": ".m4a", "video/mp4": ".mp4",
                    "video/webm": ".webm"}
#: What a ticket's code starts with (docs/handset_app.md, "E-tickets").
TICKET_PREFIX = "TAPCAST-TICKET"


def ticket_code(entry: InboxEntry, credentials: HandsetCredentials | None) -> str:
    """What a ticket's QR code says: the item, its version and the holder's pseudonymous
    handset id, signed with the handset key (a gate checks it against the handset's
    hub-signed certificate). Unsigned when the phone has no identity now."""
    holder = credentials.handset_id if credentials is not None else "-"
    body = f"{TICKET_PREFIX}:{entry.item_id}:{entry.version}:{holder}"
    if credentials is None:
        return body
    signature = credentials.private_key.sign(body.encode())
    return body + ":" + base64.urlsafe_b64encode(signature).decode().rstrip("=")


def playable_path(entry: InboxEntry, cache: Path) -> Path:
    """The item's file under a name with its type's extension: Kivy's SoundLoader picks
    its player by extension, and the phone keeps files under their sha256 alone. A
    symlink in the app's cache, made once."""
    assert entry.file is not None
    ext = MEDIA_EXTENSIONS.get(entry.media_type or "") or \
        mimetypes.guess_extension(entry.media_type or "") or ""
    if not ext or entry.file.suffix == ext:
        return entry.file
    link = cache / (entry.file.name + ext)
    if not link.exists():
        cache.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)  # a dangling link from deleted data
        link.symlink_to(entry.file.resolve())
    return link


def describe(entry: InboxEntry) -> str:
    where = entry.zone or entry.node_id
    who = f"{entry.merchant} - " if entry.merchant else ""
    asked = ", asked for" if entry.requested else ""
    return f"{KIND_NAMES.get(entry.kind, entry.kind)} - {who}{where} - {when(entry.received)}{asked}"


class InboxRow(ButtonBehavior, BoxLayout):
    item_id = StringProperty("")
    title = StringProperty("")
    subtitle = StringProperty("")
    opened = BooleanProperty(False)

    def on_release(self) -> None:
        from kivy.app import App

        App.get_running_app().open_item(self.item_id)  # type: ignore[attr-defined]


class InboxScreen(AppScreen):
    count = NumericProperty(0)

    def refresh(self) -> None:
        entries = self.tapcast.phone.inbox()
        rows = self.ids.rows
        rows.clear_widgets()
        for entry in entries:
            rows.add_widget(InboxRow(item_id=entry.item_id, title=entry.title,
                                     subtitle=describe(entry), opened=entry.opened))
        self.count = len(entries)


class ItemScreen(AppScreen):
    title = StringProperty("")
    meta = StringProperty("")
    item_id = StringProperty("")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sound: Any = None
        self.video: Video | None = None

    def show(self, entry: InboxEntry) -> None:
        self.stop_media()
        self.item_id = entry.item_id
        self.title = entry.title
        self.meta = describe(entry)
        content = self.ids.content
        content.clear_widgets()
        if entry.body:
            content.add_widget(Factory.WrapLabel(text=entry.body))
        if entry.kind == "ticket":
            self._add_ticket(entry)
        elif entry.kind == "coupon":
            content.add_widget(Factory.Heading(
                text=f"Show this coupon at the counter\n{entry.title}", halign="center"))
        media = entry.media_type or ""
        if entry.file is not None and entry.file.exists():
            if media.startswith("image/"):
                content.add_widget(Image(source=str(entry.file), fit_mode="contain",
                                         size_hint_y=None, height=dp(320)))
            elif media.startswith("video/"):
                self._add_video(entry)
            elif media.startswith("audio/"):
                self._add_audio(entry)
            else:
                size = entry.file.stat().st_size
                content.add_widget(Factory.WrapLabel(
                    text=f"File: {entry.file.name} ({media or 'unknown type'}, {size} bytes), "
                         "kept on this phone"))
        elif media:
            content.add_widget(Factory.WrapLabel(text=f"({media} file not on this phone)"))

    @property
    def cache(self) -> Path:
        return Path(self.tapcast.phone.data_dir) / "app-cache"

    def _add_ticket(self, entry: InboxEntry) -> None:
        code = ticket_code(entry, self.tapcast.phone.credentials)
        qr = Image(texture=qr_texture(code), fit_mode="contain", size_hint_y=None,
                   height=dp(280))
        qr.ticket_code = code  # what the code says (the window tests read it back)
        self.ids.content.add_widget(qr)
        self.ids.content.add_widget(Factory.WrapLabel(
            text="Show this code at the entrance", halign="center"))

    def _add_video(self, entry: InboxEntry) -> None:
        assert entry.file is not None
        self.video = Video(source=str(playable_path(entry, self.cache)), state="stop",
                           fit_mode="contain",
                           size_hint_y=None, height=dp(300), options={"eos": "stop"})
        button = Button(text="Play", size_hint_y=None, height=dp(40))

        def toggle(_button: Button) -> None:
            if self.video is None:
                return
            self.video.state = "pause" if self.video.state == "play" else "play"
            button.text = "Pause" if self.video.state == "play" else "Play"

        button.bind(on_release=toggle)
        self.ids.content.add_widget(self.video)
        self.ids.content.add_widget(button)

    def _add_audio(self, entry: InboxEntry) -> None:
        assert entry.file is not None
        button = Button(text="Play", size_hint_y=None, height=dp(40))

        def toggle(_button: Button) -> None:
            if self.sound is None:
                self.sound = SoundLoader.load(str(playable_path(entry, self.cache)))
                if self.sound is None:
                    self.tapcast.report_error(f"{entry.title}: this phone cannot play "
                                              f"{entry.media_type}")
                    return
            if self.sound.state == "play":
                self.sound.stop()
                button.text = "Play"
            else:
                self.sound.play()
                button.text = "Stop"

        button.bind(on_release=toggle)
        self.ids.content.add_widget(button)

    def stop_media(self) -> None:
        if self.sound is not None:
            self.sound.stop()
            self.sound.unload()
            self.sound = None
        if self.video is not None:
            self.video.state = "stop"
            self.video.unload()
            self.video = None

    def on_leave(self, *args: Any) -> None:
        self.stop_media()
