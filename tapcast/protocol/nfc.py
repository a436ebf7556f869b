"""NFC application protocol: node (reader) and handset (card) mutual authentication.

Bytes are specified in docs/protocol.md ("NFC"); this module is the one place that
builds and parses them. Pure state machines, no I/O: the node side is NodeAuth ->
NodeHandshake, the handset side is HandsetCard.process_apdu(bytes) -> bytes.

Exchange (all over ISO-DEP, one tap):

    node -> handset  SELECT AID                       <- 9000 + version
    node -> handset  HELLO (cert, nonce, X25519, signature)
                                                      <- ANSWER + 9000 | 6982
    node -> handset  CONFIRM (HMAC under confirm key) <- 9000 | 6982

Why no time in the exchange: nodes are Pis without a real-time clock that may boot
offline days off. Freshness comes from both sides' nonces and ephemeral keys: the
handset's answer is sealed and signed over the node's fresh nonce and key (a replayed
answer does not decrypt), and the CONFIRM MAC is keyed by a secret that needs the
handset's fresh ephemeral key (a replayed HELLO gets an answer its sender cannot read
nor confirm). Clocks are used only for certificate validity: the node checks against
its best time (tapcast.clock), the handset against its own clock with
HANDSET_CLOCK_TOLERANCE.

Why extended-length APDUs: HELLO is 251 bytes with short ids and up to 367 with
64-character ids, over a short APDU's 255. nfcpy's Type4Tag.send_apdu refuses data
over 255 bytes for Type 4A tags (it hard-codes ``_extended_length_support = False``),
but Type4Tag.transceive passes any APDU through nfcpy's ISO-DEP initiator, which chains
frames in both directions (FSC/FSD) for every driver (udp, usb, tty). So this module
encodes HELLO with an extended Lc (00 HH LL) and extended Le (00 00) and the node sends
it with transceive. An Android HCE service receives the reassembled APDU; that the
phone's NFC controller accepts extended-length APDUs in card emulation is common but
must be checked per target phone (not testable here). Responses need no Le trick:
ISO-DEP chaining carries them.

Why the identifying part of the handset's answer is encrypted: a rogue reader that
replays a recorded node HELLO (at any time: there is no time window) passes the
handset's checks, but
cannot decrypt the answer without the node's ephemeral X25519 private key, so it learns
nothing identifying (SIGMA-I style identity protection).
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import struct
import time
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from enum import Enum

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tapcast.keys import (
    KIND_HANDSET,
    KIND_NODE,
    Certificate,
    CertificateError,
    HandsetCredentials,
    NodeCredentials,
)

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 0x02  # 2: certificates v2 (key id, not-before), no time in HELLO
AID = bytes.fromhex("F0544150435354 01".replace(" ", ""))  # F0 "TAPCST" 01

CLA_ISO = 0x00
CLA_PROPRIETARY = 0x80
INS_SELECT = 0xA4
INS_HELLO = 0x10
INS_CONFIRM = 0x12

NONCE_LEN = 16
X25519_LEN = 32
SIG_LEN = 64
MAC_LEN = 32
ANSWER_DEADLINE = 5.0  # seconds (monotonic): node refuses ("stale") an answer arriving later
# Seconds a trusted node clock may differ from the hub's when it checks not-before (both
# NTP-set; a certificate issued just now must not be "not yet valid" by a second).
NODE_CLOCK_SKEW = 300.0
# A phone's clock is network-set (NITZ/NTP) and normally right within seconds; the
# handset checks the node certificate's validity against it with this tolerance either
# way, so a phone set a little off still answers, and a node certificate expired longer
# ago than this is refused. Phones do not persist a floor: their clock is not our weak spot.
HANDSET_CLOCK_TOLERANCE = 3600.0

CTX_HELLO = b"tapcast/v1/nfc/hello\x00"
CTX_ANSWER = b"tapcast/v1/nfc/answer\x00"
CTX_CONFIRM = b"tapcast/v1/nfc/confirm\x00"
INFO_ANSWER_KEY = b"tapcast/v1/nfc/answer-key"
INFO_KEYS = b"tapcast/v1/nfc/keys"
AEAD_NONCE = bytes(12)  # each answer key encrypts exactly one message

ADDRESS_PUBLIC = 0
ADDRESS_RANDOM = 1


class SW(int, Enum):
    """Status words the handset answers with (ISO 7816-4 meanings)."""

    OK = 0x9000
    WRONG_LENGTH = 0x6700  # Lc/Le do not match the APDU's length
    NODE_REJECTED = 0x6982  # security status not satisfied: the node failed the checks
    OUT_OF_SEQUENCE = 0x6985  # conditions of use not satisfied: wrong step
    MALFORMED = 0x6A80  # incorrect data field
    WRONG_AID = 0x6A82  # application not found
    WRONG_P1P2 = 0x6B00
    UNKNOWN_INS = 0x6D00
    UNKNOWN_CLA = 0x6E00
    INTERNAL = 0x6F00  # a bug in the card application; the card stays usable

    @property
    def wire(self) -> bytes:
        """The two status bytes as sent."""
        return struct.pack(">H", self.value)


class ApduError(ValueError):
    """A command APDU cannot be accepted; ``sw`` is the status word to answer."""

    def __init__(self, sw: SW, message: str) -> None:
        super().__init__(f"{sw.name} ({sw.value:04X}): {message}")
        self.sw = sw


class ProtocolError(ValueError):
    """A message is not what the protocol expects; ``reason`` is a node verdict."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


