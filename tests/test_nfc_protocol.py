"""NFC mutual authentication as pure state machines (tapcast.protocol.nfc).

The over-the-air version of the same exchange, through nfcpy's udp driver, is in
test_nfc_udp.py. Byte layouts are in docs/protocol.md; the vector below is its worked
example.
"""
from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from tapcast.keys import HubAuthority, make_handset_credentials, make_node_credentials
from tapcast.protocol.nfc import (
    ANSWER_DEADLINE,
    HANDSET_CLOCK_TOLERANCE,
    NODE_CLOCK_SKEW,
    SW,
    AnswerPayload,
    ApduError,
    CommandApdu,
    HandsetCard,
    NodeAuth,
    answer_key,
    confirm_mac,
    parse_command_apdu,
    select_apdu,
    session_keys,
    transcript_hash_1,
    transcript_hash_2,
)

T = 1_700_000_000
NOT_BEFORE = 1_600_000_000
EXPIRES = 1_800_000_000
DAY = 86_400

# ---------------------------------------------------------------- test vector
# hub seed 00..1f (key id 56475aa75463474c); node key seed 01*32; handset key seed 02*32;
# both certificates valid 1_600_000_000..1_800_000_000; node nonce 00..0f; handset nonce
# 10..1f; node X25519 seed 03*32; handset X25519 seed 04*32; both clocks read T+1 (they
# only decide certificate validity: no time travels in the exchange); handset BLE
# C0:11:22:33:44:55 random, consent 0x0003.
NODE_CERT = (
    "01" "02" "56475aa75463474c"  # kind node, version 2, hub key id
    "066e6f64652d31" "0668616c6c2d61"  # "node-1", "hall-a"
    "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"  # node key
    "000000005f5e1000" "000000006b49d200"  # not-before, expiry
    "b170e18872e19eedf5bdaa369878f837ddca4c8a9ac1c8646b9bcb92ed34b258"  # hub signature
    "1864ff1469450b3829f8314e8db1ca59a81c3a80c4bcce90ee28e9481ecc5107")
V_SELECT = "00a4040008f05441504353540100"
V_SELECT_RSP = "029000"
V_HELLO_APDU = (
    "80100000" "0000fb"  # CLA INS P1 P2, extended Lc = 251
    "02" "0088"  # version, cert length 136
    + NODE_CERT +
    "000102030405060708090a0b0c0d0e0f"  # node nonce
    "5dfedd3b6bd47f6fa28ee15d969d5bb0ea53774d488bdaf9df1c6e0124b3ef22"  # node X25519
    "3b83fd71e30812221ae9b0455338b09afd2f02ca4b993592a5be372107af1a51"  # node signature
    "0c01f989ad212801e3c0fc8008fe8f82ed751b708e6feb1e6a7d4a0a39bb870b"
    "0000")  # extended Le = 0 (maximum)
V_ANSWER_RSP = (
    "02" "101112131415161718191a1b1c1d1e1f"  # version, handset nonce
    "ac01b2209e86354fb853237b5de0f4fab13c7fcbf433a61c019369617fecf10b"  # handset X25519
    "b84227b0b004068a55d242daa40604585394d7f3d2cc212ffa96a09d8dad3906"  # sealed payload..
    "cc8749e315b1e2535f30483ec13ed27445ad9a4f70964f86cf062d2cf175fdf6"
    "b13b19c596cc9393f7910c9495bf7f9045ac46013e0f54c400f53a2290333a86"
    "548d8ff04f4046adeac74e3ce798fa216a760dd1b72c5180b6ad078aceddea6b"
    "583035c12bf31671d813448ac4969642f5863c0b72233067e71a7f3257f097ff"
    "90a1ded7ef4db77363db34af43d835ae057c91cedaaaf903ded78a80942d77c7"
    "1e5de2564c048e9af5f8edf24ae9b2a23757a1ce05a1fd8bc333"  # ..and its Poly1305 tag
    "9000")
