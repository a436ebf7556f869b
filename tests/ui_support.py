"""Helpers for the app's window tests: a private Xvfb display, Kivy's environment for a
real X11 window, walking the widget tree, screenshots as test artifacts.

Kivy keeps one window per process and reads its environment when first imported, so a
test run starts one Xvfb (session-wide) and sets the environment before anything
imports Kivy. ``SDL_VIDEODRIVER=x11`` is what makes a missing display fail loudly: with
no driver named, SDL falls back to an offscreen one and a test would pass with no
window at all (tests check :func:`assert_real_window` too)."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hall.testing.xvfb import Xvfb, kivy_environment

__all__ = ["ARTIFACTS", "Xvfb", "assert_real_window", "find", "kivy_environment",
           "label_texts", "screenshot", "walk"]

ARTIFACTS = Path(os.environ.get("TAPCAST_TEST_ARTIFACTS",
                                Path(__file__).resolve().parents[1] / "test-artifacts"))


def assert_real_window() -> None:
    """The app's window is an SDL2 window on the X server named by DISPLAY."""
    from kivy.core.window import Window
    from kivy.core.window.window_info import WindowInfoX11

    assert type(Window).__name__ == "WindowSDL", f"not an SDL2 window: {type(Window)}"
    info = Window.get_window_info()
    assert isinstance(info, WindowInfoX11), f"not an X11 window (SDL chose {info!r})"
    assert info.window, "no X window id"


def walk(widget: Any) -> Iterator[Any]:
    yield from widget.walk(restrict=False)


def label_texts(widget: Any) -> list[str]:
    """The text of every Label under ``widget`` (buttons are labels too)."""
    from kivy.uix.label import Label

    return [w.text for w in walk(widget) if isinstance(w, Label) and w.text]


def find(widget: Any, cls: type, **attrs: Any) -> list[Any]:
    return [w for w in walk(widget) if isinstance(w, cls)
            and all(getattr(w, k, None) == v for k, v in attrs.items())]


async def screenshot(app: Any, name: str) -> Path:
    """The window as the customer sees it now, saved under test-artifacts/handset_ui/.
    Two frames first: Window.screenshot reads the back buffer, which may hold the frame
    before the last."""
    from kivy.core.window import Window

    await app.next_frame()
    await app.next_frame()
    directory = ARTIFACTS / "handset_ui"
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{name}.png"
    # Kivy numbers the file itself (name-0001.png, ...): it is renamed to name.png
    written = Window.screenshot(name=str(directory / f"{name}-.png"))
    if not written:
        raise AssertionError("Window.screenshot wrote nothing")
    Path(written).replace(target)
    assert target.stat().st_size > 1000, f"{target} is too small to be a screenshot"
    print(f"screenshot: {target}")
    return target
