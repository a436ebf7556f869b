"""The catalogue of the node just tapped: browse it, ask for items (asked-for items pass
the consent rules: the customer wanted them), watch a large one come in (Phone's
on_progress), and say bye when done. Lives only while the session does."""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from kivy.properties import BooleanProperty, NumericProperty, StringProperty
from kivy.uix.boxlayout import BoxLayout

from handset_app.screens.base import AppScreen

if TYPE_CHECKING:
    from tapcast.protocol.ble import CatalogueEntry

log = logging.getLogger(__name__)


def price(cents: int) -> str:
    return "free" if not cents else f"{cents // 100}.{cents % 100:02d} EUR"


class CatalogueRow(BoxLayout):
    item_id = StringProperty("")
    title = StringProperty("")
    detail = StringProperty("")
    #: "Get", "Asked", "Received", "In inbox", "Refused", "Failed" or "Tap again"
    action = StringProperty("Get")
    done = NumericProperty(0)
    total = NumericProperty(0)

    def request(self) -> None:
        from kivy.app import App

        app: Any = App.get_running_app()
        self.action = "Asked"
        app.request_item(self.item_id)


class CatalogueScreen(AppScreen):
    heading = StringProperty("Catalogue")
    hint = StringProperty("Tap a display to see what it offers.")
    live = BooleanProperty(False)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rows: dict[str, CatalogueRow] = {}

    def start(self, node_id: str, zone: str) -> None:
        """A new session: the last node's catalogue goes."""
        self.ids.rows.clear_widgets()
        self.rows.clear()
        self.heading = f"{zone or node_id}"
        self.hint = f"Node {node_id}: waiting for its catalogue..."
        self.live = True

    def show_entries(self, entries: list[CatalogueEntry]) -> None:
        inbox = {entry.item_id for entry in self.tapcast.phone.inbox()}
        self.hint = f"{len(entries)} item(s) here. Get what you want while you are near."
        for entry in entries:
            row = self.rows.get(entry.id)
            if row is None:
                row = CatalogueRow(item_id=entry.id)
                self.rows[entry.id] = row
                self.ids.rows.add_widget(row)
            row.title = entry.title
            row.detail = f"{entry.kind} - {price(entry.price_cents)}"
            if entry.id in inbox and row.action == "Get":
                row.action = "In inbox"

    def progress(self, item_id: str, done: int, total: int) -> None:
        row = self.rows.get(item_id)
        if row is not None:
            row.total, row.done = total, done

    def mark(self, item_id: str, action: str, title: str = "") -> None:
        """An item's state in this session. An item the node pushed unasked gets a row
        of its own when the catalogue does not list it (it comes before the catalogue)."""
        row = self.rows.get(item_id)
        if row is None:
            if not self.live:
                return
            row = CatalogueRow(item_id=item_id, title=title or item_id,
                               detail="pushed by the display")
            self.rows[item_id] = row
            self.ids.rows.add_widget(row, index=len(self.ids.rows.children))
        row.action = action
        if action == "Received" and row.total:
            row.done = row.total

    def closed(self, reason: str) -> None:
        self.live = False
        self.hint = f"Session over ({reason}). Tap the display again for more."
        for row in self.rows.values():  # no more requests in this session
            if row.action in ("Get", "Asked"):
                row.action = "Tap again"

    def leave(self) -> None:
        app: Any = self.tapcast
        asyncio.ensure_future(app.leave_session())
