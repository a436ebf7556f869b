"""BLE push wire format: test vectors (also in docs/protocol.md, BLE part) and the receiver rules."""
from __future__ import annotations

import hashlib
import hmac
import os

import pytest

from tapcast.protocol.ble import (
    AckFrame, AckReceived, AckStatus, ContentItem, DataFrame, Delivered, Direction, Endpoint,
    FrameError, Info, OfferResponse, QueryFrame, Reply, Request, decode_message, direction_key,
    encode_message, parse_frame, seal, split,
)

KEY = bytes(range(32))  # session key of the vectors

VECTOR_NODE_TO_HANDSET_KEY = "abb849f72188501eb25d03e78d659a9fd3ea5120042e9675a29583f9136669c2"
VECTOR_HANDSET_TO_NODE_KEY = "02b3390c2e6eadc468020b215891c6c7c6b1c689dd0c051ac80852200c0265cd"
VECTOR_REQUEST = "82a174a772657175657374a76974656d5f6964a6636f66666565"
VECTOR_SEALED = ("c59d9efcdcd6ac97fcd624428b6957f42f06eea06c7f72b97d70b429833646a2"
                 "23180de7b32a0f5ecb0c")
VECTOR_FRAMES = [
    "010000000100000004c59d9efcdcd6ac97fcd624",
    "010000000100010004428b6957f42f06eea06c7f",
    "01000000010002000472b97d70b429833646a223",
    "010000000100030004180de7b32a0f5ecb0c",
]


