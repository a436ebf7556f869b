"""Ed25519 keys and hub-signed certificates for nodes and handsets.

Why our own compact certificate and not X.509: the handset's certificate travels inside
one NFC exchange, where every byte costs air time (106 kbit/s), and the checks needed
are few (issuer key, signature, validity, kind). Bytes (all integers big-endian):

    off  size  field
    0    1     kind: 0x01 node, 0x02 handset
    1    1     version: 0x02
    2    8     key id of the signing hub key: SHA-256(raw hub public key)[:8]
    10   1     n = length of the subject id (1..64)
    11   n     subject id, ASCII [a-zA-Z0-9_-]
    -    1     m = length of the zone (node certificates only; 1..64)
    -    m     zone, ASCII [a-zA-Z0-9_-] (node certificates only)
    -    32    subject Ed25519 public key (raw)
    -    8     not-before, uint64 unix seconds (valid from this second on)
    -    8     not-after ("expiry"), uint64 unix seconds (valid while now < expiry)
    -    64    hub Ed25519 signature over CERT_CONTEXT || all preceding bytes

Why a key id: the hub key can be rotated. Nodes and handsets hold several hub public
keys (a HubKeyring: the new key and, until every certificate it signed has been
replaced, the old one) and pick the one the certificate names.

Key files: private keys are PKCS#8 PEM (unencrypted, mode 0600), hub public keys are
SubjectPublicKeyInfo PEM (hub.pub may hold several PEM blocks: the hub's current key
first, then older keys still trusted), certificates are the raw bytes above.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import struct
import time
from collections.abc import Iterable
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
CERT_VERSION = 0x02
KEY_ID_LEN = 8
CERT_CONTEXT = b"tapcast/v1/cert\x00"
MAX_ID_LEN = 64
ID_RE = re.compile(r"[a-zA-Z0-9_-]+")  # use fullmatch: "$" would accept a trailing newline

HUB_KEY_FILE = "hub.key"
HUB_PUBLIC_FILE = "hub.pub"
HANDSET_KEY_FILE = "handset.key"
HANDSET_CERT_FILE = "handset.cert"


class CertificateError(ValueError):
    """A certificate is malformed or does not verify. ``reason`` is one of "malformed",
    "unknown_key_id" (signed by a hub key this holder does not trust), "unknown_issuer"
    (the signature does not verify under the named key), "not_yet_valid",
    "expired_certificate" (the node's verdict reasons)."""

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


def key_id(public_key: bytes) -> bytes:
    """The 8-byte id a certificate names its signing hub key by: SHA-256(raw key)[:8].
    Not secret and not a security boundary (a forger can name any id); it only picks
    the key whose signature is then checked."""
    if len(public_key) != 32:
        raise ValueError(f"Ed25519 public key must be 32 bytes, got {len(public_key)}")
    return hashlib.sha256(public_key).digest()[:KEY_ID_LEN]


class HubKeyring:
    """The hub public keys a node or handset trusts, by key id. The first key given is
    the hub's current one (``current``); the others are older keys kept while the
    certificates they signed are still in use (key rotation)."""

    def __init__(self, keys: Iterable[bytes]) -> None:
        self._keys: dict[bytes, bytes] = {}
        for k in keys:
            self._keys.setdefault(key_id(bytes(k)), bytes(k))
        if not self._keys:
            raise ValueError("a hub keyring needs at least one key")

    @classmethod
    def of(cls, keys: HubKeyring | bytes | Iterable[bytes]) -> HubKeyring:
        """A keyring from a keyring, one raw key, or several."""
        if isinstance(keys, HubKeyring):
            return keys
        if isinstance(keys, (bytes, bytearray)):
            return cls([bytes(keys)])
        return cls(keys)

    @property
    def current(self) -> bytes:
        return next(iter(self._keys.values()))

    @property
    def keys(self) -> tuple[bytes, ...]:
        return tuple(self._keys.values())

    def get(self, kid: bytes) -> bytes | None:
        """The trusted key with this id, or None."""
        return self._keys.get(bytes(kid))

    def __contains__(self, kid: object) -> bool:
        return isinstance(kid, (bytes, bytearray)) and bytes(kid) in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"HubKeyring({', '.join(k.hex() for k in self._keys)})"


@dataclass(frozen=True)
class Certificate:
    """A decoded certificate; ``zone`` is None for handsets. ``encoded`` is the exact
    wire bytes (signature included)."""

    kind: int
    subject_id: str
    zone: str | None
    public_key: bytes
    expires: int  # not-after
    signature: bytes
    encoded: bytes
    key_id: bytes = b""  # of the signing hub key
    not_before: int = 0

    @property
    def is_node(self) -> bool:
        return self.kind == KIND_NODE

    @property
    def is_handset(self) -> bool:
        return self.kind == KIND_HANDSET

    @staticmethod
    def body(kind: int, subject_id: str, zone: str | None, public_key: bytes,
             expires: int, *, issuer_key_id: bytes, not_before: int) -> bytes:
        """The signed part of a certificate (everything but the signature)."""
        if kind not in (KIND_NODE, KIND_HANDSET):
            raise ValueError(f"unknown certificate kind {kind}")
        check_id(subject_id, "subject id")
        if len(public_key) != 32:
            raise ValueError(f"Ed25519 public key must be 32 bytes, got {len(public_key)}")
        if len(issuer_key_id) != KEY_ID_LEN:
            raise ValueError(f"key id must be {KEY_ID_LEN} bytes, got {len(issuer_key_id)}")
        if not 0 <= int(expires) < 2**64:
            raise ValueError(f"expiry {expires} out of range")
        if not 0 <= int(not_before) <= int(expires):
            raise ValueError(f"not-before {not_before} must be in 0..expiry ({expires})")
        sid = subject_id.encode("ascii")
        out = bytes([kind, CERT_VERSION]) + bytes(issuer_key_id) + bytes([len(sid)]) + sid
        if kind == KIND_NODE:
            if zone is None:
                raise ValueError("a node certificate needs a zone")
            z = check_id(zone, "zone").encode("ascii")
            out += bytes([len(z)]) + z
        elif zone is not None:
            raise ValueError("a handset certificate has no zone")
        return out + public_key + struct.pack(">QQ", int(not_before), int(expires))

    @classmethod
    def decode(cls, data: bytes) -> Certificate:
        """Parse certificate bytes; raises CertificateError("malformed", ...) on anything
        that is not exactly one well-formed certificate."""
        data = bytes(data)

        def bad(why: str) -> CertificateError:
            return CertificateError("malformed", f"certificate {why}")

        head = 2 + KEY_ID_LEN + 1
        if len(data) < 2:
            raise bad(f"too short ({len(data)} bytes)")
        kind, version = data[0], data[1]
        if kind not in (KIND_NODE, KIND_HANDSET):
            raise bad(f"has unknown kind 0x{kind:02x}")
        if version != CERT_VERSION:
            raise bad(f"has unsupported version {version} (this software reads version "
                      f"{CERT_VERSION}; re-issue it with `tapcast keys`)")
        if len(data) < head:
            raise bad(f"too short ({len(data)} bytes)")
        kid, n = data[2:2 + KEY_ID_LEN], data[head - 1]
        pos = head
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
        expected = pos + 32 + 8 + 8 + 64
        if len(data) != expected:
            raise bad(f"has length {len(data)}, expected {expected}")
        public_key = data[pos:pos + 32]
        not_before, expires = struct.unpack(">QQ", data[pos + 32:pos + 48])
        signature = data[pos + 48:]
        return cls(kind, subject_id, zone, public_key, expires, signature, data,
                   kid, not_before)

    def verify(self, hub_keys: HubKeyring | bytes | Iterable[bytes], now: float,
               kind: int | None = None, *, early: float = 0.0, late: float = 0.0,
               check_not_before: bool = True) -> None:
        """Raise CertificateError unless signed by a trusted hub key (the one its key id
        names), valid at ``now`` and (if given) of ``kind``. Signature first: validity
        claimed by a forger means nothing.

        ``early``/``late``: seconds of clock tolerance (the certificate counts as valid
        from not-before - early until expiry + late). ``check_not_before``
        False: the caller cannot tell a not-yet-valid certificate from its own clock
        running behind (no trustworthy time yet); see tapcast.clock."""
        if kind is not None and self.kind != kind:
            raise CertificateError("malformed", f"certificate kind 0x{self.kind:02x}, "
                                   f"expected 0x{kind:02x}")
        keyring = HubKeyring.of(hub_keys)
        hub_key = keyring.get(self.key_id)
        if hub_key is None:
            raise CertificateError(
                "unknown_key_id", f"{self.subject_id!r} is signed by hub key id "
                f"{self.key_id.hex()}, which is not trusted here (trusted: "
                f"{', '.join(key_id(k).hex() for k in keyring.keys)})")
        try:
            Ed25519PublicKey.from_public_bytes(hub_key).verify(
                self.signature, CERT_CONTEXT + self.encoded[:-64])
        except InvalidSignature:
            raise CertificateError("unknown_issuer", f"{self.subject_id!r}: signature does "
                                   f"not verify under hub key id {self.key_id.hex()}") from None
        if check_not_before and now + early < self.not_before:
            raise CertificateError("not_yet_valid", f"{self.subject_id!r} is valid from "
                                   f"{self.not_before}, now is {now:.0f}")
        if now - late >= self.expires:
            raise CertificateError("expired_certificate",
                                   f"{self.subject_id!r} expired at {self.expires}, "
                                   f"now is {now:.0f}")

    def check(self, hub_keys: HubKeyring | bytes | Iterable[bytes], now: float,
              kind: int | None = None, **options: object) -> str:
        """Like verify, but returns the reason ("ok" when valid)."""
        try:
            self.verify(hub_keys, now, kind, **options)  # type: ignore[arg-type]
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

    @property
    def key_id(self) -> bytes:
        """The id certificates name this key by (tapcast.keys.key_id)."""
        return key_id(self.public_key_bytes)

    def sign(self, context: bytes, message: bytes) -> bytes:
        return self._key.sign(context + message)

    def _issue(self, kind: int, subject_id: str, zone: str | None, public_key: bytes,
               expires: float, not_before: float | None) -> bytes:
        # not-before defaults to the hub's clock at issue: the hub is a server with NTP,
        # so a node or handset with trustworthy time sees a valid certificate at once.
        nb = int(time.time() if not_before is None else not_before)
        body = Certificate.body(kind, subject_id, zone, public_key, int(expires),
                                issuer_key_id=self.key_id, not_before=min(nb, int(expires)))
        return body + self._key.sign(CERT_CONTEXT + body)

    def issue_node_cert(self, node_id: str, zone: str, public_key: bytes,
                        expires: float, not_before: float | None = None) -> bytes:
        return self._issue(KIND_NODE, node_id, zone, public_key, expires, not_before)

    def issue_handset_cert(self, handset_id: str, public_key: bytes, expires: float,
                           not_before: float | None = None) -> bytes:
        return self._issue(KIND_HANDSET, handset_id, None, public_key, expires, not_before)

    def save(self, directory: str | Path) -> None:
        """Write hub.key (0600) and hub.pub into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        _write_private(d / HUB_KEY_FILE, self._key)
        _write_public(d / HUB_PUBLIC_FILE, self.public_key_bytes)

    @classmethod
    def load(cls, directory: str | Path) -> HubAuthority:
        return cls(_read_private(Path(directory) / HUB_KEY_FILE))

    @classmethod
    def load_key_file(cls, path: str | Path) -> HubAuthority:
        """From the key file itself (``[hub] signing_key``), wherever it lives."""
        return cls(_read_private(Path(path)))


# ------------------------------------------------------------------ credentials


@dataclass(frozen=True)
class NodeCredentials:
    """``hub_public_key`` is the hub's current key; ``hub_public_keys`` are further hub
    keys still trusted (rotation). Check certificates against ``hub_keyring``."""

    node_id: str
    zone: str
    private_key: Ed25519PrivateKey
    cert: bytes
    hub_public_key: bytes
    hub_public_keys: tuple[bytes, ...] = ()

    @property
    def hub_keyring(self) -> HubKeyring:
        return HubKeyring((self.hub_public_key, *self.hub_public_keys))


@dataclass(frozen=True)
class HandsetCredentials:
    """As NodeCredentials: the hub's current key plus older ones still trusted."""

    handset_id: str
    private_key: Ed25519PrivateKey
    cert: bytes
    hub_public_key: bytes
    hub_public_keys: tuple[bytes, ...] = ()

    @property
    def hub_keyring(self) -> HubKeyring:
        return HubKeyring((self.hub_public_key, *self.hub_public_keys))


def make_node_credentials(authority: HubAuthority, node_id: str, zone: str,
                          expires: float,
                          private_key: Ed25519PrivateKey | None = None, *,
                          not_before: float | None = None,
                          also_trust: Iterable[bytes] = ()) -> NodeCredentials:
    """Fresh (or given) node key plus a certificate issued by ``authority`` (in memory);
    ``also_trust``: older hub public keys the node keeps accepting (rotation)."""
    key = private_key or Ed25519PrivateKey.generate()
    cert = authority.issue_node_cert(node_id, zone, public_key_bytes(key), expires,
                                     not_before)
    return NodeCredentials(node_id, zone, key, cert, authority.public_key_bytes,
                           _others(authority, also_trust))


def make_handset_credentials(authority: HubAuthority, handset_id: str, expires: float,
                             private_key: Ed25519PrivateKey | None = None, *,
                             not_before: float | None = None,
                             also_trust: Iterable[bytes] = ()) -> HandsetCredentials:
    key = private_key or Ed25519PrivateKey.generate()
    cert = authority.issue_handset_cert(handset_id, public_key_bytes(key), expires,
                                        not_before)
    return HandsetCredentials(handset_id, key, cert, authority.public_key_bytes,
                              _others(authority, also_trust))


def _others(authority: HubAuthority, keys: Iterable[bytes]) -> tuple[bytes, ...]:
    return tuple(k for k in HubKeyring([authority.public_key_bytes, *keys]).keys[1:])


def write_node_credentials(directory: str | Path, authority: HubAuthority, node_id: str,
                           zone: str, expires: float,
                           keys: KeysSection | None = None, *,
                           also_trust: Iterable[bytes] = ()) -> NodeCredentials:
    """Generate a node key, have ``authority`` certify it, and write the three files
    named in ``keys`` (defaults: node.key, node.cert, hub.pub) into ``directory``."""
    keys = keys or KeysSection()
    creds = make_node_credentials(authority, node_id, zone, expires, also_trust=also_trust)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _write_private(d / keys.node_key, creds.private_key)
    (d / keys.node_cert).write_bytes(creds.cert)
    write_hub_public_keys(d / keys.hub_public_key, creds.hub_keyring.keys)
    return creds


def load_node_credentials(keys: KeysSection, base_dir: str | Path) -> NodeCredentials:
    """Read a node's key files (relative paths are under ``base_dir``) and check that
    the certificate is a node certificate for this very key."""
    base = Path(base_dir)
    key = _read_private(base / keys.node_key)
    cert_path = base / keys.node_cert
    cert_bytes = _read_bytes(cert_path)
    hub_pubs = read_hub_public_keys(base / keys.hub_public_key)
    cert = _decode_for_file(cert_bytes, cert_path, KIND_NODE)
    if cert.public_key != public_key_bytes(key):
        raise KeyFileError(f"{cert_path}: certificate is for another key than {keys.node_key}")
    assert cert.zone is not None
    return NodeCredentials(cert.subject_id, cert.zone, key, cert_bytes, hub_pubs[0],
                           hub_pubs[1:])


def write_handset_credentials(directory: str | Path, authority: HubAuthority,
                              handset_id: str, expires: float, *,
                              also_trust: Iterable[bytes] = ()) -> HandsetCredentials:
    """Like write_node_credentials, for a handset: handset.key, handset.cert, hub.pub."""
    creds = make_handset_credentials(authority, handset_id, expires, also_trust=also_trust)
    save_handset_credentials(directory, creds)
    return creds


def save_handset_credentials(directory: str | Path, creds: HandsetCredentials) -> None:
    """Write credentials a handset was given (its key, the hub's certificate for it, the
    hub keys it trusts) as write_handset_credentials does, for load_handset_credentials."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _write_private(d / HANDSET_KEY_FILE, creds.private_key)
    (d / HANDSET_CERT_FILE).write_bytes(creds.cert)
    write_hub_public_keys(d / HUB_PUBLIC_FILE, creds.hub_keyring.keys)


def load_handset_credentials(directory: str | Path) -> HandsetCredentials:
    d = Path(directory)
    key = _read_private(d / HANDSET_KEY_FILE)
    cert_bytes = _read_bytes(d / HANDSET_CERT_FILE)
    hub_pubs = read_hub_public_keys(d / HUB_PUBLIC_FILE)
    cert = _decode_for_file(cert_bytes, d / HANDSET_CERT_FILE, KIND_HANDSET)
    if cert.public_key != public_key_bytes(key):
        raise KeyFileError(f"{d / HANDSET_CERT_FILE}: certificate is for another key")
    return HandsetCredentials(cert.subject_id, key, cert_bytes, hub_pubs[0], hub_pubs[1:])


def write_hub_public_keys(path: str | Path, keys: Iterable[bytes]) -> None:
    """hub.pub: one SubjectPublicKeyInfo PEM block per trusted hub key, current first."""
    Path(path).write_bytes(b"".join(_public_pem(k) for k in keys))


def read_hub_public_keys(path: str | Path) -> tuple[bytes, ...]:
    """Every hub public key in a hub.pub file (raw bytes, current first); a file with one
    PEM block (as written before key rotation existed) gives one key."""
    path = Path(path)
    data = _read_bytes(path)
    blocks = _PEM_BLOCK.findall(data)
    if not blocks:
        raise KeyFileError(f"{path}: not a PEM public key (no PEM block found)")
    if data.count(b"-----BEGIN ") != len(blocks):  # a trusted key would silently be lost
        raise KeyFileError(f"{path}: a PEM block is cut short (BEGIN without END)")
    return tuple(_load_public(b, path) for b in blocks)


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


_PEM_BLOCK = re.compile(rb"-----BEGIN [A-Z ]+-----.*?-----END [A-Z ]+-----\s*", re.S)


def _public_pem(raw: bytes) -> bytes:
    return Ed25519PublicKey.from_public_bytes(raw).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _write_public(path: Path, raw: bytes) -> None:
    path.write_bytes(_public_pem(raw))


def _load_public(data: bytes, path: Path) -> bytes:
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise KeyFileError(f"{path}: not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 public key")
    return public_key_bytes(key)