V_SESSION_KEY = "bf81a312e8111fe873e8bc73771ab13248ed2248f7e83c4a802171fed9b60974"
V_SHARED = "40e47a3f525bdcac491d418978d7db5af623ac7afe7623c6d78a5d4fce9d0f63"
V_TH1 = "1bdfbdaa7fd17de4a7600be454c7172795033cb7491ca7791d83e199dd39efbf"
V_ANSWER_KEY = "7d7006c68be70f7bd0cadab4bc2c0dcff5623de645c46094fb91cb66b961f7fd"
V_TH2 = "c1ce62c2d1cfdc5cfceddbb028798fc32f3fc3c82fc64426c3413f96b26ad789"
V_CONFIRM_KEY = "72dde21dda72fc724a8afa3f8743790b6bbe90517076bc35c41a82ca9d5e9382"
V_CONFIRM_APDU = ("8012000020"
                  "3b22eed7f6ed33bd64f8555aa878bbd6820065254ccff97c4bdf90f3c682d09a")


@pytest.fixture
def hub() -> HubAuthority:
    return HubAuthority.from_seed(bytes(range(32)))


def node_creds(hub: HubAuthority, node_id: str, zone: str, expires: float,
               **kwargs: object):  # type: ignore[no-untyped-def]
    """Node credentials issued a day before T (unless told otherwise)."""
    kwargs.setdefault("not_before", min(T - DAY, expires))
    return make_node_credentials(hub, node_id, zone, expires, **kwargs)  # type: ignore[arg-type]


def handset_creds(hub: HubAuthority, handset_id: str, expires: float,
                  **kwargs: object):  # type: ignore[no-untyped-def]
    kwargs.setdefault("not_before", min(T - DAY, expires))
    return make_handset_credentials(hub, handset_id, expires, **kwargs)  # type: ignore[arg-type]


def vector_parties(hub: HubAuthority) -> tuple[NodeAuth, HandsetCard]:
    node = make_node_credentials(hub, "node-1", "hall-a", EXPIRES,
                                 Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32),
                                 not_before=NOT_BEFORE)
    handset = make_handset_credentials(hub, "h-42", EXPIRES,
                                       Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32),
                                       not_before=NOT_BEFORE)
    card = HandsetCard(handset, "C0:11:22:33:44:55", 1, 0x0003, clock=lambda: T + 1,
                       rng=lambda n: bytes(range(16, 32)),
                       ephemeral_factory=lambda: X25519PrivateKey.from_private_bytes(
                           bytes([4]) * 32))
    return NodeAuth(node, clock=lambda: T + 1), card


def test_exchange_bytes_match_the_vector(hub: HubAuthority) -> None:
    auth, card = vector_parties(hub)
    hs = auth.begin(nonce=bytes(range(16)),
                    ephemeral=X25519PrivateKey.from_private_bytes(bytes([3]) * 32), now=T)
    assert hs.select_apdu().hex() == V_SELECT
    assert card.process_apdu(hs.select_apdu()).hex() == V_SELECT_RSP
    assert hs.hello_apdu().hex() == V_HELLO_APDU
    answer = card.process_apdu(hs.hello_apdu())
    assert answer.hex() == V_ANSWER_RSP
    verdict = hs.check_answer(answer)
    assert verdict.reason == "ok"
    assert verdict.session is not None
    assert verdict.session.session_key.hex() == V_SESSION_KEY
    assert hs.confirm_apdu().hex() == V_CONFIRM_APDU
    assert card.process_apdu(hs.confirm_apdu()) == b"\x90\x00"
    assert card.session is not None and card.session.session_key.hex() == V_SESSION_KEY


def test_key_schedule_matches_the_vector() -> None:
    """Recompute docs/protocol.md's intermediate values from the vector's bytes alone."""
    hello = bytes.fromhex(V_HELLO_APDU)[7:-2]
    answer = bytes.fromhex(V_ANSWER_RSP)[:-2]
    h_nonce, h_eph, sealed = answer[1:17], answer[17:49], answer[49:]
    shared = X25519PrivateKey.from_private_bytes(bytes([3]) * 32).exchange(
        X25519PublicKey.from_public_bytes(h_eph))
    assert shared.hex() == V_SHARED
    th1 = transcript_hash_1(hello, h_nonce, h_eph)
    assert th1.hex() == V_TH1
    assert answer_key(shared, th1).hex() == V_ANSWER_KEY
    payload = ChaCha20Poly1305(answer_key(shared, th1)).decrypt(bytes(12), sealed, th1)
    th2 = transcript_hash_2(th1, AnswerPayload.decode(payload).signed_part())
    assert th2.hex() == V_TH2
    session, confirm = session_keys(shared, th2)
    assert (session.hex(), confirm.hex()) == (V_SESSION_KEY, V_CONFIRM_KEY)
    assert confirm_mac(confirm, th2).hex() == V_CONFIRM_APDU[10:]


