"""The simulation's stand-in for holding the phone to a display: one button per display
of the hall (its nfc device string, given on the command line or by the demo), and the
no-NFC path: type the code a display shows."""
from __future__ import annotations

from typing import Any

from kivy.properties import BooleanProperty
from kivy.uix.button import Button

from handset_app.screens.base import AppScreen


class TapScreen(AppScreen):
    has_displays = BooleanProperty(False)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.buttons: dict[str, Button] = {}

    def set_displays(self, displays: list[Any]) -> None:
        box = self.ids.displays
        box.clear_widgets()
        self.buttons.clear()
        for display in displays:
            button = Button(text=f"Tap {display.name}", size_hint_y=None, height=44)
            button.bind(on_release=lambda _b, d=display: self.tapcast.start_tap(d.nfc_device))
            self.buttons[display.name] = button
            box.add_widget(button)
        self.has_displays = bool(displays)

    def enter_code(self) -> None:
        code = self.ids.code.text.strip()
        if code:
            self.tapcast.start_code(code)
