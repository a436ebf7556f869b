"""The hub's content files, kept once each under their sha256 in one directory.

Why content-addressed files on disk and not rows: a node asks for a file by the hash its
signed manifest names, and verifies what it got against that same hash, so the name is
the check; HTTP range requests (a download cut halfway and resumed) are a file read; and
two items, or two versions of one item, that carry the same bytes share them.

Nothing is half-stored: an upload is written to a temporary file in the same directory,
hashed and type-checked while it is written, flushed to disk, and only then renamed to
its final name (a rename within one file system is atomic). An upload that is too big,
of the wrong type, or cut off leaves nothing behind. A file whose database row was never
committed (the hub killed between the two) is an orphan that costs disk only: nothing
names it, and storing the same bytes again finds it in place.

With several hub boxes (PostgreSQL), ``[hub] files`` must be one shared directory.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import filetype

from tapcast.fsutil import fsync_dir

log = logging.getLogger(__name__)

__all__ = ["FileStore", "StoredFile", "FileError", "SHA256_RE", "sniff"]

SHA256_RE = re.compile(r"[0-9a-f]{64}")
CHUNK = 256 * 1024
#: How much of the start of a file type sniffing looks at (filetype reads 8 KiB at most).
SNIFF_BYTES = 8192


class FileError(ValueError):
    """An upload that cannot be stored; the message says why and what to do."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class StoredFile:
    sha256: str
    size: int
    media_type: str


def sniff(head: bytes) -> str | None:
    """The media type the bytes say they are (magic numbers, not the file's name or
    what the browser claimed), or None when they match no known type."""
    kind = filetype.guess(head)
    return kind.mime if kind is not None else None


class FileStore:
    """Files under ``root/<first two hex digits>/<sha256>``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        if not SHA256_RE.fullmatch(sha256):
            raise FileError(f"not a sha256 in hex: {sha256[:80]!r}")
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put(self, stream: BinaryIO, *, max_size: int,
            allowed: dict[str, str] | None = None, what: str = "file") -> StoredFile:
        """Store what ``stream`` holds; FileError (nothing kept) when it is empty, over
        ``max_size`` bytes, or (``allowed``: media type -> what to call it) of a type not
        in ``allowed``."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".upload-", dir=self.root)
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            size = 0
            head = b""
            with os.fdopen(fd, "wb") as out:
                while True:
                    chunk = stream.read(CHUNK)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > max_size:
                        raise FileError(f"the {what} is larger than {_mb(max_size)}: make it "
                                        f"smaller, or raise [hub] max_file_mb", 413)
                    if len(head) < SNIFF_BYTES:
                        head += chunk[:SNIFF_BYTES - len(head)]
                        if allowed is not None and len(head) >= SNIFF_BYTES:
                            _check_type(head, allowed, what)  # refuse early, not after 100 MB
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if size == 0:
                raise FileError(f"the {what} is empty")
            media_type = (_check_type(head, allowed, what) if allowed is not None
                          else sniff(head) or "application/octet-stream")
            sha = digest.hexdigest()
            final = self.path(sha)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)  # same bytes already there: replaced by themselves
            fsync_dir(final.parent)
            return StoredFile(sha, size, media_type)
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, data: bytes, **kwargs: object) -> StoredFile:
        import io

        return self.put(io.BytesIO(data), **kwargs)  # type: ignore[arg-type]


def _check_type(head: bytes, allowed: dict[str, str], what: str) -> str:
    found = sniff(head)
    if found in allowed:
        return found
    accepted = ", ".join(sorted(set(allowed.values())))
    shown = f"a {found} file" if found else "not a file type the hub recognises"
    raise FileError(f"the {what} is {shown}; this kind of item takes {accepted}", 415)


def _mb(n: int) -> str:
    return f"{n / 1e6:g} MB"
