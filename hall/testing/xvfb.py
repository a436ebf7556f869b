"""A private X server for window tests and benchmarks of the handset app: Xvfb on a
display number it picks itself (-displayfd), so nothing is guessed and two runs on one
machine never share a display. `make test` installs Xvfb (Debian's xvfb)."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

__all__ = ["Xvfb", "kivy_environment"]

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

    def __enter__(self) -> Xvfb:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def kivy_environment(display: str, kivy_home: Path) -> dict[str, str]:
    """What Kivy needs to open a real window on ``display`` in a test or a benchmark
    (the DESIGN's "Kivy" paragraph)."""
    return {
        "DISPLAY": display,
        "SDL_VIDEODRIVER": "x11",
        "KIVY_NO_ARGS": "1",  # the caller's arguments are not Kivy's
        "KIVY_LOG_MODE": "PYTHON",  # else Kivy takes the root logger
        "KIVY_NO_FILELOG": "1",
        "KIVY_CLIPBOARD": "sdl2",
        "KIVY_HOME": str(kivy_home),  # its config.ini, not in ~/.kivy
        "KIVY_AUDIO": "ffpyplayer,sdl2",
        # no sound card under Xvfb: SDL's dummy audio driver plays to nowhere, so audio
        # and video play (and time) as they would on a phone
        "SDL_AUDIODRIVER": "dummy",
    }
