"""Scannable codes drawn in the app: a QR code (segno) as a Kivy texture, one texel per
module, so it scales sharp with nearest-neighbour filtering on any screen."""
from __future__ import annotations

import logging

import segno
from kivy.graphics.texture import Texture

log = logging.getLogger(__name__)

#: Light modules around the code, as the QR standard asks (4 modules).
QUIET_ZONE = 4


def qr_matrix(data: str, *, border: int = QUIET_ZONE) -> list[list[bool]]:
    """The code's modules, top row first, True for dark, with the quiet zone."""
    code = segno.make(data, error="m", micro=False)
    return [[bool(dark) for dark in row] for row in code.matrix_iter(scale=1, border=border)]


def qr_texture(data: str) -> Texture:
    """A texture of ``data``'s QR code (RGBA, 4 bytes a texel: rows need no padding)."""
    rows = qr_matrix(data)
    height, width = len(rows), len(rows[0])
    buf = bytearray()
    for row in reversed(rows):  # a Kivy texture's first row is the bottom one
        for dark in row:
            buf += b"\x00\x00\x00\xff" if dark else b"\xff\xff\xff\xff"
    texture = Texture.create(size=(width, height), colorfmt="rgba")
    texture.blit_buffer(bytes(buf), colorfmt="rgba", bufferfmt="ubyte")
    texture.mag_filter = "nearest"
    texture.min_filter = "nearest"
    return texture
