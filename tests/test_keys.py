"""Certificates and key files (tapcast.keys); byte layout in docs/protocol.md."""
from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tapcast.config import KeysSection
from tapcast.keys import (
    KIND_HANDSET,
    KIND_NODE,
    Certificate,
    CertificateError,
    HubAuthority,
    KeyFileError,
    load_handset_credentials,
    load_node_credentials,
    make_handset_credentials,
    make_node_credentials,
    public_key_bytes,
    write_handset_credentials,
    write_node_credentials,
)

EXPIRES = 1_800_000_000
NOW = 1_700_000_000

# Test vector (also in docs/protocol.md): hub seed 00..1f, node key seed 01*32,
# handset key seed 02*32, expiry 1_800_000_000. Ed25519 signatures are deterministic.
HUB_PUB = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
NODE_CERT = (
    "0101066e6f64652d310668616c6c2d61"  # kind 01, v01, "node-1", "hall-a"
    "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"  # node key
    "000000006b49d200"  # expiry 1_800_000_000
    "518fa61a1869f12b606f80f44fe3a842d301288017916bb62002bf93df628495"
    "e6129a8dcc5763bc3906207bfa4e5f89df4f979679f2b67eece109a3beed9c07")
HANDSET_CERT = (
    "020104682d3432"  # kind 02, v01, "h-42"
    "8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394"
    "000000006b49d200"
    "deb3841d634324148e595350587dd73944c30720dda20d4c41739eaaa1a13923"
    "23981caf751cc09b07cfde19dd4b10ea475ceb17879306467146b0995f170c0c")


@pytest.fixture
def hub() -> HubAuthority:
    return HubAuthority.from_seed(bytes(range(32)))


def test_node_certificate_bytes_match_vector(hub: HubAuthority) -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)
    assert hub.public_key_bytes.hex() == HUB_PUB
    assert hub.issue_node_cert("node-1", "hall-a", public_key_bytes(key), EXPIRES).hex() \
        == NODE_CERT


def test_handset_certificate_bytes_match_vector(hub: HubAuthority) -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32)
    assert hub.issue_handset_cert("h-42", public_key_bytes(key), EXPIRES).hex() == HANDSET_CERT


def test_decode_gives_back_the_fields() -> None:
    cert = Certificate.decode(bytes.fromhex(NODE_CERT))
    assert (cert.kind, cert.subject_id, cert.zone, cert.expires) == \
        (KIND_NODE, "node-1", "hall-a", EXPIRES)
    handset = Certificate.decode(bytes.fromhex(HANDSET_CERT))
    assert (handset.kind, handset.subject_id, handset.zone) == (KIND_HANDSET, "h-42", None)


def test_valid_certificate_verifies(hub: HubAuthority) -> None:
    cert = Certificate.decode(bytes.fromhex(NODE_CERT))
    cert.verify(hub.public_key_bytes, NOW, KIND_NODE)
    assert cert.check(hub.public_key_bytes, NOW) == "ok"


def test_expired_certificate_is_refused(hub: HubAuthority) -> None:
    cert = Certificate.decode(bytes.fromhex(NODE_CERT))
    with pytest.raises(CertificateError, match="expired_certificate") as info:
        cert.verify(hub.public_key_bytes, EXPIRES)
    assert info.value.reason == "expired_certificate"


def test_certificate_from_another_hub_is_unknown_issuer() -> None:
    other = HubAuthority.generate()
    cert = Certificate.decode(bytes.fromhex(NODE_CERT))
    assert cert.check(other.public_key_bytes, NOW) == "unknown_issuer"


def test_tampered_expiry_breaks_the_signature(hub: HubAuthority) -> None:
    raw = bytearray.fromhex(NODE_CERT)
    raw[3 + 6 + 1 + 6 + 32] ^= 0x01  # first expiry byte
    assert Certificate.decode(bytes(raw)).check(hub.public_key_bytes, NOW) == "unknown_issuer"


def test_certificate_of_the_wrong_kind_is_malformed(hub: HubAuthority) -> None:
    cert = Certificate.decode(bytes.fromhex(HANDSET_CERT))
    assert cert.check(hub.public_key_bytes, NOW, KIND_NODE) == "malformed"


