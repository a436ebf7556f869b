"""Ed25519 keys and hub-signed certificates for nodes and handsets.

Why our own compact certificate and not X.509: the handset's certificate travels inside
one NFC exchange, where every byte costs air time (106 kbit/s), and the checks needed
are few (issuer signature, expiry, kind). Bytes (all integers big-endian):

    off  size  field
    0    1     kind: 0x01 node, 0x02 handset
    1    1     version: 0x01
    2    1     n = length of the subject id (1..64)
    3    n     subject id, ASCII [a-zA-Z0-9_-]
    -    1     m = length of the zone (node certificates only; 1..64)
    -    m     zone, ASCII [a-zA-Z0-9_-] (node certificates only)
    -    32    subject Ed25519 public key (raw)
    -    8     expiry, uint64 unix seconds
    -    64    hub Ed25519 signature over CERT_CONTEXT || all preceding bytes

Key files: private keys are PKCS#8 PEM (unencrypted, mode 0600), the hub public key is
SubjectPublicKeyInfo PEM, certificates are the raw bytes above.
"""
from __future__ import annotations

import logging
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from tapcast.config import KeysSection

log = logging.getLogger(__name__)

KIND_NODE = 0x01
KIND_HANDSET = 0x02
CERT_VERSION = 0x01
CERT_CONTEXT = b"tapcast/v1/cert\x00"
MAX_ID_LEN = 64
ID_RE = re.compile(r"[a-zA-Z0-9_-]+")  # use fullmatch: "$" would accept a trailing newline

HUB_KEY_FILE = "hub.key"
HUB_PUBLIC_FILE = "hub.pub"
HANDSET_KEY_FILE = "handset.key"
HANDSET_CERT_FILE = "handset.cert"


class CertificateError(ValueError):
    """A certificate is malformed or does not verify. ``reason`` is one of
    "malformed", "unknown_issuer", "expired_certificate" (the node's verdict reasons)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class KeyFileError(ValueError):
    """A key or certificate file is missing or unreadable; the message names the file."""


def check_id(value: str, what: str = "id") -> str:
    if not isinstance(value, str) or not ID_RE.fullmatch(value) or len(value) > MAX_ID_LEN:
        raise ValueError(
            f"invalid {what} {value!r}: use 1..{MAX_ID_LEN} letters, digits, '_' and '-'")
    return value


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """Raw 32-byte Ed25519 public key."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class Certificate:
    """A decoded certificate; ``zone`` is None for handsets. ``encoded`` is the exact
    wire bytes (signature included)."""

    kind: int
    subject_id: str
    zone: str | None
    public_key: bytes
    expires: int
    signature: bytes
    encoded: bytes

    @property
    def is_node(self) -> bool:
        return self.kind == KIND_NODE

    @property
    def is_handset(self) -> bool:
        return self.kind == KIND_HANDSET

    @staticmethod
    def body(kind: int, subject_id: str, zone: str | None, public_key: bytes,
             expires: int) -> bytes:
        """The signed part of a certificate (everything but the signature)."""
        if kind not in (KIND_NODE, KIND_HANDSET):
            raise ValueError(f"unknown certificate kind {kind}")
        check_id(subject_id, "subject id")
        if len(public_key) != 32:
            raise ValueError(f"Ed25519 public key must be 32 bytes, got {len(public_key)}")
        if not 0 <= int(expires) < 2**64:
            raise ValueError(f"expiry {expires} out of range")
        sid = subject_id.encode("ascii")
        out = bytes([kind, CERT_VERSION, len(sid)]) + sid
        if kind == KIND_NODE:
            if zone is None:
                raise ValueError("a node certificate needs a zone")
            z = check_id(zone, "zone").encode("ascii")
            out += bytes([len(z)]) + z
        elif zone is not None:
            raise ValueError("a handset certificate has no zone")
        return out + public_key + struct.pack(">Q", int(expires))

    @classmethod
    def decode(cls, data: bytes) -> Certificate:
        """Parse certificate bytes; raises CertificateError("malformed", ...) on anything
        that is not exactly one well-formed certificate."""
        data = bytes(data)

        def bad(why: str) -> CertificateError:
            return CertificateError("malformed", f"certificate {why}")

        if len(data) < 3:
            raise bad(f"too short ({len(data)} bytes)")
        kind, version, n = data[0], data[1], data[2]
        if kind not in (KIND_NODE, KIND_HANDSET):
            raise bad(f"has unknown kind 0x{kind:02x}")
        if version != CERT_VERSION:
            raise bad(f"has unsupported version {version}")
        pos = 3
        sid_raw = data[pos:pos + n]
        pos += n
        if len(sid_raw) != n:
            raise bad("is truncated in the subject id")
        zone: str | None = None
        if kind == KIND_NODE:
            if pos >= len(data):
                raise bad("is truncated in the zone")
            m = data[pos]
            zone_raw = data[pos + 1:pos + 1 + m]
            pos += 1 + m
            if len(zone_raw) != m:
                raise bad("is truncated in the zone")
            zone = zone_raw.decode("ascii", "replace")
            if not ID_RE.fullmatch(zone) or m > MAX_ID_LEN:
                raise bad(f"has an invalid zone {zone!r}")
        subject_id = sid_raw.decode("ascii", "replace")
        if not ID_RE.fullmatch(subject_id) or n > MAX_ID_LEN:
            raise bad(f"has an invalid subject id {subject_id!r}")
        expected = pos + 32 + 8 + 64
        if len(data) != expected:
            raise bad(f"has length {len(data)}, expected {expected}")
        public_key = data[pos:pos + 32]
        (expires,) = struct.unpack(">Q", data[pos + 32:pos + 40])
        signature = data[pos + 40:]
        return cls(kind, subject_id, zone, public_key, expires, signature, data)

    def verify(self, hub_public_key: bytes, now: float, kind: int | None = None) -> None:
        """Raise CertificateError unless signed by this hub, unexpired at ``now`` and (if
        given) of ``kind``. Signature first: an expiry claimed by a forger means nothing."""
        if kind is not None and self.kind != kind:
            raise CertificateError("malformed", f"certificate kind 0x{self.kind:02x}, "
                                   f"expected 0x{kind:02x}")
        try:
            Ed25519PublicKey.from_public_bytes(hub_public_key).verify(
                self.signature, CERT_CONTEXT + self.encoded[:-64])
        except InvalidSignature:
            raise CertificateError("unknown_issuer",
                                   f"{self.subject_id!r} not signed by this hub") from None
        if now >= self.expires:
            raise CertificateError("expired_certificate",
                                   f"{self.subject_id!r} expired at {self.expires}")

    def check(self, hub_public_key: bytes, now: float, kind: int | None = None) -> str:
        """Like verify, but returns the reason ("ok" when valid)."""
        try:
            self.verify(hub_public_key, now, kind)
        except CertificateError as exc:
            return exc.reason
        return "ok"


