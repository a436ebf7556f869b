"""Signed objects (tapcast.signed): manifests, config, revocation lists; byte layout in
docs/protocol.md, "Signed objects"."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from tapcast.keys import CERT_CONTEXT, HubAuthority, HubKeyring
from tapcast.signed import (
    MAX_BODY,
    SIGNED_CONTEXT,
    SignedObjectError,
    open_signed,
    peek,
    sign_object,
)

ISSUED = 1_700_000_000
EXPIRES = 1_800_000_000
NOW = 1_750_000_000
BODY = b'{"items":["menu"]}'

# Test vector (also in docs/protocol.md): hub seed 00..1f, kind "manifest", subject
# "node-1", serial 7, issued 1_700_000_000, expires 1_800_000_000, body BODY. Ed25519
# signatures are deterministic, so any change to the format changes these bytes.
VECTOR = (
    "5443534f" "01"  # magic "TCSO", version 1
    "08" "6d616e6966657374"  # "manifest"
    "06" "6e6f64652d31"  # "node-1"
    "56475aa75463474c"  # hub key id
    "0000000000000007"  # serial 7
    "000000006553f100"  # issued 1_700_000_000
    "000000006b49d200"  # expires 1_800_000_000
    "00000012" "7b226974656d73223a5b226d656e75225d7d"  # 18-byte body
    "bb7c5471fda68964dc129409b757e03700c5f9c24cdc59a4b9694a10fc456f60"
    "7521e3090dcf7c108f301e6a47438f56bec22761a500116e6f93a09b547a6d07")
KEY_ID_AT = slice(4 + 1 + 9 + 7, 4 + 1 + 9 + 7 + 8)  # where VECTOR's key id lies


@pytest.fixture(scope="module")
def hub() -> HubAuthority:
    return HubAuthority.from_seed(bytes(range(32)))


def make(hub: HubAuthority, kind: str = "manifest", subject: str = "node-1",
         serial: int = 7, body: bytes = BODY, **times: float) -> bytes:
    times.setdefault("issued", ISSUED)
    times.setdefault("expires", EXPIRES)
    return sign_object(hub, kind, subject, serial, body, **times)


def reason(data: bytes, keys: object, **checks: object) -> str:
    checks.setdefault("kind", "manifest")
    checks.setdefault("now", NOW)
    with pytest.raises(SignedObjectError) as info:
        open_signed(data, keys, **checks)  # type: ignore[arg-type]
    return info.value.reason


def test_round_trip_gives_back_every_field(hub: HubAuthority) -> None:
    raw = make(hub, "config", "*", 3, b"\x00binary\xff")
    obj = open_signed(raw, hub.public_key_bytes, kind="config", subject="node-9", now=NOW)
    assert (obj.kind, obj.subject, obj.key_id, obj.serial, obj.issued, obj.expires,
            obj.body, obj.raw) == ("config", "*", hub.key_id, 3, ISSUED, EXPIRES,
                                   b"\x00binary\xff", raw)


def test_signed_bytes_match_the_vector(hub: HubAuthority) -> None:
    assert make(hub).hex() == VECTOR


def test_vector_opens(hub: HubAuthority) -> None:
    obj = open_signed(bytes.fromhex(VECTOR), hub.public_key_bytes, kind="manifest",
                      subject="node-1", now=NOW, min_serial=7)
    assert obj.body == BODY


def test_peek_parses_without_a_key() -> None:
    obj = peek(bytes.fromhex(VECTOR))
    assert (obj.kind, obj.subject, obj.serial, obj.body) == ("manifest", "node-1", 7, BODY)


def test_empty_body_is_allowed(hub: HubAuthority) -> None:
    raw = make(hub, "revocations", body=b"")
    assert open_signed(raw, hub.public_key_bytes, kind="revocations", now=NOW).body == b""


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_flipped_bit_is_refused(hub: HubAuthority, data: st.DataObject) -> None:
    raw = bytearray.fromhex(VECTOR)
    bit = data.draw(st.integers(0, len(raw) * 8 - 1), label="bit")
    raw[bit // 8] ^= 1 << (bit % 8)
    got = reason(bytes(raw), hub.public_key_bytes)
    if KEY_ID_AT.start <= bit // 8 < KEY_ID_AT.stop:
        assert got == "unknown_key"
    else:
        assert got in ("malformed", "bad_signature")


def test_every_truncation_is_malformed(hub: HubAuthority) -> None:
    raw = bytes.fromhex(VECTOR)
    for n in range(len(raw)):
        assert reason(raw[:n], hub.public_key_bytes) == "malformed", n


def test_trailing_bytes_are_malformed(hub: HubAuthority) -> None:
    assert reason(bytes.fromhex(VECTOR) + b"\x00", hub.public_key_bytes) == "malformed"


@pytest.mark.parametrize("offset, value", [(0, ord("X")), (4, 2)], ids=["magic", "version"])
def test_bad_magic_or_version_is_malformed(hub: HubAuthority, offset: int,
                                           value: int) -> None:
    raw = bytearray.fromhex(VECTOR)
    raw[offset] = value
    assert reason(bytes(raw), hub.public_key_bytes) == "malformed"


def test_bad_characters_in_kind_or_subject_are_malformed(hub: HubAuthority) -> None:
    raw = bytes.fromhex(VECTOR)
    for before, after in [(b"manifest", b"Manifest"), (b"node-1", b"node/1")]:
        assert reason(raw.replace(before, after), hub.public_key_bytes) == "malformed"


def test_oversized_is_refused_before_parsing(hub: HubAuthority) -> None:
    assert reason(b"\xff" * 1001, hub.public_key_bytes, max_size=1000) == "too_large"


def test_body_over_max_body_cannot_be_signed(hub: HubAuthority) -> None:
    with pytest.raises(ValueError, match="MAX_BODY"):
        make(hub, body=bytes(MAX_BODY + 1))


@pytest.mark.parametrize("args", [
    dict(kind="Manifest"), dict(kind=""), dict(kind="k" * 33), dict(subject="a b"),
    dict(subject=""), dict(subject="n" * 65), dict(serial=-1), dict(serial=2**64),
    dict(expires=ISSUED),
], ids=str)
def test_bad_inputs_cannot_be_signed(hub: HubAuthority, args: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make(hub, **args)  # type: ignore[arg-type]


def test_unknown_key_is_refused(hub: HubAuthority) -> None:
    other = HubAuthority.from_seed(bytes([9]) * 32)
    assert reason(make(hub), other.public_key_bytes) == "unknown_key"


def test_a_certificate_signature_does_not_make_a_signed_object(hub: HubAuthority) -> None:
    signed = make(hub)[:-64]
    assert CERT_CONTEXT != SIGNED_CONTEXT
    forged = signed + hub.sign(CERT_CONTEXT, signed)
    assert reason(forged, hub.public_key_bytes) == "bad_signature"


def test_wrong_kind_is_refused(hub: HubAuthority) -> None:
    assert reason(make(hub, "config"), hub.public_key_bytes, kind="manifest") == "wrong_kind"


def test_subject_star_is_accepted_for_any_node(hub: HubAuthority) -> None:
    raw = make(hub, subject="*")
    for node in ("node-1", "node-2"):
        assert open_signed(raw, hub.public_key_bytes, kind="manifest", subject=node,
                           now=NOW).subject == "*"


def test_another_nodes_subject_is_refused(hub: HubAuthority) -> None:
    raw = make(hub, subject="node-1")
    assert reason(raw, hub.public_key_bytes, subject="node-2") == "wrong_subject"


def test_expired_is_refused_from_the_expiry_second_on(hub: HubAuthority) -> None:
    raw = make(hub)
    open_signed(raw, hub.public_key_bytes, kind="manifest", now=EXPIRES - 1)
    assert reason(raw, hub.public_key_bytes, now=EXPIRES) == "expired"


def test_issued_in_the_future_beyond_tolerance_is_not_yet_valid(hub: HubAuthority) -> None:
    raw = make(hub)
    open_signed(raw, hub.public_key_bytes, kind="manifest", now=ISSUED - 300)
    assert reason(raw, hub.public_key_bytes, now=ISSUED - 301) == "not_yet_valid"


def test_infinite_tolerance_skips_the_issued_check(hub: HubAuthority) -> None:
    open_signed(make(hub), hub.public_key_bytes, kind="manifest", now=0,
                tolerance=float("inf"))


def test_lower_serial_is_stale(hub: HubAuthority) -> None:
    assert reason(make(hub, serial=6), hub.public_key_bytes, min_serial=7) == "stale"


def test_equal_serial_is_accepted_as_a_redelivery(hub: HubAuthority) -> None:
    assert open_signed(make(hub, serial=7), hub.public_key_bytes, kind="manifest",
                       now=NOW, min_serial=7).serial == 7


def test_keyring_with_old_and_new_key_accepts_either(hub: HubAuthority) -> None:
    new = HubAuthority.from_seed(bytes([9]) * 32)
    ring = HubKeyring([new.public_key_bytes, hub.public_key_bytes])
    for authority in (hub, new):
        obj = open_signed(make(authority), ring, kind="manifest", now=NOW)
        assert obj.key_id == authority.key_id


def test_error_message_names_the_reason_and_the_object(hub: HubAuthority) -> None:
    with pytest.raises(SignedObjectError, match=r"^expired: manifest for 'node-1'"):
        open_signed(make(hub), hub.public_key_bytes, kind="manifest", now=EXPIRES)