# ---------------------------------------------------------------- fresh parties


@pytest.fixture
def node_auth(hub: HubAuthority) -> NodeAuth:
    return NodeAuth(node_creds(hub, "node-1", "hall-a", T + 3600),
                    clock=lambda: T)


@pytest.fixture
def card(hub: HubAuthority) -> HandsetCard:
    return HandsetCard(handset_creds(hub, "h-42", T + 3600), "C0:11:22:33:44:55",
                       1, 0x0005, clock=lambda: T)


def run_until_answer(auth: NodeAuth, card: HandsetCard, **begin: object) -> tuple:
    hs = auth.begin(**begin)  # type: ignore[arg-type]
    assert card.process_apdu(hs.select_apdu()) == b"\x02\x90\x00"
    return hs, card.process_apdu(hs.hello_apdu())


def test_both_sides_derive_the_same_session_key(node_auth: NodeAuth, card: HandsetCard) -> None:
    hs, answer = run_until_answer(node_auth, card)
    verdict = hs.check_answer(answer)
    assert card.process_apdu(hs.confirm_apdu()) == b"\x90\x00"
    assert verdict.session is not None and card.session is not None
    assert verdict.session.session_key == card.session.session_key
    assert (verdict.session.handset_id, verdict.session.ble_address,
            verdict.session.ble_address_type, verdict.session.consent,
            verdict.session.node_id) == ("h-42", "C0:11:22:33:44:55", 1, 5, "node-1")
    assert (card.session.node_id, card.session.zone) == ("node-1", "hall-a")


def test_handset_has_no_session_before_confirm(node_auth: NodeAuth, card: HandsetCard) -> None:
    hs, answer = run_until_answer(node_auth, card)
    assert hs.check_answer(answer).ok
    assert card.session is None


def test_replayed_handset_answer_is_rejected(node_auth: NodeAuth, card: HandsetCard) -> None:
    _, recorded = run_until_answer(node_auth, card)
    fresh = node_auth.begin()
    assert fresh.check_answer(recorded).reason == "bad_signature"


def test_tampered_answer_is_rejected(node_auth: NodeAuth, card: HandsetCard) -> None:
    hs, answer = run_until_answer(node_auth, card)
    tampered = bytearray(answer)
    tampered[60] ^= 0x01
    assert hs.check_answer(bytes(tampered)).reason == "bad_signature"


def test_late_answer_is_stale_by_the_monotonic_clock(hub: HubAuthority,
                                                       card: HandsetCard) -> None:
    ticks = [100.0]
    auth = NodeAuth(node_creds(hub, "node-1", "hall-a", T + 3600),
                    clock=lambda: T, monotonic=lambda: ticks[0])
    hs, answer = run_until_answer(auth, card)
    ticks[0] += ANSWER_DEADLINE + 1
    assert hs.check_answer(answer).reason == "stale"


def test_expired_handset_certificate(hub: HubAuthority, node_auth: NodeAuth) -> None:
    card = HandsetCard(handset_creds(hub, "h-1", T - 1), "C0:00:00:00:00:01",
                       clock=lambda: T)
    hs, answer = run_until_answer(node_auth, card)
    assert hs.check_answer(answer).reason == "expired_certificate"


def test_handset_certificate_from_another_hub(hub: HubAuthority, node_auth: NodeAuth) -> None:
    rogue = HubAuthority.generate()
    creds = handset_creds(rogue, "h-1", T + 60)
    creds = type(creds)(creds.handset_id, creds.private_key, creds.cert, hub.public_key_bytes)
    card = HandsetCard(creds, "C0:00:00:00:00:01", clock=lambda: T)
    hs, answer = run_until_answer(node_auth, card)
    assert hs.check_answer(answer).reason == "unknown_key_id"


def test_revoked_handset(hub: HubAuthority, card: HandsetCard) -> None:
    auth = NodeAuth(node_creds(hub, "node-1", "hall-a", T + 3600),
                    revoked=lambda: {"h-42"}, clock=lambda: T)
    hs, answer = run_until_answer(auth, card)
    assert hs.check_answer(answer).reason == "revoked"


def test_handset_refusal_maps_to_rejected_by_handset(node_auth: NodeAuth) -> None:
    assert node_auth.begin().check_answer(b"\x69\x82").reason == "rejected_by_handset"