# ------------------------------------------------------------------------ APDUs


@dataclass(frozen=True)
class CommandApdu:
    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None  # None: no Le field; 0 with short/extended means maximum

    def encode(self, extended: bool | None = None) -> bytes:
        """ISO 7816-4 encoding. ``extended`` None chooses extended only when needed."""
        if extended is None:
            extended = len(self.data) > 255 or (self.le is not None and self.le > 256)
        out = bytes([self.cla, self.ins, self.p1, self.p2])
        if extended:
            if self.data:
                out += b"\x00" + struct.pack(">H", len(self.data)) + self.data
            if self.le is not None:
                le = struct.pack(">H", self.le & 0xFFFF)
                out += le if self.data else b"\x00" + le
        else:
            if self.data:
                out += bytes([len(self.data)]) + self.data
            if self.le is not None:
                out += bytes([self.le & 0xFF])
        return out


def parse_command_apdu(raw: bytes) -> CommandApdu:
    """Parse cases 1-4, short and extended. Raises ApduError(WRONG_LENGTH) when the
    length fields do not match the number of bytes received."""
    raw = bytes(raw)
    if len(raw) < 4:
        raise ApduError(SW.WRONG_LENGTH, f"APDU of {len(raw)} bytes, need at least 4")
    cla, ins, p1, p2 = raw[:4]
    body = raw[4:]
    if not body:
        return CommandApdu(cla, ins, p1, p2)
    if len(body) == 1:
        return CommandApdu(cla, ins, p1, p2, b"", body[0])
    if body[0] != 0:  # short Lc
        lc = body[0]
        rest = body[1:]
        if len(rest) == lc:
            return CommandApdu(cla, ins, p1, p2, rest)
        if len(rest) == lc + 1:
            return CommandApdu(cla, ins, p1, p2, rest[:lc], rest[lc])
        raise ApduError(SW.WRONG_LENGTH, f"Lc {lc} but {len(rest)} bytes follow")
    # body[0] == 0 and more bytes: extended length
    if len(body) == 3:
        return CommandApdu(cla, ins, p1, p2, b"", struct.unpack(">H", body[1:3])[0])
    if len(body) < 3:
        raise ApduError(SW.WRONG_LENGTH, "truncated extended length field")
    lc = struct.unpack(">H", body[1:3])[0]
    rest = body[3:]
    if lc == 0:
        raise ApduError(SW.WRONG_LENGTH, "extended Lc of 0")
    if len(rest) == lc:
        return CommandApdu(cla, ins, p1, p2, rest)
    if len(rest) == lc + 2:
        return CommandApdu(cla, ins, p1, p2, rest[:lc], struct.unpack(">H", rest[lc:])[0])
    raise ApduError(SW.WRONG_LENGTH, f"extended Lc {lc} but {len(rest)} bytes follow")


