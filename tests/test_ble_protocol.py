"""BLE push wire format: test vectors (also in docs/protocol.md, BLE part), the receiver
rules, and what a stranger's or replayed frame can do (nothing)."""
from __future__ import annotations

import hashlib
import hmac
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings, strategies as st

from tapcast.protocol.ble import (
    HELLO, HELLO_ACK, MAC_SIZE, REPLAY_WINDOW, AckFrame, AckReceived, AckStatus, ContentItem, DataFrame,
    Delivered, Direction, Endpoint, FrameError, Info, OfferResponse, QueryFrame, Reply, Request,
    Unauthentic, chunk, decode_message, direction_key, encode_frame, encode_message, frame_key,
    frame_mac, open_frame, seal, session_token,
)

KEY = bytes(range(32))  # session key of the vectors

VECTOR_NODE_TO_HANDSET_KEY = "abb849f72188501eb25d03e78d659a9fd3ea5120042e9675a29583f9136669c2"
VECTOR_HANDSET_TO_NODE_KEY = "02b3390c2e6eadc468020b215891c6c7c6b1c689dd0c051ac80852200c0265cd"
VECTOR_FRAME_KEY_N2H = "e6ebba3f62afc40f734c0a8e4e96392fa13b457acc7e3819991029a0aa06ccd4"
VECTOR_FRAME_KEY_H2N = "460d2ef07b1cae307dd8c0b74f3577ce39498dfb352b826730c2ad639e107c6b"
VECTOR_TOKEN = "afe76bbf-b4e8-9358-0337-cc138e22e08f"
VECTOR_REQUEST = "82a174a772657175657374a76974656d5f6964a6636f66666565"
VECTOR_SEALED = ("c59d9efcdcd6ac97fcd624428b6957f42f06eea06c7f72b97d70b429833646a2"
                 "23180de7b32a0f5ecb0c")
VECTOR_FRAMES = [  # handset -> node, 40-byte frames (25 payload bytes each)
    "0100000001000100000002c59d9efcdcd6ac97fcd624428b6957f42f06eea06c7f72b97df7515ea7",
    "010000000200010001000270b429833646a223180de7b32a0f5ecb0c51f80cd2",
]
VECTOR_HELLO = "03000000010000c41b56a0"  # node -> handset, counter 1
VECTOR_DONE = "02000000020001ffff011f0ed52d"  # node -> handset, counter 2
VECTOR_QUERY_7 = "030000000300076b877ff3"  # node -> handset, counter 3