def test_answer_without_status_word_is_a_protocol_error(node_auth: NodeAuth) -> None:
    assert node_auth.begin().check_answer(b"\x90").reason == "protocol_error"


def test_truncated_answer_is_malformed(node_auth: NodeAuth) -> None:
    assert node_auth.begin().check_answer(b"\x01\x02\x90\x00").reason == "malformed"


# ------------------------------------------------ the handset refuses bad nodes


def rogue_node(hub: HubAuthority, **kwargs: object) -> NodeAuth:
    return NodeAuth(node_creds(hub, "node-x", "hall-a", T + 3600), **kwargs)


def test_node_from_another_hub_gets_only_a_status_word(card: HandsetCard) -> None:
    hs, answer = run_until_answer(rogue_node(HubAuthority.generate(), clock=lambda: T), card)
    assert answer == SW.NODE_REJECTED.wire
    assert card.last_rejection == "unknown_key_id"


def test_node_certificate_expired_within_the_handset_tolerance_is_accepted(
        hub: HubAuthority, card: HandsetCard) -> None:
    auth = NodeAuth(node_creds(hub, "node-1", "hall-a", T - 60), clock=lambda: T)
    _, answer = run_until_answer(auth, card)
    assert answer.endswith(b"\x90\x00")


def test_node_certificate_expired_beyond_the_handset_tolerance_is_refused(
        hub: HubAuthority, card: HandsetCard) -> None:
    expired = T - HANDSET_CLOCK_TOLERANCE - 1
    auth = NodeAuth(node_creds(hub, "node-1", "hall-a", expired,
                                          not_before=expired - DAY), clock=lambda: T)
    _, answer = run_until_answer(auth, card)
    assert (answer, card.last_rejection) == (SW.NODE_REJECTED.wire, "expired_certificate")


def test_node_certificate_not_yet_valid_on_the_handset_clock_is_refused(
        hub: HubAuthority, card: HandsetCard) -> None:
    auth = NodeAuth(node_creds(hub, "node-1", "hall-a", T + 10 * DAY,
                                          not_before=T + HANDSET_CLOCK_TOLERANCE + 1),
                    clock=lambda: T)
    _, answer = run_until_answer(auth, card)
    assert (answer, card.last_rejection) == (SW.NODE_REJECTED.wire, "not_yet_valid")


# ------------------------------------------------- freshness without a clock


@pytest.mark.parametrize("skew", [-3 * DAY, 3 * DAY])
def test_tap_authenticates_on_a_node_whose_clock_is_three_days_off(
        hub: HubAuthority, skew: float) -> None:
    """The node's clock decides nothing but certificate validity; an untrusted clock
    (no NTP, no hub time yet) skips not-before, so a handset certified today still
    passes on a node that believes it is three days earlier."""
    real_now = T
    auth = NodeAuth(node_creds(hub, "node-1", "hall-a", real_now + 365 * DAY,
                                          not_before=real_now - 30 * DAY),
                    clock=lambda: real_now + skew, clock_trusted=lambda: False)
    card = HandsetCard(handset_creds(hub, "h-42", real_now + 365 * DAY,
                                                not_before=real_now - 60),
                       "C0:11:22:33:44:55", clock=lambda: real_now)
    hs, answer = run_until_answer(auth, card)
    verdict = hs.check_answer(answer)
    assert verdict.reason == "ok", verdict.detail
    assert card.process_apdu(hs.confirm_apdu()) == b"\x90\x00"
    assert card.session is not None


def test_replayed_answer_is_rejected_on_a_node_whose_clock_is_off(
        hub: HubAuthority, card: HandsetCard) -> None:
    auth = NodeAuth(node_creds(hub, "node-1", "hall-a", T + 365 * DAY),
                    clock=lambda: T - 3 * DAY, clock_trusted=lambda: False)
    _, recorded = run_until_answer(auth, card)
    assert auth.begin().check_answer(recorded).reason == "bad_signature"


def test_replayed_hello_gets_an_answer_that_cannot_be_confirmed(
        node_auth: NodeAuth, card: HandsetCard) -> None:
    """No time window: a rogue reader may replay a recorded HELLO at any time; it gets
    a sealed answer it cannot open (no node ephemeral key) and cannot CONFIRM."""
    recorded = node_auth.begin().hello_apdu()
    card.process_apdu(select_apdu())
    assert card.process_apdu(recorded).endswith(b"\x90\x00")
    guess = CommandApdu(0x80, 0x12, 0, 0, bytes(32)).encode()  # a MAC without the key
    assert card.process_apdu(guess) == SW.NODE_REJECTED.wire
    assert card.session is None