def split_response(raw: bytes) -> tuple[bytes, int]:
    """(data, status word) of a response APDU."""
    if raw is None or len(raw) < 2:
        raise ProtocolError("protocol_error", f"response of {0 if raw is None else len(raw)} "
                            "bytes has no status word")
    raw = bytes(raw)
    return raw[:-2], struct.unpack(">H", raw[-2:])[0]


def select_apdu() -> bytes:
    return CommandApdu(CLA_ISO, INS_SELECT, 0x04, 0x00, AID, 0).encode()


def hello_apdu(hello: bytes) -> bytes:
    return CommandApdu(CLA_PROPRIETARY, INS_HELLO, 0, 0, hello, 0).encode(extended=True)


def confirm_apdu(mac: bytes) -> bytes:
    return CommandApdu(CLA_PROPRIETARY, INS_CONFIRM, 0, 0, mac).encode()


# ------------------------------------------------------------------ messages


class _Reader:
    """Cursor over message bytes; running past the end is a malformed message."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = bytes(data), 0, what

    def take(self, n: int, field_name: str) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError("malformed", f"{self.what} truncated in {field_name}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self, name: str) -> int:
        return self.take(1, name)[0]

    def u16(self, name: str) -> int:
        return struct.unpack(">H", self.take(2, name))[0]

    def u64(self, name: str) -> int:
        return struct.unpack(">Q", self.take(8, name))[0]

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError("malformed", f"{self.what} has {len(self.data) - self.pos} "
                                "trailing bytes")


@dataclass(frozen=True)
class Hello:
    """Node -> handset. ``encoded`` = version(1) cert_len(2) cert nonce(16) eph(32)
    sig(64); sig = Ed25519(node key, CTX_HELLO || encoded[:-64])."""

    cert: bytes
    nonce: bytes
    ephemeral: bytes
    signature: bytes
    encoded: bytes

    @classmethod
    def decode(cls, data: bytes) -> Hello:
        r = _Reader(data, "hello")
        version = r.u8("version")
        if version != PROTOCOL_VERSION:
            raise ProtocolError("malformed", f"hello version {version}")
        cert = r.take(r.u16("cert length"), "cert")
        nonce = r.take(NONCE_LEN, "nonce")
        eph = r.take(X25519_LEN, "ephemeral key")
        sig = r.take(SIG_LEN, "signature")
        r.end()
        return cls(cert, nonce, eph, sig, bytes(data))


def encode_hello_body(cert: bytes, nonce: bytes, ephemeral: bytes) -> bytes:
    return (bytes([PROTOCOL_VERSION]) + struct.pack(">H", len(cert)) + cert + nonce
            + ephemeral)


@dataclass(frozen=True)
class AnswerPayload:
    """The encrypted part of the handset's answer: cert_len(2) cert ble_addr(6)
    addr_type(1) consent(2, uint16) sig(64)."""

    cert: bytes
    ble_address: bytes
    ble_address_type: int
    consent: int
    signature: bytes = b""

    def signed_part(self) -> bytes:
        return (struct.pack(">H", len(self.cert)) + self.cert + self.ble_address
                + bytes([self.ble_address_type]) + struct.pack(">H", self.consent))

    def encode(self) -> bytes:
        return self.signed_part() + self.signature

    @classmethod
    def decode(cls, data: bytes) -> AnswerPayload:
        r = _Reader(data, "answer")
        cert = r.take(r.u16("cert length"), "cert")
        addr = r.take(6, "ble address")
        addr_type = r.u8("address type")
        if addr_type not in (ADDRESS_PUBLIC, ADDRESS_RANDOM):
            raise ProtocolError("malformed", f"address type {addr_type}")
        consent = r.u16("consent")
        sig = r.take(SIG_LEN, "signature")
        r.end()
        return cls(cert, addr, addr_type, consent, sig)


def format_ble_address(raw: bytes) -> str:
    """6 bytes, most significant first (display order) -> "AA:BB:CC:DD:EE:FF"."""
    return ":".join(f"{b:02X}" for b in raw)


def parse_ble_address(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"BLE address {text!r} must look like AA:BB:CC:DD:EE:FF")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"BLE address {text!r} must be hexadecimal") from None


# ------------------------------------------------------------------ key schedule


def transcript_hash_1(hello: bytes, handset_nonce: bytes, handset_eph: bytes) -> bytes:
    """th1 = SHA-256(hello || handset nonce || handset ephemeral key)."""
    return hashlib.sha256(hello + handset_nonce + handset_eph).digest()


def transcript_hash_2(th1: bytes, payload_signed_part: bytes) -> bytes:
    """th2 = SHA-256(th1 || answer payload without its signature)."""
    return hashlib.sha256(th1 + payload_signed_part).digest()


def _hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def answer_key(shared: bytes, th1: bytes) -> bytes:
    """ChaCha20-Poly1305 key for the answer payload: HKDF(shared, salt=th1, INFO_ANSWER_KEY)."""
    return _hkdf(shared, th1, INFO_ANSWER_KEY, 32)


def session_keys(shared: bytes, th2: bytes) -> tuple[bytes, bytes]:
    """(session key, confirm key) = HKDF(shared, salt=th2, INFO_KEYS, 64) split in two."""
    okm = _hkdf(shared, th2, INFO_KEYS, 64)
    return okm[:32], okm[32:]


def confirm_mac(confirm_key: bytes, th2: bytes) -> bytes:
    return hmac.new(confirm_key, CTX_CONFIRM + th2, hashlib.sha256).digest()


def _x25519(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # all-zero output: a low-order point
        raise ProtocolError("malformed", f"bad X25519 key: {exc}") from None
    return shared


def _raw_x25519_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class NodeSession:
    handset_id: str
    ble_address: str  # "AA:BB:CC:DD:EE:FF"
    ble_address_type: int  # 0 public, 1 random
    consent: int
    session_key: bytes
    node_id: str
    started: float  # the node's best time (unix s) at the hello: a label, not a check
    #: The handset certificate's Ed25519 key: what the node checks the handset's signed
    #: records (its open records, tapcast.protocol.openrecord) against.
    handset_key: bytes = b""


@dataclass(frozen=True)
class HandsetSession:
    node_id: str
    zone: str
    session_key: bytes


@dataclass(frozen=True)
class NodeVerdict:
    """``reason`` "ok" means the handset answer checked out (session set); CONFIRM is
    still to be sent."""

    reason: str
    session: NodeSession | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reason == "ok"


# ------------------------------------------------------------------ node side


RevocationSource = Container[str] | Callable[[], Container[str]]


class NodeAuth:
    """Node credentials + policy (trusted hub keys, revocations, time); ``begin()`` per tap.

    ``clock``: the node's best time (tapcast.clock.BestTime.now on a node), used only for
    certificate validity. ``clock_trusted``: whether that time comes from a trustworthy
    source; without one, not-before cannot be checked and is skipped (expiry still is).
    ``monotonic``: for the answer deadline, immune to the wall clock being set mid-tap."""

    def __init__(self, credentials: NodeCredentials,
                 revoked: RevocationSource = frozenset(),
                 clock: Callable[[], float] = time.time, *,
                 clock_trusted: Callable[[], bool] = lambda: True,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.credentials = credentials
        self.hub_keyring = credentials.hub_keyring
        self._revoked = revoked
        self._clock = clock
        self._clock_trusted = clock_trusted
        self.monotonic = monotonic

    def revoked(self) -> Container[str]:
        return self._revoked() if callable(self._revoked) else self._revoked

    def begin(self, *, nonce: bytes | None = None,
              ephemeral: X25519PrivateKey | None = None,
              now: float | None = None) -> NodeHandshake:
        """Start one tap. ``nonce``/``ephemeral``/``now`` are for test vectors only."""
        return NodeHandshake(self, nonce or os.urandom(NONCE_LEN),
                             ephemeral or X25519PrivateKey.generate(),
                             int(self._clock() if now is None else now))

    def now(self) -> float:
        return self._clock()

    def clock_trusted(self) -> bool:
        return self._clock_trusted()


@dataclass
class NodeHandshake:
    """One tap on the node side: hello_apdu() -> check_answer(response) -> confirm_apdu()."""

    auth: NodeAuth
    nonce: bytes
    ephemeral: X25519PrivateKey
    time: int  # best time at the start (NodeSession.started); not sent
    hello: bytes = b""
    began: float = 0.0  # auth.monotonic() when the HELLO was built
    _confirm_mac: bytes | None = field(default=None, repr=False)
    #: Seconds (monotonic) after the HELLO within which an answer is taken: ANSWER_DEADLINE
    #: at a tap; a code's lifetime on the code path (its HELLO is made when it is shown).
    deadline: float = ANSWER_DEADLINE

    def __post_init__(self) -> None:
        creds = self.auth.credentials
        body = encode_hello_body(creds.cert, self.nonce, _raw_x25519_public(self.ephemeral))
        self.hello = body + creds.private_key.sign(CTX_HELLO + body)
        self.began = self.auth.monotonic()

    def select_apdu(self) -> bytes:
        return select_apdu()

    def hello_apdu(self) -> bytes:
        return hello_apdu(self.hello)

    def check_select(self, response: bytes) -> NodeVerdict | None:
        """None if the handset runs our application, else a verdict."""
        return _expect_ok(response, "SELECT")

    def check_answer(self, response: bytes, now: float | None = None) -> NodeVerdict:
        """Verify the handset's response to HELLO (status word included). ``now``
        overrides the best time used for certificate validity (tests)."""
        return self._verdict(self._check_answer, response, now)

    def _check_answer(self, response: bytes, now: float) -> NodeVerdict:
        data, sw = split_response(response)
        if sw == SW.NODE_REJECTED:
            return NodeVerdict("rejected_by_handset", detail="handset refused this node")
        if sw != SW.OK:
            return NodeVerdict("protocol_error", detail=f"HELLO answered {sw:04X}")
        return self._check_answer_data(data, now)

    def check_answer_data(self, data: bytes, now: float | None = None) -> NodeVerdict:
        """Verify an answer that came without a status word (the code path, relayed by
        the hub): the same checks as ``check_answer`` from the deadline on."""
        return self._verdict(self._check_answer_data, data, now)

    def _verdict(self, check: Callable[[bytes, float], NodeVerdict], data: bytes,
                 now: float | None) -> NodeVerdict:
        """``check(data, now)``, its ProtocolError or CertificateError as a verdict."""
        try:
            return check(data, self.auth.now() if now is None else now)
        except (ProtocolError, CertificateError) as exc:
            return NodeVerdict(exc.reason, detail=str(exc))

    def _check_answer_data(self, data: bytes, now: float) -> NodeVerdict:
        elapsed = self.auth.monotonic() - self.began
        if elapsed > self.deadline:
            return NodeVerdict("stale", detail=f"answer {elapsed:.1f} s after hello")
        r = _Reader(data, "answer")
        version = r.u8("version")
        if version != PROTOCOL_VERSION:
            raise ProtocolError("malformed", f"answer version {version}")
        h_nonce = r.take(NONCE_LEN, "nonce")
        h_eph = r.take(X25519_LEN, "ephemeral key")
        sealed = r.data[r.pos:]
        shared = _x25519(self.ephemeral, h_eph)
        th1 = transcript_hash_1(self.hello, h_nonce, h_eph)
        try:
            plain = ChaCha20Poly1305(answer_key(shared, th1)).decrypt(AEAD_NONCE, sealed, th1)
        except InvalidTag:
            # A replayed answer lands here: it was sealed for another node nonce/key.
            return NodeVerdict("bad_signature", detail="answer does not decrypt")
        payload = AnswerPayload.decode(plain)
        cert = Certificate.decode(payload.cert)
        creds = self.auth.credentials
        cert.verify(self.auth.hub_keyring, now, KIND_HANDSET, early=NODE_CLOCK_SKEW,
                    check_not_before=self.auth.clock_trusted())
        if cert.subject_id in self.auth.revoked():
            return NodeVerdict("revoked", detail=f"handset {cert.subject_id} is revoked")
        th2 = transcript_hash_2(th1, payload.signed_part())
        try:
            Ed25519PublicKey.from_public_bytes(cert.public_key).verify(
                payload.signature, CTX_ANSWER + th2)
        except InvalidSignature:
            return NodeVerdict("bad_signature", detail="handset signature does not verify")
        session_key, confirm_key = session_keys(shared, th2)
        self._confirm_mac = confirm_mac(confirm_key, th2)
        return NodeVerdict("ok", NodeSession(
            handset_id=cert.subject_id,
            ble_address=format_ble_address(payload.ble_address),
            ble_address_type=payload.ble_address_type,
            consent=payload.consent,
            session_key=session_key,
            node_id=creds.node_id,
            started=float(self.time),
            handset_key=cert.public_key,
        ))

    def confirmation(self) -> bytes:
        """The 32-byte CONFIRM MAC for the accepted answer (sent in CONFIRM at a tap, in
        the result message on the code path)."""
        if self._confirm_mac is None:
            raise RuntimeError("confirmation before an accepted answer")
        return self._confirm_mac

    def confirm_apdu(self) -> bytes:
        return confirm_apdu(self.confirmation())

    def check_confirm(self, response: bytes) -> NodeVerdict | None:
        """None if the handset accepted the confirm, else a verdict."""
        return _expect_ok(response, "CONFIRM")


def _expect_ok(response: bytes, command: str) -> NodeVerdict | None:
    """None for a bare 90 00 answer, else a protocol_error verdict saying what came."""
    try:
        _, sw = split_response(response)
    except ProtocolError as exc:
        return NodeVerdict("protocol_error", detail=str(exc))
    if sw != SW.OK:
        return NodeVerdict("protocol_error", detail=f"{command} answered {sw:04X}")
    return None


# ------------------------------------------------------------------ handset side


class HelloRejected(ValueError):
    """The node failed the handset's checks (certificate, signature, key): the handset
    answers nothing identifying. ``reason`` is for the handset's own log."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"node rejected: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class PendingAnswer:
    """The handset's answer to one node HELLO (``answer``: the response data, without a
    status word) and what it needs to accept the node's CONFIRM MAC."""

    answer: bytes
    session: HandsetSession
    confirm_mac: bytes = field(repr=False)

    def confirm(self, mac: bytes) -> HandsetSession | None:
        """The session when ``mac`` is the node's CONFIRM MAC (constant time), else None."""
        if len(mac) != MAC_LEN or not hmac.compare_digest(mac, self.confirm_mac):
            return None
        return self.session


