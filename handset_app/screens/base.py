"""What every screen of the app shares: the running app, and a refresh when shown (the
phone's data can change behind a screen that is not on view: a tap while on Settings)."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from kivy.app import App
from kivy.uix.screenmanager import Screen

if TYPE_CHECKING:
    from handset_app.app import TapcastApp


class AppScreen(Screen):
    @property
    def tapcast(self) -> TapcastApp:
        app: Any = App.get_running_app()
        return app  # type: ignore[no-any-return]

    def on_pre_enter(self, *args: Any) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Show what the phone holds now."""


def when(ts: float) -> str:
    """A moment on the phone's own clock, in its local time."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))
