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
    HELLO_WINDOW,
    SW,
    AnswerPayload,
    ApduError,
    CommandApdu,
    HandsetCard,
    NodeAuth,
    answer_key,
    confirm_mac,
    parse_command_apdu,
    session_keys,
    transcript_hash_1,
    transcript_hash_2,
)

T = 1_700_000_000
EXPIRES = 1_800_000_000

# ---------------------------------------------------------------- test vector
# hub seed 00..1f; node key seed 01*32; handset key seed 02*32; node nonce 00..0f;
# handset nonce 10..1f; node X25519 seed 03*32; handset X25519 seed 04*32;
# hello time 1_700_000_000; both clocks read T+1; handset BLE C0:11:22:33:44:55
# random, consent 0x0003.
V_SELECT = "00a4040008f05441504353540100"
V_SELECT_RSP = "019000"
V_HELLO_APDU = (
    "80100000" "0000f3"  # CLA INS P1 P2, extended Lc = 243
    "01" "0078"  # version, cert length 120
    "0101066e6f64652d310668616c6c2d61"
    "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
    "000000006b49d200"
    "518fa61a1869f12b606f80f44fe3a842d301288017916bb62002bf93df628495"
    "e6129a8dcc5763bc3906207bfa4e5f89df4f979679f2b67eece109a3beed9c07"
    "000102030405060708090a0b0c0d0e0f"  # node nonce
    "5dfedd3b6bd47f6fa28ee15d969d5bb0ea53774d488bdaf9df1c6e0124b3ef22"  # node X25519
    "000000006553f100"  # time
    "d5f46b4af92b8c9f8c031a9c39c02d56ea37a525069d79b6143a7f4b7bb115dc"  # node signature
    "656f95caa626e70f27dbdde1f2a511ec7f3c1d423659d874b9f932638c75ac06"
    "0000")  # extended Le = 0 (maximum)
V_ANSWER_RSP = (
    "01" "101112131415161718191a1b1c1d1e1f"  # version, handset nonce
    "ac01b2209e86354fb853237b5de0f4fab13c7fcbf433a61c019369617fecf10b"  # handset X25519
    "497280de6b594563a953572a5a2de68ea0a4d900212b054c234807b2b4944768"  # sealed payload..
    "25277e7d040bdab31b7fea8184773980ecb2e711549abaf40d648111bd6213b4"
    "323b926193392b5a5bc87acd2d062118a76ef05b6536471978b06acaf05c5839"
    "f16deeabb09aad26bf371b969997f2dd806972f2147eb46ab66fe41c1afa9c8f"
    "6878321810c95aa43716b6f530a720f61f9fff720fbbce3822710a24fa775c61"
    "9e53874555ae4246f5309fd97871f01138d7937cf95c1c908b1c09ed397e4186"
    "fe65fed55369d38e7c26"  # ..and its Poly1305 tag
    "9000")
V_SESSION_KEY = "5d2966abd2f02f20d9df067458574c41674a9f743fd52e5caab123ed65d14579"
V_SHARED = "40e47a3f525bdcac491d418978d7db5af623ac7afe7623c6d78a5d4fce9d0f63"
V_TH1 = "eaa978d8b1f98889a536c30d52aa49feb412c02a2932cb451d4ba0b6272f432d"
V_ANSWER_KEY = "dd72d96070e8bb56bd5c103307ec368de613170c692809d5d9cb91e1b7703bb7"
V_TH2 = "7d203169b00cd2a70b56f305df06854cf22ff7c9b53bf16281b0117ce1241517"
V_CONFIRM_KEY = "19990316fd79df0ae7382e551ccb56eca16f80a316e01c0e3c41395ad59e55e0"
V_CONFIRM_APDU = ("8012000020"
                  "613175354b89cea035249d00c30a73557accd752b7873bd2fc312cf3782b7580")


@pytest.fixture
def hub() -> HubAuthority:
    return HubAuthority.from_seed(bytes(range(32)))


def vector_parties(hub: HubAuthority) -> tuple[NodeAuth, HandsetCard]:
    node = make_node_credentials(hub, "node-1", "hall-a", EXPIRES,
                                 Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32))
    handset = make_handset_credentials(hub, "h-42", EXPIRES,
                                       Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32))
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
    return NodeAuth(make_node_credentials(hub, "node-1", "hall-a", T + 3600),
                    clock=lambda: T)


@pytest.fixture
def card(hub: HubAuthority) -> HandsetCard:
    return HandsetCard(make_handset_credentials(hub, "h-42", T + 3600), "C0:11:22:33:44:55",
                       1, 0x0005, clock=lambda: T)


def run_until_answer(auth: NodeAuth, card: HandsetCard, **begin: object) -> tuple:
    hs = auth.begin(**begin)  # type: ignore[arg-type]
    assert card.process_apdu(hs.select_apdu()) == b"\x01\x90\x00"
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


def test_late_answer_is_stale(node_auth: NodeAuth, card: HandsetCard) -> None:
    hs, answer = run_until_answer(node_auth, card)
    assert hs.check_answer(answer, now=T + ANSWER_DEADLINE + 1).reason == "stale"


def test_expired_handset_certificate(hub: HubAuthority, node_auth: NodeAuth) -> None:
    card = HandsetCard(make_handset_credentials(hub, "h-1", T - 1), "C0:00:00:00:00:01",
                       clock=lambda: T)
    hs, answer = run_until_answer(node_auth, card)
    assert hs.check_answer(answer).reason == "expired_certificate"


def test_handset_certificate_from_another_hub(hub: HubAuthority, node_auth: NodeAuth) -> None:
    rogue = HubAuthority.generate()
    creds = make_handset_credentials(rogue, "h-1", T + 60)
    creds = type(creds)(creds.handset_id, creds.private_key, creds.cert, hub.public_key_bytes)
    card = HandsetCard(creds, "C0:00:00:00:00:01", clock=lambda: T)
    hs, answer = run_until_answer(node_auth, card)
    assert hs.check_answer(answer).reason == "unknown_issuer"


def test_revoked_handset(hub: HubAuthority, card: HandsetCard) -> None:
    auth = NodeAuth(make_node_credentials(hub, "node-1", "hall-a", T + 3600),
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
    return NodeAuth(make_node_credentials(hub, "node-x", "hall-a", T + 3600), **kwargs)


def test_node_from_another_hub_gets_only_a_status_word(card: HandsetCard) -> None:
    hs, answer = run_until_answer(rogue_node(HubAuthority.generate(), clock=lambda: T), card)
    assert answer == SW.NODE_REJECTED.wire
    assert card.last_rejection == "unknown_issuer"


def test_expired_node_certificate_is_refused(hub: HubAuthority, card: HandsetCard) -> None:
    auth = NodeAuth(make_node_credentials(hub, "node-1", "hall-a", T - 1), clock=lambda: T)
    _, answer = run_until_answer(auth, card)
    assert answer == SW.NODE_REJECTED.wire


@pytest.mark.parametrize("skew", [-HELLO_WINDOW - 1, HELLO_WINDOW + 1])
def test_stale_hello_is_refused(node_auth: NodeAuth, card: HandsetCard, skew: float) -> None:
    _, answer = run_until_answer(node_auth, card, now=T + skew)
    assert answer == SW.NODE_REJECTED.wire


def test_hello_inside_the_time_window_is_answered(node_auth: NodeAuth,
                                                   card: HandsetCard) -> None:
    hs, answer = run_until_answer(node_auth, card, now=T - HELLO_WINDOW)
    assert answer.endswith(b"\x90\x00")


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
        HandsetCard(make_handset_credentials(hub, "h", T + 1), "C0:11:22")