def item(size: int = 3000) -> ContentItem:
    body = "Tapcast " * (size // 8)
    return ContentItem(id="i1", title="Hall map", kind="article", body=body,
                       sha256=hashlib.sha256(body.encode()).hexdigest())


def pair(key: bytes = KEY) -> tuple[Endpoint, Endpoint]:
    return Endpoint(key, "node"), Endpoint(key, "handset")


def signed(direction: Direction, raw: bytes, key: bytes = KEY) -> bytes:
    """``raw`` (type | counter | fields) with a valid MAC: malformed but authentic."""
    return raw + frame_mac(frame_key(key, direction), raw)


# ------------------------------------------------------------------- test vectors


def hkdf_sha256(ikm: bytes, info: bytes, length: int) -> bytes:
    # RFC 5869 written out with hmac, so the vectors do not just echo the code.
    prk = hmac.new(b"tapcast-ble-v1", ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()[:length]


def test_direction_keys_are_hkdf_sha256_of_the_session_key() -> None:
    assert hkdf_sha256(KEY, b"tapcast ble node->handset", 32).hex() == VECTOR_NODE_TO_HANDSET_KEY
    assert direction_key(KEY, Direction.NODE_TO_HANDSET).hex() == VECTOR_NODE_TO_HANDSET_KEY
    assert direction_key(KEY, Direction.HANDSET_TO_NODE).hex() == VECTOR_HANDSET_TO_NODE_KEY


def test_frame_keys_are_hkdf_sha256_of_the_session_key() -> None:
    assert hkdf_sha256(KEY, b"tapcast ble frame node->handset", 32).hex() == VECTOR_FRAME_KEY_N2H
    assert hkdf_sha256(KEY, b"tapcast ble frame handset->node", 32).hex() == VECTOR_FRAME_KEY_H2N
    assert frame_key(KEY, Direction.NODE_TO_HANDSET).hex() == VECTOR_FRAME_KEY_N2H
    assert frame_key(KEY, Direction.HANDSET_TO_NODE).hex() == VECTOR_FRAME_KEY_H2N


def test_token_is_16_hkdf_bytes_read_as_a_uuid() -> None:
    raw = hkdf_sha256(KEY, b"tapcast ble token", 16).hex()
    assert VECTOR_TOKEN.replace("-", "") == raw
    assert session_token(KEY) == VECTOR_TOKEN


def test_tokens_differ_per_session() -> None:
    assert session_token(os.urandom(32)) != session_token(os.urandom(32))


def test_message_encoding_is_a_msgpack_map_tagged_t() -> None:
    assert encode_message(Request(item_id="coffee")).hex() == VECTOR_REQUEST


def test_sealed_request_matches_vector() -> None:
    key = direction_key(KEY, Direction.HANDSET_TO_NODE)
    sealed = seal(key, Direction.HANDSET_TO_NODE, 1, Request(item_id="coffee"))
    assert sealed.hex() == VECTOR_SEALED


def test_sealed_request_frames_match_vectors() -> None:
    handset = Endpoint(KEY, "handset")
    assert [f.hex() for f in handset.seal(Request(item_id="coffee")).frames(40)] == VECTOR_FRAMES


def test_frame_mac_is_truncated_hmac_sha256_over_everything_before_it() -> None:
    frame = bytes.fromhex(VECTOR_FRAMES[1])
    key = bytes.fromhex(VECTOR_FRAME_KEY_H2N)
    assert frame[-MAC_SIZE:] == hmac.new(key, frame[:-MAC_SIZE], hashlib.sha256).digest()[:4]


def test_node_opens_the_vector_frames_and_answers_with_the_vector_frames() -> None:
    node = Endpoint(KEY, "node")
    assert node.wrap(HELLO).hex() == VECTOR_HELLO
    events = [node.handle(bytes.fromhex(f)) for f in VECTOR_FRAMES]
    assert events[-1] == Delivered(1, Request(item_id="coffee"), AckFrame(1, 0xFFFF, AckStatus.DONE))
    assert node.wrap(events[-1].reply).hex() == VECTOR_DONE  # type: ignore[union-attr]
    assert node.wrap(QueryFrame(7)).hex() == VECTOR_QUERY_7


def test_control_frame_vectors_parse_back() -> None:
    key = bytes.fromhex(VECTOR_FRAME_KEY_N2H)
    assert open_frame(key, bytes.fromhex(VECTOR_HELLO)) == (1, QueryFrame(0))
    assert open_frame(key, bytes.fromhex(VECTOR_DONE)) == (2, AckFrame(1, 0xFFFF, AckStatus.DONE))
    assert encode_frame(key, 3, QueryFrame(7)).hex() == VECTOR_QUERY_7


def test_info_matches_vector() -> None:
    assert Info().encode().hex() == "0200010000ffff"
    assert Info.decode(bytes.fromhex("0200010000ffff")) == Info(2, 65536, 65535)


def test_offer_response_carries_signed_bytes_as_msgpack_bin() -> None:
    msg = OfferResponse(offer_id="o1", accept=True, signed=b"\x01\x02", signature=b"\x03")
    data = encode_message(msg)
    assert data.hex() == ("85a174ae6f666665725f726573706f6e7365a86f666665725f6964a26f31a6616363"
                          "657074c3a67369676e6564c4020102a97369676e6174757265c40103")
    assert decode_message(data) == msg


# ------------------------------------------------------------------ round trips


def test_message_larger_than_many_frames_arrives_intact() -> None:
    node, handset = pair()
    frames = node.seal(item(3000)).frames(20)
    assert len(frames) > 100
    events = [handset.handle(f) for f in frames]
    assert all(e == Reply(None) for e in events[:-1])
    assert isinstance(events[-1], Delivered) and events[-1].message == item(3000)


def test_frames_fit_the_frame_size_they_were_cut_for() -> None:
    node, _ = pair()
    for size in (20, 23, 244):
        assert max(len(f) for f in node.seal(item(2000)).frames(size)) == size


def test_each_direction_uses_its_own_counter() -> None:
    node, handset = pair()
    assert node.seal(Request(item_id="a")).msg_id == 1
    assert node.seal(Request(item_id="b")).msg_id == 2
    assert handset.seal(Request(item_id="c")).msg_id == 1


def test_resent_frames_with_fresh_counters_are_ignored_as_duplicates() -> None:
    node, handset = pair()
    chunks = node.seal(item(200)).chunks(40)
    for c in chunks[:-1]:
        handset.handle(node.wrap(c))
        handset.handle(node.wrap(c))
    event = handset.handle(node.wrap(chunks[-1]))
    assert isinstance(event, Delivered) and event.message == item(200)


def test_gap_is_reported_with_the_first_missing_frame_when_the_last_frame_arrives() -> None:
    node, handset = pair()
    frames = node.seal(item(200)).frames(40)
    for f in frames[:3] + frames[5:]:
        event = handset.handle(f)
    assert event == Reply(AckFrame(1, 3, AckStatus.PARTIAL))


def test_query_answers_where_to_resume_and_resumed_message_opens() -> None:
    node, handset = pair()
    frames = node.seal(item(200)).frames(40)
    for f in frames[:4]:
        handset.handle(f)
    assert handset.handle(node.wrap(QueryFrame(1))) == Reply(AckFrame(1, 4, AckStatus.PARTIAL))
    events = [handset.handle(f) for f in frames[4:]]
    assert isinstance(events[-1], Delivered)
    assert handset.handle(node.wrap(QueryFrame(1))) == Reply(AckFrame(1, 0xFFFF, AckStatus.DONE))


def test_hello_proves_the_key_and_its_answer_proves_the_handsets() -> None:
    node, handset = pair()
    assert not handset.proven
    answer = handset.handle(node.wrap(HELLO))
    assert answer == Reply(HELLO_ACK)
    assert handset.proven
    assert node.handle(handset.wrap(HELLO_ACK)) == AckReceived(HELLO_ACK)


def test_a_hello_answer_is_only_for_the_node() -> None:
    node, handset = pair()
    with pytest.raises(FrameError, match="ACK for unknown message id 0"):
        handset.handle(node.wrap(HELLO_ACK))


def test_resent_complete_message_is_acked_done_but_not_delivered_twice() -> None:
    node, handset = pair()
    out = node.seal(Request(item_id="x"))
    assert isinstance(handset.handle(out.frames(100)[0]), Delivered)
    assert handset.handle(out.frames(100)[0]) == Reply(AckFrame(1, 0xFFFF, AckStatus.DONE))


def test_ack_for_a_sent_message_is_passed_to_the_sender() -> None:
    node, handset = pair()
    out = node.seal(Request(item_id="x"))
    reply = handset.handle(out.frames(100)[0]).reply  # type: ignore[union-attr]
    assert node.handle(handset.wrap(reply)) == AckReceived(AckFrame(1, 0xFFFF, AckStatus.DONE))


def test_frames_reordered_within_the_window_are_accepted() -> None:
    node, handset = pair()
    frames = node.seal(item(400)).frames(40)
    last = frames[-1]
    events = [handset.handle(f) for f in [frames[1], frames[0], *frames[2:-1]]]
    assert all(isinstance(e, Reply) for e in events)
    assert isinstance(handset.handle(last), Delivered)


# ----------------------------------------------------------------- forgeries


def test_tampered_frame_is_dropped_unread() -> None:
    node, handset = pair()
    frame = bytearray(node.seal(Request(item_id="x")).frames(100)[0])
    frame[-1] ^= 0x01  # flip a MAC bit
    with pytest.raises(Unauthentic, match="failed authentication"):
        handset.handle(bytes(frame))
    assert not handset.proven


def test_frame_from_another_session_is_dropped_and_does_not_block_the_genuine_message() -> None:
    node, handset = pair()
    stranger = Endpoint(os.urandom(32), "node")
    for f in stranger.seal(item(300)).frames(40):
        with pytest.raises(Unauthentic):
            handset.handle(f)
    frames = node.seal(item(300)).frames(40)
    events = [handset.handle(f) for f in frames]
    assert isinstance(events[-1], Delivered) and events[-1].message == item(300)


def test_frame_from_the_other_direction_is_dropped() -> None:
    # A handset->node frame reflected back at the handset: right session, wrong direction.
    _, handset = pair()
    other_handset = Endpoint(KEY, "handset")
    with pytest.raises(Unauthentic, match="failed authentication"):
        handset.handle(other_handset.seal(Request(item_id="x")).frames(100)[0])


def test_replayed_frame_is_refused() -> None:
    node, handset = pair()
    frames = node.seal(item(200)).frames(40)
    handset.handle(frames[0])
    with pytest.raises(Unauthentic, match="replayed"):
        handset.handle(frames[0])


def test_replayed_query_after_delivery_is_refused() -> None:
    node, handset = pair()
    query = node.wrap(QueryFrame(1))
    handset.handle(query)
    handset.handle(node.seal(Request(item_id="x")).frames(100)[0])
    with pytest.raises(Unauthentic, match="replayed"):
        handset.handle(query)


def test_frame_older_than_the_replay_window_is_refused() -> None:
    node, handset = pair()
    old = node.wrap(HELLO)
    for _ in range(REPLAY_WINDOW):
        handset.handle(node.wrap(HELLO))
    with pytest.raises(Unauthentic, match="too old"):
        handset.handle(old)


def test_forged_done_ack_completes_nothing() -> None:
    node, _ = pair()
    node.seal(item(300))  # message 1 in flight
    forged = encode_frame(os.urandom(32), 1, AckFrame(1, 0xFFFF, AckStatus.DONE))
    with pytest.raises(Unauthentic):
        node.handle(forged)


def test_replayed_done_ack_is_refused() -> None:
    node, handset = pair()
    out = node.seal(Request(item_id="x"))
    done = handset.wrap(handset.handle(out.frames(100)[0]).reply)  # type: ignore[union-attr]
    node.handle(done)
    with pytest.raises(Unauthentic, match="replayed"):
        node.handle(done)


def test_unauthenticated_frames_leave_partial_state_alone() -> None:
    node, handset = pair()
    frames = node.seal(item(400)).frames(40)
    for f in frames[:3]:
        handset.handle(f)
    for forged in (b"\x01" * 10, DataFrame(1, 0, 2, b"x").fields(), bytes(500),
                   encode_frame(os.urandom(32), 99, DataFrame(2, 0, 1, b"y" * 20))):
        with pytest.raises(Unauthentic):
            handset.handle(forged)
    events = [handset.handle(f) for f in frames[3:]]
    assert isinstance(events[-1], Delivered) and events[-1].message == item(400)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_as_unauthentic_and_change_nothing(data: bytes) -> None:
    node, handset = pair()
    with pytest.raises(Unauthentic):
        handset.handle(data)
    assert not handset.proven and handset.last_accepted == 0
    assert isinstance(handset.handle(node.seal(Request(item_id="x")).frames(100)[0]), Delivered)


# -------------------------------------------------- authentic but malformed


@pytest.mark.parametrize("raw, reason", [
    (bytes.fromhex("0000000000"), "frame counter 0 is reserved"),
    (bytes.fromhex("0100000001000100"), "truncated DATA header"),
    (bytes.fromhex("0100000001000100000001"), "has no payload"),
    (bytes.fromhex("010000000100000000000100"), "message id 0 is reserved"),
    (bytes.fromhex("010000000100010002000200"), "out of range"),
    (bytes.fromhex("020000000100010000"), "ACK frame has 4 field bytes"),
    (bytes.fromhex("02000000010001000009"), "unknown status 9"),
    (bytes.fromhex("030000000100"), "QUERY frame has 1 field bytes"),
    (bytes.fromhex("7f00000001"), "unknown frame type 0x7f"),
])
def test_malformed_authentic_frames_raise_frame_error(raw: bytes, reason: str) -> None:
    with pytest.raises(FrameError, match=reason) as err:
        open_frame(frame_key(KEY, Direction.NODE_TO_HANDSET), signed(Direction.NODE_TO_HANDSET, raw))
    assert not isinstance(err.value, Unauthentic)


def test_frame_too_short_to_carry_a_mac_is_unauthentic() -> None:
    with pytest.raises(Unauthentic, match="shorter than the 9-byte minimum"):
        open_frame(frame_key(KEY, Direction.NODE_TO_HANDSET), b"\x01\x00\x00")


def test_data_for_a_message_id_far_ahead_is_unknown() -> None:
    node, handset = pair()
    with pytest.raises(FrameError, match="unknown message id 5000"):
        handset.handle(node.wrap(DataFrame(5000, 0, 1, b"x" * 20)))


def test_ack_for_a_message_never_sent_is_unknown() -> None:
    node, handset = pair()
    with pytest.raises(FrameError, match="ACK for unknown message id 3"):
        node.handle(handset.wrap(AckFrame(3, 0, AckStatus.DONE)))


def test_frame_disagreeing_on_total_is_rejected() -> None:
    node, handset = pair()
    handset.handle(node.wrap(DataFrame(1, 0, 3, b"a" * 20)))
    with pytest.raises(FrameError, match="says total 4, earlier frames said 3"):
        handset.handle(node.wrap(DataFrame(1, 1, 4, b"b" * 20)))


def test_message_that_does_not_open_is_rejected_with_a_rejected_ack() -> None:
    node, handset = pair()
    sealed = bytearray(node.seal(Request(item_id="x")).sealed)
    sealed[-1] ^= 1  # authentic frames around a broken AEAD tag: a buggy peer
    with pytest.raises(FrameError, match="failed authentication") as err:
        handset.handle(node.wrap(DataFrame(1, 0, 1, bytes(sealed))))
    assert err.value.reply == AckFrame(1, 0, AckStatus.REJECTED)


def test_frame_size_below_ble_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="below the BLE minimum 20"):
        chunk(1, b"x" * 50, 19)


def test_session_key_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="session_key must be 32 bytes, got 16"):
        Endpoint(b"k" * 16, "node")


