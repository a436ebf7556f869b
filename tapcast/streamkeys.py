"""Key files of the authenticated event stream (docs/mqtt.md, "Authenticated stream").

The hub holds one *stream secret* (``stream.secret``, written by ``tapcast keys
init-hub`` next to the hub authority, copied to the box that runs ``hub ingest``); a
node holds only its own *stream key* (``stream.key``, written by ``tapcast keys node``),
derived from the secret and the node id (tapcast.protocol.mqtt.stream_key). Why a MAC
and not the node's Ed25519 signature: the hub checks every batch, and an Ed25519
verification costs about 60 us against 1.6 us for HMAC-SHA256 here, which at 20,000
batches a second is most of a core. Both files are 64 hex digits and a newline, mode
0600.
"""
from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from tapcast.protocol.mqtt import stream_key

log = logging.getLogger(__name__)

STREAM_SECRET_FILE = "stream.secret"
STREAM_KEY_FILE = "stream.key"


class StreamKeyError(ValueError):
    """A stream key file is missing or unreadable; the message says which and what to do."""


def _write(path: Path, raw: bytes, *, replace: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(raw.hex() + "\n")


def _read(path: Path, what: str, fix: str) -> bytes:
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise StreamKeyError(f"{path}: no {what}; {fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StreamKeyError(f"{path}: cannot read the {what}: {exc}") from None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise StreamKeyError(f"{path}: the {what} is not 64 hex digits") from None
    if len(raw) != 32:
        raise StreamKeyError(f"{path}: the {what} is {len(raw)} bytes, expected 32")
    return raw


def write_stream_secret(directory: str | Path, secret: bytes | None = None) -> bytes:
    """Create the hub's stream secret (a new random one unless given) in ``directory``;
    refuses to replace one (every node's key derives from it)."""
    secret = secrets.token_bytes(32) if secret is None else secret
    if len(secret) != 32:
        raise ValueError("a stream secret is 32 bytes")
    path = Path(directory) / STREAM_SECRET_FILE
    try:
        _write(path, secret, replace=False)
    except FileExistsError:
        raise StreamKeyError(f"{path} exists; refusing to replace it (every node's stream "
                             "key derives from it)") from None
    return secret


def load_stream_secret(path: str | Path) -> bytes:
    return _read(Path(path), "hub stream secret",
                 "create it with `tapcast keys init-hub` (or copy it from the folder where "
                 "the hub authority lives) and set [hub] stream_secret to its path")


def write_node_stream_key(directory: str | Path, secret: bytes, node_id: str,
                          filename: str = STREAM_KEY_FILE) -> bytes:
    """Write the node's stream key (derived from the hub's secret) into ``directory``."""
    key = stream_key(secret, node_id)
    _write(Path(directory) / filename, key, replace=True)
    return key


def load_node_stream_key(path: str | Path) -> bytes:
    return _read(Path(path), "node stream key",
                 "provision it with `tapcast keys node --hub-dir HUB_KEYS ...`")
