"""Content manifests (hub to node) and the node's file requests (docs/content.md,
"Manifests and sync", has the bytes and a worked example).

A manifest says everything a node serves: each item (key, version, kind, text, price,
its file by sha256, its schedule) and the node's time zone. It travels as the body of a
signed object (tapcast.signed: kind ``manifest``, subject the node id, a serial that
only grows, an expiry), published retained on ``tapcast/v1/node/{id}/manifest``, so a
node that was away gets the latest one when it reconnects. The body is JSON:

    {"node_id": "n1", "tz": "Europe/Berlin", "files_url": "http://hub:8080",
     "items": [{"key": "coffee", "version": 2, "kind": "coupon", "title": "...",
                "body": "...", "price_cents": 0, "merchant": "Bean & Leaf",
                "file": {"sha256": "<64 hex>", "size": 69, "media_type": "image/png",
                         "name": "coffee.png"} | null,
                "schedule": {...tapcast.schedule.Schedule...}}]}

Files are fetched over HTTP from ``files_url`` + ``/node/v1/files/<sha256>``, with the
query ``node=<id>&ts=<unix seconds>&sig=<hex>``: ``sig`` is HMAC-SHA256 under the
node's stream key (the one its event batches are tagged with; the hub derives it from
its stream secret) over FILE_CONTEXT, the node id, a NUL, the sha256 in hex, a NUL and
``ts`` in decimal. Why the node signs each request rather than the hub signing URLs in
the manifest: the manifest is retained and lives for days, a URL in it would be a
bearer token for as long; a request signed now is good for FILE_REQUEST_WINDOW only.
"""
from __future__ import annotations

import hmac
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from tapcast.protocol.mqtt import ID_PATTERN, PayloadError, node_topic
from tapcast.schedule import Schedule, ScheduleError, validate

__all__ = ["MANIFEST_KIND", "Manifest", "ManifestItem", "ManifestFile", "ManifestError",
           "encode_manifest", "decode_manifest", "manifest_topic", "FILE_CONTEXT",
           "FILE_REQUEST_WINDOW", "file_request_sig", "check_file_request", "MAX_ITEMS",
           "FILES_PATH"]

MANIFEST_KIND = "manifest"
#: Most items one node serves; a manifest body stays well under tapcast.signed.MAX_BODY.
MAX_ITEMS = 500
#: Largest single file a manifest may name (the hub's max_file_mb is far below it).
MAX_FILE_SIZE = 2**40
FILE_CONTEXT = b"tapcast/v1 node file\x00"
#: How far a file request's ``ts`` may be from the hub's clock, in seconds.
FILE_REQUEST_WINDOW = 600.0
FILES_PATH = "/node/v1/files/"

Key = Annotated[str, Meta(pattern=ID_PATTERN)]
Sha256 = Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]
Text = Annotated[str, Meta(max_length=20_000)]


class ManifestError(PayloadError):
    """A manifest body that does not decode or does not hold; says what is wrong."""


class ManifestFile(msgspec.Struct, forbid_unknown_fields=True):
    sha256: Sha256
    size: Annotated[int, Meta(ge=1, le=MAX_FILE_SIZE)]
    media_type: Annotated[str, Meta(min_length=1, max_length=100)]
    name: Annotated[str, Meta(min_length=1, max_length=255)]


class ManifestItem(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    key: Key
    version: Annotated[int, Meta(ge=1)]
    kind: Literal["article", "coupon", "media", "ticket", "goods"]
    title: Annotated[str, Meta(min_length=1, max_length=200)]
    body: Text
    price_cents: Annotated[int, Meta(ge=0, le=100_000)]
    file: ManifestFile | None
    schedule: Schedule
    #: who offers it; left out when none is named (omit_defaults), so a manifest without
    #: merchants encodes as before
    merchant: Annotated[str, Meta(max_length=64)] = ""


class Manifest(msgspec.Struct, forbid_unknown_fields=True):
    node_id: Key
    tz: Annotated[str, Meta(min_length=1, max_length=64)]
    files_url: Annotated[str, Meta(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
                                   max_length=300)]
    items: Annotated[list[ManifestItem], Meta(max_length=MAX_ITEMS)]


_decoder = msgspec.json.Decoder(Manifest)
_encoder = msgspec.json.Encoder()


def manifest_topic(node_id: str) -> str:
    return node_topic(node_id, "manifest")


def encode_manifest(manifest: Manifest) -> bytes:
    return _encoder.encode(manifest)


def decode_manifest(body: bytes, node_id: str | None = None) -> Manifest:
    """The manifest in a signed object's body; ManifestError when it does not decode,
    names another node, repeats a key or carries a schedule that does not hold."""
    try:
        manifest = _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeEncodeError) as exc:
        raise ManifestError(f"malformed manifest: {exc}") from None
    except RecursionError:
        raise ManifestError("malformed manifest: nested too deeply") from None
    if node_id is not None and manifest.node_id != node_id:
        raise ManifestError(f"manifest names node {manifest.node_id!r}, not {node_id!r}")
    seen: set[str] = set()
    for item in manifest.items:
        if item.key in seen:
            raise ManifestError(f"manifest lists item {item.key!r} twice")
        seen.add(item.key)
        try:
            validate(item.schedule)
        except ScheduleError as exc:
            raise ManifestError(f"item {item.key!r}: schedule: {exc}") from None
    return manifest


def _message(node_id: str, sha256: str, ts: int) -> bytes:
    return FILE_CONTEXT + node_id.encode() + b"\x00" + sha256.encode() + b"\x00" + \
        str(ts).encode()


def file_request_sig(stream_key: bytes, node_id: str, sha256: str, ts: int) -> str:
    """The ``sig`` of a node's request for file ``sha256`` at ``ts`` (unix seconds)."""
    return hmac.digest(stream_key, _message(node_id, sha256, ts), "sha256").hex()


def check_file_request(stream_key: bytes, node_id: str, sha256: str, ts: int, sig: str,
                       now: float) -> str | None:
    """None when the request is genuine and fresh, else why it is refused."""
    if abs(now - ts) > FILE_REQUEST_WINDOW:
        return (f"ts {ts} is more than {FILE_REQUEST_WINDOW:.0f} s from the hub's clock "
                f"({now:.0f}): check the node's time")
    expected = file_request_sig(stream_key, node_id, sha256, ts)
    if not hmac.compare_digest(expected.encode(), sig.encode("ascii", "replace")):
        return "sig does not verify (not this node's stream key, or altered)"
    return None