def test_sender_refuses_a_message_over_64_kib_and_points_to_media_url() -> None:
    node, _ = pair()
    with pytest.raises(ValueError, match="limit is 65536 .*media_url"):
        node.seal(item(70_000)).frames(244)


def test_receiver_refuses_a_message_growing_over_64_kib() -> None:
    node, handset = pair()
    piece = b"\xaa" * 229
    with pytest.raises(FrameError, match="message 1 exceeds 65536 bytes"):
        for index in range(300):
            handset.handle(node.wrap(DataFrame(1, index, 0xFFFF, piece)))


# ------------------------------------------- consent, refusals, open records (issue 9)

#: Ed25519 seed 02 x 32 (the NFC vectors' handset key), handset "h-42", item "coffee"
#: version 2 received at "node-1", opened at 1 700 000 001, counter 1.
VECTOR_OPEN_RECORD = (
    "54434f5201" "04682d3432" "06636f66666565" "00000002" "066e6f64652d31"
    "000000006553f101" "0000000000000001"
    "2e27d9fa97a71ac96c4e8cd6fb6c596d6c49cac32b55747eca8ea56f4df4e2ec"
    "8903c489c9315c8011c50f0f42142cf4659999b2830612d8962580e511856607")
VECTOR_REFUSED = ("84a174a772656675736564a76974656d5f6964a6636f66666565a776657273696f6e02"
                  "a6726561736f6ea46b696e64")