def item(size: int = 3000) -> ContentItem:
    body = "Tapcast " * (size // 8)
    return ContentItem(id="i1", title="Hall map", kind="article", body=body,
                       sha256=hashlib.sha256(body.encode()).hexdigest())


def pair(key: bytes = KEY) -> tuple[Endpoint, Endpoint]:
    return Endpoint(key, "node"), Endpoint(key, "handset")


# ------------------------------------------------------------------- test vectors


def test_direction_keys_are_hkdf_sha256_of_the_session_key() -> None:
    # HKDF (RFC 5869) written out with hmac, so the vector does not just echo the code.
    prk = hmac.new(b"tapcast-ble-v1", KEY, hashlib.sha256).digest()
    okm = hmac.new(prk, b"tapcast ble node->handset" + b"\x01", hashlib.sha256).hexdigest()
    assert okm == VECTOR_NODE_TO_HANDSET_KEY
    assert direction_key(KEY, Direction.NODE_TO_HANDSET).hex() == VECTOR_NODE_TO_HANDSET_KEY
    assert direction_key(KEY, Direction.HANDSET_TO_NODE).hex() == VECTOR_HANDSET_TO_NODE_KEY


def test_message_encoding_is_a_msgpack_map_tagged_t() -> None:
    assert encode_message(Request(item_id="coffee")).hex() == VECTOR_REQUEST


def test_sealed_request_matches_vector() -> None:
    key = direction_key(KEY, Direction.HANDSET_TO_NODE)
    sealed = seal(key, Direction.HANDSET_TO_NODE, 1, Request(item_id="coffee"))
    assert sealed.hex() == VECTOR_SEALED


def test_sealed_request_splits_into_vector_frames_at_mtu_23() -> None:
    frames = split(1, bytes.fromhex(VECTOR_SEALED), 20)
    assert [f.hex() for f in frames] == VECTOR_FRAMES


def test_node_opens_the_vector_frames() -> None:
    node = Endpoint(KEY, "node")
    events = [node.handle(bytes.fromhex(f)) for f in VECTOR_FRAMES]
    assert events[-1] == Delivered(1, Request(item_id="coffee"), bytes.fromhex("0200000001ffff01"))


def test_control_frames_and_info_match_vectors() -> None:
    assert AckFrame(1, 0xFFFF, AckStatus.DONE).encode().hex() == "0200000001ffff01"
    assert QueryFrame(7).encode().hex() == "0300000007"
    assert Info().encode().hex() == "0100010000ffff"
    assert Info.decode(bytes.fromhex("0100010000ffff")) == Info(1, 65536, 65535)


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


def test_each_direction_uses_its_own_counter() -> None:
    node, handset = pair()
    assert node.seal(Request(item_id="a")).msg_id == 1
    assert node.seal(Request(item_id="b")).msg_id == 2
    assert handset.seal(Request(item_id="c")).msg_id == 1


def test_duplicate_frames_are_ignored() -> None:
    node, handset = pair()
    frames = node.seal(item(200)).frames(40)
    for f in frames[:-1]:
        handset.handle(f)
        handset.handle(f)
    event = handset.handle(frames[-1])
    assert isinstance(event, Delivered) and event.message == item(200)


def test_gap_is_reported_with_the_first_missing_frame_when_the_last_frame_arrives() -> None:
    node, handset = pair()
    frames = node.seal(item(200)).frames(40)
    for f in frames[:3] + frames[5:]:
        event = handset.handle(f)
    assert event == Reply(AckFrame(1, 3, AckStatus.PARTIAL).encode())


def test_query_answers_where_to_resume_and_resumed_message_opens() -> None:
    node, handset = pair()
    frames = node.seal(item(200)).frames(40)
    for f in frames[:4]:
        handset.handle(f)
    assert handset.handle(QueryFrame(1).encode()) == Reply(AckFrame(1, 4, AckStatus.PARTIAL).encode())
    events = [handset.handle(f) for f in frames[4:]]
    assert isinstance(events[-1], Delivered)
    assert handset.handle(QueryFrame(1).encode()) == Reply(AckFrame(1, 0xFFFF, AckStatus.DONE).encode())


def test_resent_complete_message_is_acked_done_but_not_delivered_twice() -> None:
    node, handset = pair()
    frames = node.seal(Request(item_id="x")).frames(100)
    assert isinstance(handset.handle(frames[0]), Delivered)
    assert handset.handle(frames[0]) == Reply(AckFrame(1, 0xFFFF, AckStatus.DONE).encode())


def test_ack_for_a_sent_message_is_passed_to_the_sender() -> None:
    node, handset = pair()
    out = node.seal(Request(item_id="x"))
    reply = handset.handle(out.frames(100)[0]).reply  # type: ignore[union-attr]
    assert node.handle(reply) == AckReceived(AckFrame(1, 0xFFFF, AckStatus.DONE))


# ----------------------------------------------------------------- rejections


def test_tampered_frame_is_rejected_with_a_rejected_ack_to_send_back() -> None:
    node, handset = pair()
    frame = bytearray(node.seal(Request(item_id="x")).frames(100)[0])
    frame[-1] ^= 0x01  # flip a tag bit
    with pytest.raises(FrameError, match="failed authentication") as err:
        handset.handle(bytes(frame))
    assert err.value.reply == AckFrame(1, 0, AckStatus.REJECTED).encode()


def test_message_sealed_with_another_key_is_rejected() -> None:
    node = Endpoint(os.urandom(32), "node")
    handset = Endpoint(KEY, "handset")
    with pytest.raises(FrameError, match="wrong key or tampered"):
        handset.handle(node.seal(Request(item_id="x")).frames(100)[0])


def test_rejected_message_does_not_block_the_genuine_one() -> None:
    node, handset = pair()
    forged = Endpoint(os.urandom(32), "node").seal(Request(item_id="evil")).frames(100)[0]
    with pytest.raises(FrameError):
        handset.handle(forged)
    event = handset.handle(node.seal(Request(item_id="x")).frames(100)[0])
    assert isinstance(event, Delivered) and event.message == Request(item_id="x")


def test_frame_from_the_other_direction_is_rejected() -> None:
    # A handset->node frame reflected back at the handset: right key set, wrong direction.
    _, handset = pair()
    other_handset = Endpoint(KEY, "handset")
    with pytest.raises(FrameError, match="failed authentication"):
        handset.handle(other_handset.seal(Request(item_id="x")).frames(100)[0])


@pytest.mark.parametrize("data, reason", [
    (b"", "empty frame"),
    (bytes.fromhex("0100000001"), "truncated DATA header"),
    (bytes.fromhex("010000000100000001"), "has no payload"),
    (bytes.fromhex("01000000000000000100"), "message id 0 is reserved"),
    (bytes.fromhex("01000000010002000200"), "out of range"),
    (bytes.fromhex("02000000010000"), "ACK frame is 7 bytes"),
    (bytes.fromhex("0200000001000009"), "unknown status 9"),
    (bytes.fromhex("0300"), "QUERY frame is 2 bytes"),
    (bytes.fromhex("7f00"), "unknown frame type 0x7f"),
])
def test_malformed_frames_raise_frame_error(data: bytes, reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        parse_frame(data)


def test_data_for_a_message_id_far_ahead_is_unknown() -> None:
    _, handset = pair()
    with pytest.raises(FrameError, match="unknown message id 5000"):
        handset.handle(DataFrame(5000, 0, 1, b"x" * 20).encode())


def test_ack_for_a_message_never_sent_is_unknown() -> None:
    node, _ = pair()
    with pytest.raises(FrameError, match="ACK for unknown message id 3"):
        node.handle(AckFrame(3, 0, AckStatus.DONE).encode())


def test_frame_disagreeing_on_total_is_rejected() -> None:
    _, handset = pair()
    handset.handle(DataFrame(1, 0, 3, b"a" * 20).encode())
    with pytest.raises(FrameError, match="says total 4, earlier frames said 3"):
        handset.handle(DataFrame(1, 1, 4, b"b" * 20).encode())


def test_frame_size_below_ble_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="below the BLE minimum 20"):
        split(1, b"x" * 50, 19)


def test_session_key_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="session_key must be 32 bytes, got 16"):
        Endpoint(b"k" * 16, "node")


def test_sender_refuses_a_message_over_64_kib_and_points_to_media_url() -> None:
    node, _ = pair()
    with pytest.raises(ValueError, match="limit is 65536 .*media_url"):
        node.seal(item(70_000)).frames(244)


def test_receiver_refuses_a_message_growing_over_64_kib() -> None:
    _, handset = pair()
    chunk = b"\xaa" * 235
    with pytest.raises(FrameError, match="message 1 exceeds 65536 bytes"):
        for index in range(300):
            handset.handle(DataFrame(1, index, 0xFFFF, chunk).encode())