def answer_hello(credentials: HandsetCredentials, hello_bytes: bytes, *,
                 ble_address: bytes, ble_address_type: int, consent: int, now: float,
                 rng: Callable[[int], bytes] = os.urandom,
                 ephemeral_factory: Callable[[], X25519PrivateKey] = X25519PrivateKey.generate
                 ) -> PendingAnswer:
    """Check a node's HELLO as a handset checks a reader and build the answer: used by
    the card application (NFC) and by the code path (docs/protocol.md, "Without NFC"),
    so both run the same checks and the same key schedule. Raises ProtocolError
    ("malformed") when the HELLO or its certificate does not parse, HelloRejected when
    the node fails a check (certificate, HELLO signature, ephemeral key)."""
    try:
        hello = Hello.decode(hello_bytes)
        cert = Certificate.decode(hello.cert)
    except CertificateError as exc:
        raise ProtocolError("malformed", str(exc)) from None
    try:
        cert.verify(credentials.hub_keyring, now, KIND_NODE, early=HANDSET_CLOCK_TOLERANCE,
                    late=HANDSET_CLOCK_TOLERANCE)
    except CertificateError as exc:
        raise HelloRejected(exc.reason) from None
    try:
        Ed25519PublicKey.from_public_bytes(cert.public_key).verify(
            hello.signature, CTX_HELLO + hello.encoded[:-SIG_LEN])
    except InvalidSignature:
        raise HelloRejected("bad_signature") from None
    eph = ephemeral_factory()
    try:
        shared = _x25519(eph, hello.ephemeral)
    except ProtocolError:
        raise HelloRejected("bad ephemeral key") from None
    nonce = rng(NONCE_LEN)
    eph_pub = _raw_x25519_public(eph)
    th1 = transcript_hash_1(hello.encoded, nonce, eph_pub)
    payload = AnswerPayload(credentials.cert, ble_address, ble_address_type, consent)
    th2 = transcript_hash_2(th1, payload.signed_part())
    payload = AnswerPayload(payload.cert, payload.ble_address, payload.ble_address_type,
                            payload.consent, credentials.private_key.sign(CTX_ANSWER + th2))
    sealed = ChaCha20Poly1305(answer_key(shared, th1)).encrypt(
        AEAD_NONCE, payload.encode(), th1)
    session_key, confirm_key = session_keys(shared, th2)
    assert cert.zone is not None
    return PendingAnswer(bytes([PROTOCOL_VERSION]) + nonce + eph_pub + sealed,
                         HandsetSession(cert.subject_id, cert.zone, session_key),
                         confirm_mac(confirm_key, th2))