VECTOR_OPENED_ACK = ("83a174aa6f70656e65645f61636ba8636f756e74657273920102a7726566757365648103"
                     "ad6261645f7369676e6174757265")


def handset_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32)


def test_the_open_record_matches_its_vector_and_verifies_under_the_handset_key() -> None:
    from tapcast.keys import public_key_bytes
    from tapcast.protocol.openrecord import CONTEXT, OpenRecord, verify

    record = OpenRecord("h-42", "coffee", 2, "node-1", 1_700_000_001, 1)
    data = record.sign(handset_key())
    assert data.hex() == VECTOR_OPEN_RECORD
    # the signature is Ed25519 over the context and every byte before it
    handset_key().public_key().verify(data[-64:], CONTEXT + data[:-64])
    assert verify(data, "h-42", public_key_bytes(handset_key())) == record


@pytest.mark.parametrize(("change", "reason"), [
    (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "bad_signature"),  # altered signature
    (lambda d: d[:20] + bytes([d[20] ^ 1]) + d[21:], "bad_signature"),  # altered field
    (lambda d: d[:-65], "malformed"), (lambda d: b"TCOX" + d[4:], "malformed"),
    (lambda d: d + b"\x00", "malformed")])
def test_an_altered_open_record_is_refused_with_the_reason(change: object, reason: str) -> None:
    from tapcast.keys import public_key_bytes
    from tapcast.protocol.openrecord import OpenRecordError, verify

    data = change(bytes.fromhex(VECTOR_OPEN_RECORD))  # type: ignore[operator]
    with pytest.raises(OpenRecordError) as caught:
        verify(data, "h-42", public_key_bytes(handset_key()))
    assert caught.value.reason == reason


