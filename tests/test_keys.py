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
    HubKeyring,
    KeyFileError,
    key_id,
    load_handset_credentials,
    load_node_credentials,
    make_handset_credentials,
    make_node_credentials,
    public_key_bytes,
    write_handset_credentials,
    write_node_credentials,
)

EXPIRES = 1_800_000_000
NOT_BEFORE = 1_600_000_000
NOW = 1_700_000_000

# Test vector (also in docs/protocol.md): hub seed 00..1f, node key seed 01*32,
# handset key seed 02*32, valid 1_600_000_000..1_800_000_000. Ed25519 signatures are
# deterministic.
HUB_PUB = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
HUB_KEY_ID = "56475aa75463474c"  # SHA-256(HUB_PUB)[:8]
NODE_CERT = (
    "0102" "56475aa75463474c"  # kind 01, version 02, hub key id
    "066e6f64652d31" "0668616c6c2d61"  # "node-1", "hall-a"
    "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"  # node key
    "000000005f5e1000"  # not-before 1_600_000_000
    "000000006b49d200"  # expiry 1_800_000_000
    "b170e18872e19eedf5bdaa369878f837ddca4c8a9ac1c8646b9bcb92ed34b258"
    "1864ff1469450b3829f8314e8db1ca59a81c3a80c4bcce90ee28e9481ecc5107")
HANDSET_CERT = (
    "0202" "56475aa75463474c" "04682d3432"  # kind 02, version 02, key id, "h-42"
    "8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394"
    "000000005f5e1000" "000000006b49d200"
    "273a9f803bbe1fab06ec97ea86c54ec3b661d7684bf2d657c47cce97daa8f237"
    "6f2831364f9ca3abb74cee5525cbcb3e4ba587b33fd28020136cbb02ad42f600")


@pytest.fixture
def hub() -> HubAuthority:
    return HubAuthority.from_seed(bytes(range(32)))


def test_node_certificate_bytes_match_vector(hub: HubAuthority) -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)
    assert hub.public_key_bytes.hex() == HUB_PUB
    assert hub.key_id.hex() == key_id(bytes.fromhex(HUB_PUB)).hex() == HUB_KEY_ID
    assert hub.issue_node_cert("node-1", "hall-a", public_key_bytes(key), EXPIRES,
                               NOT_BEFORE).hex() == NODE_CERT


def test_handset_certificate_bytes_match_vector(hub: HubAuthority) -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32)
    assert hub.issue_handset_cert("h-42", public_key_bytes(key), EXPIRES,
                                  NOT_BEFORE).hex() == HANDSET_CERT


def test_decode_gives_back_the_fields() -> None:
    cert = Certificate.decode(bytes.fromhex(NODE_CERT))
    assert (cert.kind, cert.key_id.hex(), cert.subject_id, cert.zone, cert.not_before,
            cert.expires) == (KIND_NODE, HUB_KEY_ID, "node-1", "hall-a", NOT_BEFORE, EXPIRES)
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


def test_certificate_not_yet_valid_is_refused(hub: HubAuthority) -> None:
    cert = Certificate.decode(bytes.fromhex(NODE_CERT))
    with pytest.raises(CertificateError, match="valid from 1600000000") as info:
        cert.verify(hub.public_key_bytes, NOT_BEFORE - 1)
    assert info.value.reason == "not_yet_valid"


def test_validity_bounds_are_not_before_inclusive_and_expiry_exclusive(
        hub: HubAuthority) -> None:
    cert = Certificate.decode(bytes.fromhex(NODE_CERT))
    assert [cert.check(hub.public_key_bytes, t) for t in
            (NOT_BEFORE, EXPIRES - 1, EXPIRES)] == ["ok", "ok", "expired_certificate"]


def test_clock_tolerance_widens_validity_either_way(hub: HubAuthority) -> None:
    cert = Certificate.decode(bytes.fromhex(NODE_CERT))
    assert cert.check(hub.public_key_bytes, NOT_BEFORE - 10, early=10) == "ok"
    assert cert.check(hub.public_key_bytes, EXPIRES + 9, late=10) == "ok"


def test_not_before_can_be_left_unchecked_by_a_holder_without_trusted_time(
        hub: HubAuthority) -> None:
    cert = Certificate.decode(bytes.fromhex(NODE_CERT))
    assert cert.check(hub.public_key_bytes, 0, check_not_before=False) == "ok"


def test_certificate_from_another_hub_key_is_unknown_key_id() -> None:
    other = HubAuthority.generate()
    cert = Certificate.decode(bytes.fromhex(NODE_CERT))
    with pytest.raises(CertificateError, match=f"hub key id {HUB_KEY_ID}") as info:
        cert.verify(other.public_key_bytes, NOW)
    assert info.value.reason == "unknown_key_id"