def test_expired_handset_certificate_is_refused_by_the_floor_of_an_untrusted_clock(
        hub: HubAuthority) -> None:
    """Best time never goes below the floor, so a certificate that expired before the
    last time the node knew is refused even with no trustworthy time."""
    auth = NodeAuth(node_creds(hub, "node-1", "hall-a", T + 365 * DAY),
                    clock=lambda: T, clock_trusted=lambda: False)
    card = HandsetCard(handset_creds(hub, "h-1", T - NODE_CLOCK_SKEW - 1,
                                                not_before=T - DAY),
                       "C0:00:00:00:00:01", clock=lambda: T)
    hs, answer = run_until_answer(auth, card)
    assert hs.check_answer(answer).reason == "expired_certificate"


def test_not_yet_valid_handset_certificate_is_refused_by_a_trusted_clock(
        hub: HubAuthority) -> None:
    auth = NodeAuth(node_creds(hub, "node-1", "hall-a", T + 365 * DAY),
                    clock=lambda: T, clock_trusted=lambda: True)
    card = HandsetCard(handset_creds(hub, "h-1", T + 30 * DAY,
                                                not_before=T + NODE_CLOCK_SKEW + 1),
                       "C0:00:00:00:00:01", clock=lambda: T + NODE_CLOCK_SKEW + 1)
    hs, answer = run_until_answer(auth, card)
    verdict = hs.check_answer(answer)
    assert verdict.reason == "not_yet_valid"
    assert "valid from" in verdict.detail


def test_not_before_is_not_checked_without_trustworthy_time(hub: HubAuthority) -> None:
    auth = NodeAuth(node_creds(hub, "node-1", "hall-a", T + 365 * DAY),
                    clock=lambda: T, clock_trusted=lambda: False)
    card = HandsetCard(handset_creds(hub, "h-1", T + 30 * DAY,
                                                not_before=T + DAY),
                       "C0:00:00:00:00:01", clock=lambda: T + DAY)
    hs, answer = run_until_answer(auth, card)
    assert hs.check_answer(answer).ok


# ------------------------------------------------------------- key rotation


def test_certificates_from_either_hub_key_are_accepted_during_rotation(
        hub: HubAuthority) -> None:
    new = HubAuthority.from_seed(bytes([9]) * 32)
    auth = NodeAuth(node_creds(new, "node-1", "hall-a", T + 3600,
                                          also_trust=[hub.public_key_bytes]),
                    clock=lambda: T)
    for issuer in (hub, new):
        creds = handset_creds(issuer, f"h-{issuer.key_id.hex()[:6]}", T + 3600,
                                         also_trust=[new.public_key_bytes])
        card = HandsetCard(creds, "C0:00:00:00:00:01", clock=lambda: T)
        hs, answer = run_until_answer(auth, card)
        assert hs.check_answer(answer).ok


def test_handset_certificate_from_an_untrusted_key_id_names_the_key(
        hub: HubAuthority, node_auth: NodeAuth) -> None:
    retired = HubAuthority.from_seed(bytes([8]) * 32)
    creds = handset_creds(retired, "h-old", T + 3600,
                                     also_trust=[hub.public_key_bytes])
    card = HandsetCard(creds, "C0:00:00:00:00:01", clock=lambda: T)
    hs, answer = run_until_answer(node_auth, card)
    verdict = hs.check_answer(answer)
    assert verdict.reason == "unknown_key_id"
    assert retired.key_id.hex() in verdict.detail


def test_hello_with_a_bad_signature_is_refused(node_auth: NodeAuth, card: HandsetCard) -> None:
    hs = node_auth.begin()
    card.process_apdu(hs.select_apdu())
    apdu = bytearray(hs.hello_apdu())
    apdu[-3] ^= 0x01  # last signature byte (before the 2-byte extended Le)
    assert card.process_apdu(bytes(apdu)) == SW.NODE_REJECTED.wire
    assert card.last_rejection == "bad_signature"


def test_wrong_confirm_mac_gives_no_session(node_auth: NodeAuth, card: HandsetCard) -> None:
    hs, answer = run_until_answer(node_auth, card)
    hs.check_answer(answer)
    bad = bytearray(hs.confirm_apdu())
    bad[-1] ^= 0x01
    assert card.process_apdu(bytes(bad)) == SW.NODE_REJECTED.wire
    assert card.session is None


