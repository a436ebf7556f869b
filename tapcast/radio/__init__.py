"""Radio adapters shared by the parts: BLE adapters named by a string, as nfcpy names
its readers ("usb:054c:06c3", "tty:AMA0:pn532", "udp:HOST:PORT").

BLE adapter strings (``[ble] adapter`` in node.toml, ``--ble`` for handsets):

- ``bluez`` or ``bluez:hci1``: bleak's own backend on the platform (BlueZ on a Pi),
  the given HCI adapter or the default one.
- ``bumble:<transport>``: a bumble host on a bumble HCI transport, for example
  ``bumble:tcp-client:127.0.0.1:7001`` (a controller of the virtual hall's BLE air) or
  ``bumble:usb:0`` (a USB dongle driven by bumble instead of BlueZ). bleak talks to it
  through the bumble-based client backend in :mod:`tapcast.radio.bumble`.

Nothing here imports bleak or bumble at import time: a node without a radio library
can still import this module and get a clear error when it opens an adapter.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BleAdapterSpec:
    """A parsed BLE adapter string. ``kind`` is "bluez" or "bumble"; ``target`` the HCI
    adapter name (bluez, may be empty) or the bumble transport spec."""

    kind: str
    target: str = ""

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}" if self.target else self.kind


def parse_ble_adapter(spec: str) -> BleAdapterSpec:
    """Parse ``bluez[:hciN]`` or ``bumble:<transport>``; ValueError says what is accepted."""
    kind, _, target = spec.strip().partition(":")
    if kind == "bluez":
        if target and not (target.startswith("hci") and target[3:].isdigit()):
            raise ValueError(f"BLE adapter {spec!r}: after 'bluez:' give an HCI adapter "
                             "such as hci0")
        return BleAdapterSpec("bluez", target)
    if kind == "bumble":
        if not target:
            raise ValueError(f"BLE adapter {spec!r}: 'bumble:' needs a bumble transport, "
                             "for example bumble:tcp-client:127.0.0.1:7001")
        return BleAdapterSpec("bumble", target)
    raise ValueError(f"BLE adapter {spec!r}: use 'bluez', 'bluez:hci0' or "
                     "'bumble:<transport>' (for example bumble:tcp-client:127.0.0.1:7001)")
