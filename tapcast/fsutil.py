"""File-system helpers both the hub and the node need (stdlib only)."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_dir"]


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries: a rename into it survives a power cut only once the
    directory itself is on disk. Best effort (some file systems cannot open a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