class HubAuthority:
    """The hub's Ed25519 signing key: issues node and handset certificates."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key

    @classmethod
    def generate(cls) -> HubAuthority:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> HubAuthority:
        """Deterministic authority for test vectors (32-byte seed)."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def public_key_bytes(self) -> bytes:
        return public_key_bytes(self._key)

    def sign(self, context: bytes, message: bytes) -> bytes:
        return self._key.sign(context + message)

    def _issue(self, body: bytes) -> bytes:
        return body + self._key.sign(CERT_CONTEXT + body)

    def issue_node_cert(self, node_id: str, zone: str, public_key: bytes,
                        expires: float) -> bytes:
        return self._issue(Certificate.body(KIND_NODE, node_id, zone, public_key, int(expires)))

    def issue_handset_cert(self, handset_id: str, public_key: bytes, expires: float) -> bytes:
        return self._issue(Certificate.body(KIND_HANDSET, handset_id, None, public_key,
                                            int(expires)))

    def save(self, directory: str | Path) -> None:
        """Write hub.key (0600) and hub.pub into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        _write_private(d / HUB_KEY_FILE, self._key)
        _write_public(d / HUB_PUBLIC_FILE, self.public_key_bytes)

    @classmethod
    def load(cls, directory: str | Path) -> HubAuthority:
        return cls(_read_private(Path(directory) / HUB_KEY_FILE))


# ------------------------------------------------------------------ credentials


@dataclass(frozen=True)
class NodeCredentials:
    node_id: str
    zone: str
    private_key: Ed25519PrivateKey
    cert: bytes
    hub_public_key: bytes


@dataclass(frozen=True)
class HandsetCredentials:
    handset_id: str
    private_key: Ed25519PrivateKey
    cert: bytes
    hub_public_key: bytes


def make_node_credentials(authority: HubAuthority, node_id: str, zone: str,
                          expires: float,
                          private_key: Ed25519PrivateKey | None = None) -> NodeCredentials:
    """Fresh (or given) node key plus a certificate issued by ``authority`` (in memory)."""
    key = private_key or Ed25519PrivateKey.generate()
    cert = authority.issue_node_cert(node_id, zone, public_key_bytes(key), expires)
    return NodeCredentials(node_id, zone, key, cert, authority.public_key_bytes)


def make_handset_credentials(authority: HubAuthority, handset_id: str, expires: float,
                             private_key: Ed25519PrivateKey | None = None
                             ) -> HandsetCredentials:
    key = private_key or Ed25519PrivateKey.generate()
    cert = authority.issue_handset_cert(handset_id, public_key_bytes(key), expires)
    return HandsetCredentials(handset_id, key, cert, authority.public_key_bytes)


def write_node_credentials(directory: str | Path, authority: HubAuthority, node_id: str,
                           zone: str, expires: float,
                           keys: KeysSection | None = None) -> NodeCredentials:
    """Generate a node key, have ``authority`` certify it, and write the three files
    named in ``keys`` (defaults: node.key, node.cert, hub.pub) into ``directory``."""
    keys = keys or KeysSection()
    creds = make_node_credentials(authority, node_id, zone, expires)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _write_private(d / keys.node_key, creds.private_key)
    (d / keys.node_cert).write_bytes(creds.cert)
    _write_public(d / keys.hub_public_key, creds.hub_public_key)
    return creds


def load_node_credentials(keys: KeysSection, base_dir: str | Path) -> NodeCredentials:
    """Read a node's key files (relative paths are under ``base_dir``) and check that
    the certificate is a node certificate for this very key."""
    base = Path(base_dir)
    key = _read_private(base / keys.node_key)
    cert_path = base / keys.node_cert
    cert_bytes = _read_bytes(cert_path)
    hub_pub = _read_public(base / keys.hub_public_key)
    cert = _decode_for_file(cert_bytes, cert_path, KIND_NODE)
    if cert.public_key != public_key_bytes(key):
        raise KeyFileError(f"{cert_path}: certificate is for another key than {keys.node_key}")
    assert cert.zone is not None
    return NodeCredentials(cert.subject_id, cert.zone, key, cert_bytes, hub_pub)


def write_handset_credentials(directory: str | Path, authority: HubAuthority,
                              handset_id: str, expires: float) -> HandsetCredentials:
    """Like write_node_credentials, for a handset: handset.key, handset.cert, hub.pub."""
    creds = make_handset_credentials(authority, handset_id, expires)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _write_private(d / HANDSET_KEY_FILE, creds.private_key)
    (d / HANDSET_CERT_FILE).write_bytes(creds.cert)
    _write_public(d / HUB_PUBLIC_FILE, creds.hub_public_key)
    return creds


def load_handset_credentials(directory: str | Path) -> HandsetCredentials:
    d = Path(directory)
    key = _read_private(d / HANDSET_KEY_FILE)
    cert_bytes = _read_bytes(d / HANDSET_CERT_FILE)
    hub_pub = _read_public(d / HUB_PUBLIC_FILE)
    cert = _decode_for_file(cert_bytes, d / HANDSET_CERT_FILE, KIND_HANDSET)
    if cert.public_key != public_key_bytes(key):
        raise KeyFileError(f"{d / HANDSET_CERT_FILE}: certificate is for another key")
    return HandsetCredentials(cert.subject_id, key, cert_bytes, hub_pub)


# ------------------------------------------------------------------ file helpers


def _decode_for_file(data: bytes, path: Path, kind: int) -> Certificate:
    try:
        cert = Certificate.decode(data)
    except CertificateError as exc:
        raise KeyFileError(f"{path}: {exc}") from None
    if cert.kind != kind:
        raise KeyFileError(f"{path}: certificate kind 0x{cert.kind:02x}, expected 0x{kind:02x}")
    return cert


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror}") from None


def _write_private(path: Path, key: Ed25519PrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def _read_private(path: Path) -> Ed25519PrivateKey:
    data = _read_bytes(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key")
    return key


def _write_public(path: Path, raw: bytes) -> None:
    pub = Ed25519PublicKey.from_public_bytes(raw)
    path.write_bytes(pub.public_bytes(serialization.Encoding.PEM,
                                      serialization.PublicFormat.SubjectPublicKeyInfo))


def _read_public(path: Path) -> bytes:
    data = _read_bytes(path)
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise KeyFileError(f"{path}: not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 public key")
    return public_key_bytes(key)
