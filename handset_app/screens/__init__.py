"""The app's screens: Python classes here, their layout in tapcast.kv. This module
itself imports no Kivy (the command line checks its options before a window opens)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

KV_FILE = Path(__file__).with_name("tapcast.kv")


def load_kv() -> None:
    """Register the screens' classes and load their layout (once per process)."""
    from kivy.factory import Factory
    from kivy.lang import Builder

    from handset_app.screens.account import SignInScreen
    from handset_app.screens.catalogue import CatalogueRow, CatalogueScreen
    from handset_app.screens.inbox import InboxRow, InboxScreen, ItemScreen
    from handset_app.screens.places import PlacesScreen
    from handset_app.screens.settings import SettingsScreen
    from handset_app.screens.tap import TapScreen

    for cls in (SignInScreen, CatalogueRow, CatalogueScreen, InboxRow, InboxScreen,
                ItemScreen, PlacesScreen, SettingsScreen, TapScreen):
        if cls.__name__ not in Factory.classes:
            Factory.register(cls.__name__, cls=cls)
    if str(KV_FILE) not in Builder.files:
        Builder.load_file(str(KV_FILE))


@dataclass(frozen=True)
class Display:
    """A hall display the simulated phone can be held to (the Tap screen): its name and
    its reader's nfcpy device string."""

    name: str
    nfc_device: str


def parse_display(text: str) -> Display:
    """``NAME=udp:HOST:PORT`` or just the device string (then it is its own name)."""
    name, sep, device = text.partition("=")
    if not sep:
        name, device = text, text
    if not device.strip().startswith(("udp:", "usb:", "tty:")):
        raise ValueError(f"display {text!r}: give NAME=DEVICE with an nfcpy device "
                         "(udp:HOST:PORT, usb:..., tty:...)")
    return Display(name.strip() or device.strip(), device.strip())