@pytest.mark.parametrize("raw, message", [
    (b"", "too short"),
    (bytes.fromhex(NODE_CERT)[:-1], "length"),
    (bytes.fromhex(NODE_CERT) + b"\x00", "length"),
    (b"\x07" + bytes.fromhex(NODE_CERT)[1:], "unknown kind"),
    (b"\x01\x02" + bytes.fromhex(NODE_CERT)[2:], "version"),
    (bytes.fromhex("010106") + b"node/1" + bytes.fromhex(NODE_CERT)[9:], "subject id"),
    (bytes.fromhex("010140") + b"x" * 10, "truncated"),
])
def test_malformed_certificate_bytes_raise_a_clear_error(raw: bytes, message: str) -> None:
    with pytest.raises(CertificateError, match=message) as info:
        Certificate.decode(raw)
    assert info.value.reason == "malformed"


@pytest.mark.parametrize("bad_id", ["", "a b", "node/1", "x" * 65, "ü", "node\n"])
def test_issuing_refuses_ids_outside_the_pattern(hub: HubAuthority, bad_id: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        hub.issue_handset_cert(bad_id, bytes(32), EXPIRES)


def test_hub_authority_survives_save_and_load(tmp_path: Path, hub: HubAuthority) -> None:
    hub.save(tmp_path)
    assert HubAuthority.load(tmp_path).public_key_bytes == hub.public_key_bytes
    assert stat.S_IMODE((tmp_path / "hub.key").stat().st_mode) == 0o600


def test_node_credentials_round_trip_through_files(tmp_path: Path, hub: HubAuthority) -> None:
    keys = KeysSection(node_key="k/node.key", node_cert="k/node.cert", hub_public_key="k/hub.pub")
    (tmp_path / "k").mkdir()
    written = write_node_credentials(tmp_path, hub, "node-7", "hall-b", EXPIRES, keys)
    loaded = load_node_credentials(keys, tmp_path)
    assert (loaded.node_id, loaded.zone, loaded.cert, loaded.hub_public_key) == \
        ("node-7", "hall-b", written.cert, hub.public_key_bytes)
    assert public_key_bytes(loaded.private_key) == public_key_bytes(written.private_key)
    assert stat.S_IMODE((tmp_path / "k/node.key").stat().st_mode) == 0o600


def test_missing_key_file_error_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="node.key"):
        load_node_credentials(KeysSection(), tmp_path)


def test_certificate_for_another_key_is_refused(tmp_path: Path, hub: HubAuthority) -> None:
    write_node_credentials(tmp_path, hub, "node-7", "hall-b", EXPIRES)
    other = make_node_credentials(hub, "node-7", "hall-b", EXPIRES)
    (tmp_path / "node.cert").write_bytes(other.cert)
    with pytest.raises(KeyFileError, match="another key"):
        load_node_credentials(KeysSection(), tmp_path)


def test_garbage_certificate_file_is_refused(tmp_path: Path, hub: HubAuthority) -> None:
    write_node_credentials(tmp_path, hub, "node-7", "hall-b", EXPIRES)
    (tmp_path / "node.cert").write_bytes(b"garbage")
    with pytest.raises(KeyFileError, match="node.cert.*malformed"):
        load_node_credentials(KeysSection(), tmp_path)


def test_handset_credentials_round_trip_through_files(tmp_path: Path,
                                                      hub: HubAuthority) -> None:
    written = write_handset_credentials(tmp_path, hub, "h-1", EXPIRES)
    loaded = load_handset_credentials(tmp_path)
    assert (loaded.handset_id, loaded.cert) == ("h-1", written.cert)


def test_handset_file_holding_a_node_certificate_is_refused(tmp_path: Path,
                                                            hub: HubAuthority) -> None:
    write_handset_credentials(tmp_path, hub, "h-1", EXPIRES)
    creds = make_handset_credentials(hub, "h-1", EXPIRES)
    node = hub.issue_node_cert("n", "z", public_key_bytes(creds.private_key), EXPIRES)
    (tmp_path / "handset.cert").write_bytes(node)
    with pytest.raises(KeyFileError, match="kind"):
        load_handset_credentials(tmp_path)