# ------------------------------------------------------------ malformed APDUs


@pytest.mark.parametrize("apdu, sw", [
    (b"\x00\xa4", SW.WRONG_LENGTH),  # shorter than a header
    (bytes.fromhex("00a4040008f054"), SW.WRONG_LENGTH),  # Lc 8, 2 bytes follow
    (bytes.fromhex("00a4040008f0544150435354") + b"\x01\x00\x00", SW.WRONG_LENGTH),
    (bytes.fromhex("00a4040008a000000003101001"), SW.WRONG_AID),
    (bytes.fromhex("00b0000000"), SW.UNKNOWN_INS),  # READ BINARY
    (bytes.fromhex("90100000"), SW.UNKNOWN_CLA),
    (bytes.fromhex("80ff0000"), SW.UNKNOWN_INS),
    (bytes.fromhex("80100100"), SW.WRONG_P1P2),
    (bytes.fromhex("80100000020102"), SW.OUT_OF_SEQUENCE),  # HELLO before SELECT
    (bytes.fromhex("8012000000"), SW.OUT_OF_SEQUENCE),  # CONFIRM before HELLO
    (bytes.fromhex("80100000000005010203"), SW.WRONG_LENGTH),  # extended Lc 5, 3 follow
])
def test_malformed_apdu_gets_its_status_word(card: HandsetCard, apdu: bytes, sw: SW) -> None:
    assert card.process_apdu(apdu) == sw.wire


def test_garbage_hello_after_select_is_malformed_data(node_auth: NodeAuth,
                                                      card: HandsetCard) -> None:
    hs = node_auth.begin()
    card.process_apdu(hs.select_apdu())
    assert card.process_apdu(CommandApdu(0x80, 0x10, 0, 0, b"\x01garbage").encode()) == \
        SW.MALFORMED.wire


def test_card_still_authenticates_after_malformed_apdus(node_auth: NodeAuth,
                                                        card: HandsetCard) -> None:
    hs = node_auth.begin()
    for junk in (b"", b"\xff", bytes.fromhex("00a4040008f054"), bytes.fromhex("80ff0000"),
                 hs.select_apdu(), CommandApdu(0x80, 0x10, 0, 0, b"\x01\x00").encode()):
        card.process_apdu(junk)
    hs, answer = run_until_answer(node_auth, card)
    assert hs.check_answer(answer).ok
    assert card.process_apdu(hs.confirm_apdu()) == b"\x90\x00"


@pytest.mark.parametrize("raw, parsed", [
    ("00a40400", CommandApdu(0x00, 0xA4, 4, 0)),  # case 1
    ("00a4040000", CommandApdu(0x00, 0xA4, 4, 0, b"", 0)),  # case 2 short
    ("00a4040002aabb", CommandApdu(0x00, 0xA4, 4, 0, b"\xaa\xbb")),  # case 3 short
    ("00a4040002aabb00", CommandApdu(0x00, 0xA4, 4, 0, b"\xaa\xbb", 0)),  # case 4 short
    ("00a40400000100", CommandApdu(0x00, 0xA4, 4, 0, b"", 256)),  # case 2 extended
    ("00a40400000002aabb", CommandApdu(0x00, 0xA4, 4, 0, b"\xaa\xbb")),  # case 3 ext
    ("00a40400000002aabb0000", CommandApdu(0x00, 0xA4, 4, 0, b"\xaa\xbb", 0)),  # case 4 ext
])
def test_command_apdu_cases_parse(raw: str, parsed: CommandApdu) -> None:
    assert parse_command_apdu(bytes.fromhex(raw)) == parsed


def test_long_command_apdu_round_trips_as_extended() -> None:
    cmd = CommandApdu(0x80, 0x10, 0, 0, bytes(300), 0)
    raw = cmd.encode()
    assert raw[4:7] == b"\x00\x01\x2c"
    assert parse_command_apdu(raw) == cmd


def test_parse_error_carries_the_status_word() -> None:
    with pytest.raises(ApduError, match="WRONG_LENGTH"):
        parse_command_apdu(b"\x00")


def test_card_refuses_a_bad_ble_address(hub: HubAuthority) -> None:
    with pytest.raises(ValueError, match="AA:BB:CC:DD:EE:FF"):
        HandsetCard(handset_creds(hub, "h", T + 1), "C0:11:22")
