"""Key-ring rules: data-key wrapping and small secrets under a KEK, ring checks, destruction receipts."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.exceptions import InvalidTag

from services.keys.domain.crypto import new_key
from services.keys.domain.envelope import (
    MAX_PLAINTEXT,
    WRAPPED_DATA_KEY_LEN,
    WRAPPED_DATA_KEY_V1_LEN,
    Kek,
    canonical_context,
    data_key_aad_v1,
    decrypt_small,
    encrypt_small,
    parse_blob,
    unwrap_data_key,
    wrap_data_key,
)
from services.keys.domain.errors import (
    ContextInvalid,
    DecryptFailed,
    KeyAccountMismatch,
    KeyPolicyInvalid,
    KeysDestroyed,
    KeysPendingDestruction,
    KeyVersionRetired,
    KeyVersionUnknown,
    PlaintextTooLarge,
)
from services.keys.domain.key_rings import AccountRing, RingState, check_pending_window, check_policy
from services.keys.domain.receipts import RECEIPT_TYPE, destruction_receipt, receipt_signer, verify_receipt

NOW = datetime(2026, 1, 1, tzinfo=UTC)


# -- data keys and small secrets ----------------------------------------------------------------------------

CTX = {"purpose": "totp", "user_id": "6"}


def _kek(account_id: int = 5, version: int = 3) -> Kek:
    return Kek.of(account_id, version, new_key())


def test_data_key_wrap_round_trip_and_layout() -> None:
    kek = _kek()
    dk = new_key()
    wrapped = wrap_data_key(kek, dk, CTX)
    assert len(wrapped) == WRAPPED_DATA_KEY_LEN == 73
    assert wrapped[0] == 2 and int.from_bytes(wrapped[1:5], "big") == 3 and int.from_bytes(wrapped[5:13], "big") == 5
    header = parse_blob(wrapped)
    assert (header.fmt, header.version, header.account_id, header.is_data_key) == (2, 3, 5, True)
    assert unwrap_data_key(kek, wrapped, CTX) == dk
    assert dk not in wrapped
    assert unwrap_data_key(kek, wrap_data_key(kek, dk)) == dk  # no context at all


def test_legacy_format_1_still_unwraps() -> None:
    kek = _kek(5, 1)
    dk = new_key()
    nonce = bytes(12)
    legacy = bytes((1,)) + (1).to_bytes(4, "big") + nonce + kek.wrap.encrypt(nonce, dk, data_key_aad_v1(5, 1))
    assert len(legacy) == WRAPPED_DATA_KEY_V1_LEN == 65
    assert parse_blob(legacy).account_id is None
    assert unwrap_data_key(kek, legacy) == dk
    with pytest.raises(DecryptFailed):
        unwrap_data_key(kek, legacy, CTX)
    with pytest.raises(DecryptFailed):
        unwrap_data_key(Kek(6, 1, kek.wrap, kek.seal), legacy)  # bound to account 5 through the AAD


def test_data_key_unwrap_failures_are_clear() -> None:
    kek = _kek(5, 1)
    wrapped = wrap_data_key(kek, new_key(), CTX)
    with pytest.raises(KeyAccountMismatch):
        unwrap_data_key(Kek(6, 1, kek.wrap, kek.seal), wrapped, CTX)  # another account
    with pytest.raises(DecryptFailed):
        unwrap_data_key(_kek(5, 1), wrapped, CTX)  # another KEK
    for ctx in ({}, {"purpose": "totp"}, {"purpose": "TOTP", "user_id": "6"}, CTX | {"extra": ""}):
        with pytest.raises(DecryptFailed):
            unwrap_data_key(kek, wrapped, ctx)  # associated data must match exactly
    for i in range(13, len(wrapped)):  # every byte after the header is authenticated
        bad = bytearray(wrapped)
        bad[i] ^= 0x80
        with pytest.raises(DecryptFailed):
            unwrap_data_key(kek, bytes(bad), CTX)
    for i in range(1, 5):  # a changed version in the header fails too (authenticated as associated data)
        bad = bytearray(wrapped)
        bad[i] ^= 0x01
        with pytest.raises((DecryptFailed, KeyAccountMismatch)):
            unwrap_data_key(kek, bytes(bad), CTX)
    zero_version = b"\x02\x00\x00\x00\x00" + wrapped[5:]
    for bad_blob in (b"", wrapped[:-1], wrapped + b"\x00", b"\x09" + wrapped[1:], zero_version):
        with pytest.raises(DecryptFailed):
            parse_blob(bad_blob)


def test_small_secrets_round_trip_and_fail_clearly() -> None:
    kek = _kek(5, 2)
    ct = encrypt_small(kek, b"JBSWY3DPEHPK3PXP", CTX)
    assert ct[0] == 3 and b"JBSWY3DPEHPK3PXP" not in ct
    assert decrypt_small(kek, ct, CTX) == b"JBSWY3DPEHPK3PXP"
    assert decrypt_small(kek, encrypt_small(kek, b""), None) == b""
    with pytest.raises(DecryptFailed):
        decrypt_small(kek, ct, {"purpose": "totp", "user_id": "7"})
    with pytest.raises(DecryptFailed):
        decrypt_small(kek, ct[:-1] + bytes([ct[-1] ^ 1]), CTX)
    with pytest.raises(KeyAccountMismatch):
        decrypt_small(Kek(9, 2, kek.wrap, kek.seal), ct, CTX)
    with pytest.raises(DecryptFailed):
        decrypt_small(kek, wrap_data_key(kek, new_key()), None)  # a wrapped key is not a ciphertext
    with pytest.raises(DecryptFailed):
        unwrap_data_key(kek, ct, CTX)  # and the other way round
    with pytest.raises(PlaintextTooLarge):
        encrypt_small(kek, bytes(MAX_PLAINTEXT + 1))
    # The small-secret key is a subkey: the KEK itself does not open it.
    with pytest.raises(InvalidTag):
        kek.wrap.decrypt(ct[13:25], ct[25:], b"")


def test_context_encoding_is_canonical_and_bounded() -> None:
    assert canonical_context({"b": "2", "a": "1"}) == canonical_context({"a": "1", "b": "2"})
    assert canonical_context({"ab": "c"}) != canonical_context({"a": "bc"})
    assert canonical_context({}) != canonical_context({"": ""}.fromkeys([]) | {"a": ""})
    for bad in ({"": "x"}, {str(i): "" for i in range(33)}, {"k": "v" * 5000}):
        with pytest.raises(ContextInvalid):
            canonical_context(bad)


# -- key rings -----------------------------------------------------------------------------------------------


def test_ring_checks() -> None:
    ring = AccountRing(5, current_version=4, min_decryption_version=2)
    ring.check_usable()
    ring.check_decrypt(2)
    ring.check_decrypt(4)
    with pytest.raises(KeyVersionRetired) as info:
        ring.check_decrypt(1)
    assert info.value.reason == "KEY_VERSION_RETIRED" and "minimum decryption version is 2" in info.value.message
    with pytest.raises(KeyVersionUnknown):
        ring.check_decrypt(5)
    with pytest.raises(KeysPendingDestruction):
        dataclasses.replace(ring, state=RingState.PENDING_DESTRUCTION).check_decrypt(4)
    with pytest.raises(KeysDestroyed):
        dataclasses.replace(ring, state=RingState.DESTROYED).check_usable()
    assert [ring.version_state(v, False) for v in (1, 2, 4)] == ["retired", "enabled", "primary"]
    assert ring.version_state(3, True) == "destroyed"


def test_policy_checks() -> None:
    ring = AccountRing(5, current_version=3)
    assert check_policy(ring, None, None) == (0, 1)
    assert check_policy(ring, 3600, 3) == (3600, 3)
    for period, minimum in ((59, None), (None, 0), (None, 4)):
        with pytest.raises(KeyPolicyInvalid):
            check_policy(ring, period, minimum)
    assert check_pending_window(7 * 86400, timedelta(days=7)) == timedelta(days=7)
    for bad in (86400, 31 * 86400):
        with pytest.raises(KeyPolicyInvalid):
            check_pending_window(bad, timedelta(days=7))


def test_next_rotation_time() -> None:
    ring = AccountRing(5, 1, current_create_time=NOW)
    assert ring.next_rotation_time(timedelta(days=90)) == NOW + timedelta(days=90)
    assert dataclasses.replace(ring, rotation_period_seconds=3600).next_rotation_time(timedelta(0)) == NOW + timedelta(
        hours=1
    )
    assert ring.next_rotation_time(timedelta(0)) is None


# -- destruction receipts ----------------------------------------------------------------------------------


def test_receipt_is_canonical_signed_and_verifiable() -> None:
    signer = receipt_signer("r1", bytes(range(32)))
    assert signer.key_id.startswith("r1.") and bytes(range(32)).hex() not in repr(signer)
    body = destruction_receipt(
        account_id=5, destroyed=[(2, b"w2"), (1, b"w1")], scheduled_time=NOW, destroy_time=NOW + timedelta(days=7),
        requested_by="identity", signing_key_id=signer.key_id,
    )
    parsed = json.loads(body)
    assert parsed["type"] == RECEIPT_TYPE and parsed["account_id"] == "5"
    assert [v["version"] for v in parsed["destroyed_key_versions"]] == [1, 2]
    assert parsed["destroyed_key_versions"][0]["wrapped_sha256"] == hashlib.sha256(b"w1").hexdigest()
    assert body == json.dumps(parsed, sort_keys=True, separators=(",", ":")).encode()
    signature = signer.sign(body)
    assert verify_receipt(signer.public_bytes, body, signature)
    assert not verify_receipt(signer.public_bytes, body.replace(b'"5"', b'"6"'), signature)
    assert not verify_receipt(receipt_signer("r1", bytes(32)).public_bytes, body, signature)
    assert not verify_receipt(b"short", body, signature)
