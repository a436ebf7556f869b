"""Helpers for the app's window tests: a private Xvfb display, Kivy's environment for a
real X11 window, walking the widget tree, screenshots as test artifacts.

Kivy keeps one window per process and reads its environment when first imported, so a
test run starts one Xvfb (session-wide) and sets the environment before anything
imports Kivy. ``SDL_VIDEODRIVER=x11`` is what makes a missing display fail loudly: with
no driver named, SDL falls back to an offscreen one and a test would pass with no
window at all (tests check :func:`assert_real_window` too)."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ARTIFACTS = Path(os.environ.get("TAPCAST_TEST_ARTIFACTS",
                                Path(__file__).resolve().parents[1] / "test-artifacts"))
XVFB_START_TIMEOUT = 15.0


class Xvfb:
    """An X server on a display number it picks itself (-displayfd): nothing to guess,
    no clash with another test run's server on the same machine."""

    def __init__(self, screen: str = "1024x768x24") -> None:
        self.screen = screen
        self.proc: subprocess.Popen[bytes] | None = None
        self.display = ""

    def start(self) -> str:
        xvfb = shutil.which("Xvfb")
        if xvfb is None:
            raise RuntimeError("Xvfb is not installed: `make test` installs it (Debian's "
                               "xvfb), or apt-get install xvfb")
        read, write = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [xvfb, "-displayfd", str(write), "-screen", "0", self.screen,
                 "-nolisten", "tcp", "-noreset"],
                pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        finally:
            os.close(write)
        number = b""
        deadline = time.monotonic() + XVFB_START_TIMEOUT
        with os.fdopen(read, "rb") as pipe:
            while not number.endswith(b"\n") and time.monotonic() < deadline:
                chunk = pipe.read(1)  # Xvfb writes "N\n" once it accepts connections
                if not chunk:
                    break
                number += chunk
        if not number.strip().isdigit():
            err = b""
            if self.proc.poll() is not None and self.proc.stderr is not None:
                err = self.proc.stderr.read()
            self.stop()
            raise RuntimeError(f"Xvfb did not start: {err.decode(errors='replace')[-500:]}")
        self.display = f":{int(number)}"
        return self.display

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def kivy_environment(display: str, kivy_home: Path) -> dict[str, str]:
    """What Kivy needs to open a real window on ``display`` inside pytest (the
    DESIGN's "Kivy" paragraph)."""
    return {
        "DISPLAY": display,
        "SDL_VIDEODRIVER": "x11",
        "KIVY_NO_ARGS": "1",  # pytest's arguments are not Kivy's
        "KIVY_LOG_MODE": "PYTHON",  # else Kivy takes the root logger
        "KIVY_NO_FILELOG": "1",
        "KIVY_CLIPBOARD": "sdl2",
        "KIVY_HOME": str(kivy_home),  # its config.ini, not in ~/.kivy
        "KIVY_AUDIO": "ffpyplayer,sdl2",
    }


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