def test_an_open_record_of_another_handset_is_refused() -> None:
    from tapcast.keys import public_key_bytes
    from tapcast.protocol.openrecord import OpenRecordError, verify

    with pytest.raises(OpenRecordError) as caught:
        verify(bytes.fromhex(VECTOR_OPEN_RECORD), "h-43", public_key_bytes(handset_key()))
    assert caught.value.reason == "other_handset"


def test_refused_opened_and_their_ack_match_their_vectors() -> None:
    from tapcast.protocol.ble import Opened, OpenedAck, Refused

    assert encode_message(Refused("coffee", 2, "kind")).hex() == VECTOR_REFUSED
    ack = OpenedAck([1, 2], {3: "bad_signature"})
    assert encode_message(ack).hex() == VECTOR_OPENED_ACK
    assert decode_message(bytes.fromhex(VECTOR_OPENED_ACK)) == ack
    record = bytes.fromhex(VECTOR_OPEN_RECORD)
    opened = encode_message(Opened([record]))
    assert opened.hex() == "82a174a66f70656e6564a77265636f72647391c46c" + VECTOR_OPEN_RECORD
    assert decode_message(opened) == Opened([record])


def test_catalogue_entries_and_items_without_a_merchant_still_decode() -> None:
    """What a node of issue 8 sends (no merchant field) reads as merchant ""."""
    old = ("82a174a9636174616c6f677565a56974656d739184a26964a163a57469746c65a143a46b696e64"
           "a6636f75706f6eab70726963655f63656e747300")
    [entry] = decode_message(bytes.fromhex(old)).items  # type: ignore[union-attr]
    assert (entry.id, entry.kind, entry.merchant) == ("c", "coupon", "")


def test_consent_flags_vector() -> None:
    from tapcast.protocol.ble import consent_allows_kind, consent_flags

    assert consent_flags({"coupon": False, "goods": False}) == 0x800D
    assert consent_flags({}) == 0x801F
    assert [k for k in ("article", "coupon", "media", "ticket", "goods")
            if consent_allows_kind(0x800D, k)] == ["article", "media", "ticket"]
    assert consent_allows_kind(0x0000, "coupon")  # kinds not declared: the node pushes