def test_forgery_naming_a_trusted_key_id_is_unknown_issuer(hub: HubAuthority) -> None:
    forger = HubAuthority.generate()
    forged = bytearray(forger.issue_node_cert("node-1", "hall-a", bytes(32), EXPIRES,
                                              NOT_BEFORE))
    forged[2:10] = hub.key_id  # claims our hub's key; the signature is the forger's
    assert Certificate.decode(bytes(forged)).check(hub.public_key_bytes, NOW) == \
        "unknown_issuer"


def test_tampered_expiry_breaks_the_signature(hub: HubAuthority) -> None:
    raw = bytearray.fromhex(NODE_CERT)
    raw[2 + 8 + 1 + 6 + 1 + 6 + 32 + 8] ^= 0x01  # first expiry byte
    assert Certificate.decode(bytes(raw)).check(hub.public_key_bytes, NOW) == "unknown_issuer"


def test_keyring_picks_the_key_a_certificate_names(hub: HubAuthority) -> None:
    new = HubAuthority.from_seed(bytes([9]) * 32)
    ring = HubKeyring([new.public_key_bytes, hub.public_key_bytes])
    old_cert = Certificate.decode(bytes.fromhex(NODE_CERT))
    new_cert = Certificate.decode(new.issue_node_cert("node-2", "z", bytes(32), EXPIRES,
                                                      NOT_BEFORE))
    assert [old_cert.check(ring, NOW), new_cert.check(ring, NOW)] == ["ok", "ok"]
    assert ring.current == new.public_key_bytes
    assert new_cert.check(hub.public_key_bytes, NOW) == "unknown_key_id"


def test_version_1_certificate_is_refused_with_a_hint_to_reissue() -> None:
    old = bytes.fromhex("0101066e6f64652d310668616c6c2d61") + bytes(32 + 8 + 64)
    with pytest.raises(CertificateError, match="unsupported version 1.*re-issue"):
        Certificate.decode(old)


def test_certificate_of_the_wrong_kind_is_malformed(hub: HubAuthority) -> None:
    cert = Certificate.decode(bytes.fromhex(HANDSET_CERT))
    assert cert.check(hub.public_key_bytes, NOW, KIND_NODE) == "malformed"


@pytest.mark.parametrize("raw, message", [
    (b"", "too short"),
    (bytes.fromhex(NODE_CERT)[:-1], "length"),
    (bytes.fromhex(NODE_CERT) + b"\x00", "length"),
    (b"\x07" + bytes.fromhex(NODE_CERT)[1:], "unknown kind"),
    (b"\x01\x03" + bytes.fromhex(NODE_CERT)[2:], "version"),
    (bytes.fromhex(NODE_CERT)[:5], "too short"),
    (bytes.fromhex(NODE_CERT)[:11] + b"node/1" + bytes.fromhex(NODE_CERT)[17:], "subject id"),
    (bytes.fromhex(NODE_CERT)[:10] + b"\x40" + b"x" * 10, "truncated"),
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
    assert (loaded.node_id, loaded.zone, loaded.cert, loaded.hub_public_key,
            loaded.hub_public_keys) == ("node-7", "hall-b", written.cert,
                                        hub.public_key_bytes, ())
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


def test_node_trusting_two_hub_keys_keeps_both_through_its_files(
        tmp_path: Path, hub: HubAuthority) -> None:
    new = HubAuthority.from_seed(bytes([9]) * 32)
    write_node_credentials(tmp_path, new, "node-7", "hall-b", EXPIRES,
                           also_trust=[hub.public_key_bytes])
    loaded = load_node_credentials(KeysSection(), tmp_path)
    assert loaded.hub_keyring.keys == (new.public_key_bytes, hub.public_key_bytes)
    assert (tmp_path / "hub.pub").read_text().count("BEGIN PUBLIC KEY") == 2


def test_single_key_hub_pub_from_before_rotation_still_loads(tmp_path: Path,
                                                             hub: HubAuthority) -> None:
    write_handset_credentials(tmp_path, hub, "h-1", EXPIRES)
    hub.save(tmp_path / "hub")  # hub.pub as HubAuthority writes it: one PEM block
    (tmp_path / "hub.pub").write_bytes((tmp_path / "hub" / "hub.pub").read_bytes())
    assert load_handset_credentials(tmp_path).hub_keyring.keys == (hub.public_key_bytes,)


def test_hub_pub_with_a_block_cut_short_is_refused(tmp_path: Path, hub: HubAuthority) -> None:
    """Rotation: an old key pasted in half must not silently drop out of the keyring."""
    new = HubAuthority.from_seed(bytes([9]) * 32)
    write_handset_credentials(tmp_path, new, "h-1", EXPIRES, also_trust=[hub.public_key_bytes])
    pub = tmp_path / "hub.pub"
    pub.write_bytes(pub.read_bytes()[:-40])
    with pytest.raises(KeyFileError, match="cut short"):
        load_handset_credentials(tmp_path)