class _State(Enum):
    IDLE = "idle"  # not selected
    SELECTED = "selected"
    ANSWERED = "answered"  # waiting for CONFIRM
    CONFIRMED = "confirmed"


class HandsetCard:
    """The handset's card application: feed it command APDUs, send back what it returns.

    Never raises on input: every bad APDU gets a status word and the card stays usable.
    A node that fails the checks gets only 6982 (nothing identifying)."""

    def __init__(self, credentials: HandsetCredentials, ble_address: str,
                 ble_address_type: int = ADDRESS_RANDOM, consent: int = 0,
                 clock: Callable[[], float] = time.time,
                 rng: Callable[[int], bytes] = os.urandom,
                 ephemeral_factory: Callable[[], X25519PrivateKey] = X25519PrivateKey.generate
                 ) -> None:
        if ble_address_type not in (ADDRESS_PUBLIC, ADDRESS_RANDOM):
            raise ValueError(f"ble_address_type must be 0 (public) or 1 (random), "
                             f"got {ble_address_type}")
        if not 0 <= consent <= 0xFFFF:
            raise ValueError(f"consent flags {consent} do not fit in uint16")
        self.credentials = credentials
        self.hub_keyring = credentials.hub_keyring
        self.ble_address = parse_ble_address(ble_address)
        self.ble_address_type = ble_address_type
        self.consent = consent
        self._clock = clock
        self._rng = rng
        self._ephemeral_factory = ephemeral_factory
        self._state = _State.IDLE
        self._pending: PendingAnswer | None = None
        self.session: HandsetSession | None = None
        self.last_rejection: str | None = None  # why the last node was refused (local log)

    @property
    def state(self) -> str:
        return self._state.value

    def reset(self) -> None:
        """Field off / deselect: forget a half-done exchange (a session stays)."""
        self._state = _State.IDLE
        self._pending = None

    def process_apdu(self, apdu: bytes) -> bytes:
        try:
            cmd = parse_command_apdu(apdu)
            data, sw = self._dispatch(cmd)
        except ApduError as exc:
            log.info("handset: %s", exc)
            return exc.sw.wire
        except Exception:  # a bug must not take the card down mid-tap
            log.exception("handset: internal error on APDU %s", bytes(apdu).hex())
            return SW.INTERNAL.wire
        return data + sw.wire

    def _dispatch(self, cmd: CommandApdu) -> tuple[bytes, SW]:
        if cmd.cla == CLA_ISO and cmd.ins == INS_SELECT:
            return self._select(cmd)
        if cmd.cla == CLA_ISO:
            raise ApduError(SW.UNKNOWN_INS, f"INS {cmd.ins:02X} for CLA 00")
        if cmd.cla != CLA_PROPRIETARY:
            raise ApduError(SW.UNKNOWN_CLA, f"CLA {cmd.cla:02X}")
        if cmd.ins not in (INS_HELLO, INS_CONFIRM):
            raise ApduError(SW.UNKNOWN_INS, f"INS {cmd.ins:02X}")
        if cmd.p1 or cmd.p2:
            raise ApduError(SW.WRONG_P1P2, f"P1P2 {cmd.p1:02X}{cmd.p2:02X}")
        if cmd.ins == INS_HELLO:
            return self._hello(cmd)
        return self._confirm(cmd)

    def _select(self, cmd: CommandApdu) -> tuple[bytes, SW]:
        if cmd.p1 != 0x04 or cmd.p2 not in (0x00, 0x0C):
            raise ApduError(SW.WRONG_P1P2, f"SELECT P1P2 {cmd.p1:02X}{cmd.p2:02X}")
        if cmd.data != AID:
            self.reset()
            raise ApduError(SW.WRONG_AID, f"AID {cmd.data.hex()}")
        self._state = _State.SELECTED
        self._pending = None
        return bytes([PROTOCOL_VERSION]), SW.OK

    def _reject(self, why: str) -> tuple[bytes, SW]:
        log.info("handset: node rejected: %s", why)
        self.last_rejection = why
        return b"", SW.NODE_REJECTED

    def _hello(self, cmd: CommandApdu) -> tuple[bytes, SW]:
        if self._state is _State.IDLE:
            raise ApduError(SW.OUT_OF_SEQUENCE, "HELLO before SELECT")
        self._state, self._pending = _State.SELECTED, None
        try:
            pending = answer_hello(self.credentials, cmd.data, ble_address=self.ble_address,
                                   ble_address_type=self.ble_address_type,
                                   consent=self.consent, now=self._clock(), rng=self._rng,
                                   ephemeral_factory=self._ephemeral_factory)
        except ProtocolError as exc:
            raise ApduError(SW.MALFORMED, str(exc)) from None
        except HelloRejected as exc:
            return self._reject(exc.reason)
        self._pending = pending
        self._state = _State.ANSWERED
        return pending.answer, SW.OK

    def _confirm(self, cmd: CommandApdu) -> tuple[bytes, SW]:
        if self._state is not _State.ANSWERED or self._pending is None:
            raise ApduError(SW.OUT_OF_SEQUENCE, "CONFIRM without a pending answer")
        if len(cmd.data) != MAC_LEN:
            raise ApduError(SW.WRONG_LENGTH, f"CONFIRM data of {len(cmd.data)} bytes, "
                            f"expected {MAC_LEN}")
        session = self._pending.confirm(cmd.data)
        if session is None:
            self._state, self._pending = _State.SELECTED, None
            return self._reject("confirm MAC does not verify")
        self.session = session
        self._state, self._pending = _State.CONFIRMED, None
        return b"", SW.OK
