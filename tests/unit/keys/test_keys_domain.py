"""Keys domain rules: API-key format, checksum, hashing, verification outcomes, root and data-key wrapping."""

from __future__ import annotations

import base64
import string
import zlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.keys import domain as d
from services.keys.domain import (
    ApiKeyParts,
    ApiKeyRecord,
    DecryptFailed,
    KeyVersionUnknown,
    LocalRootKey,
    RootKeyInvalid,
    RootWrapped,
    looks_like_api_key,
    parse_api_key,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PEPPER = bytes(range(32))

# -- API-key format --------------------------------------------------------------------------------------


def test_new_key_format() -> None:
    for test_mode, prefix in ((False, "ss_live_"), (True, "ss_test_")):
        parts = d.new_api_key(test_mode)
        key = parts.format()
        assert key.startswith(prefix)
        assert len(key) == d.API_KEY_LEN == 8 + 12 + 1 + 22 + 6
        rest = key[len(prefix) :]
        assert rest[:12] == parts.key_id and rest[12] == "_"
        assert set(rest[:12] + rest[13:]) <= set(string.ascii_letters + string.digits)
        assert parse_api_key(key) == parts
        assert looks_like_api_key(key)


def test_secret_has_at_least_128_bits_and_is_random() -> None:
    import math

    assert d.SECRET_LEN * math.log2(62) >= 128
    keys = {d.new_api_key(False).format() for _ in range(2000)}
    assert len(keys) == 2000
    # Every base62 character shows up across the secrets (no truncated alphabet).
    assert set("".join(parse_api_key(k).secret for k in keys)) == set(d.BASE62)  # type: ignore[union-attr]


def test_checksum_is_base62_crc32_of_the_rest() -> None:
    parts = ApiKeyParts(False, "A" * 12, "b" * 22)
    key = parts.format()
    body, check = key[:-6], key[-6:]
    value = 0
    for c in check:
        value = value * 62 + d.BASE62.index(c)
    assert value == zlib.crc32(body.encode())
    assert d.base62_fixed(0, 6) == "000000"
    assert d.base62_fixed(62**6 - 1, 6) == "zzzzzz"
    with pytest.raises(ValueError):
        d.base62_fixed(62**6, 6)


def test_every_single_character_change_is_detected_offline() -> None:
    key = d.new_api_key(False).format()
    for i in range(len(key)):
        for c in ("0", "Z", "z", "_", "x"):
            if key[i] == c:
                continue
            mutated = key[:i] + c + key[i + 1 :]
            assert not looks_like_api_key(mutated), (i, c)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ss_live_",
        "sk_live_" + "a" * 41,
        "ss_prod_" + "a" * 12 + "_" + "a" * 28,
        "ss_live_" + "a" * 12 + "-" + "a" * 28,
        "ss_live_" + "a" * 12 + "_" + "a" * 27 + "!",
        "ss_live_" + "a" * 12 + "_" + "a" * 29,
        "ss_live_" + "é" * 12 + "_" + "a" * 28,
        "ss_live_" + "a" * 12 + "_" + "a" * 28 + "\n",
        "x" * 10_000,
    ],
)
def test_garbage_is_not_a_key(text: str) -> None:
    assert parse_api_key(text) is None
    assert not looks_like_api_key(text)


def test_mode_is_bound_by_checksum_and_hmac() -> None:
    live = d.new_api_key(False)
    as_test = ApiKeyParts(True, live.key_id, live.secret)
    # Switching the prefix breaks the checksum…
    assert parse_api_key("ss_test_" + live.format()[8:]) is None
    # …and an attacker who recomputes it still fails the HMAC, which covers the prefix.
    assert parse_api_key(as_test.format()) == as_test
    assert not d.hmac_matches(PEPPER, as_test, d.secret_hmac(PEPPER, live))


def test_repr_hides_the_secret() -> None:
    parts = d.new_api_key(False)
    assert parts.secret not in repr(parts) and parts.secret not in str(parts)


# -- hashing and verification ----------------------------------------------------------------------------


def _record(parts: ApiKeyParts, **kw: object) -> ApiKeyRecord:
    base: dict[str, object] = {
        "key_id": parts.key_id,
        "account_id": 5,
        "user_id": 6,
        "name": "ci",
        "test_mode": parts.test_mode,
        "scopes": ("*",),
        "secret_hmac": d.secret_hmac(PEPPER, parts),
        "pepper_id": "local-1",
        "create_time": NOW - timedelta(days=1),
    }
    base.update(kw)
    return ApiKeyRecord(**base)  # type: ignore[arg-type]


def test_hmac_is_keyed_and_constant_size() -> None:
    parts = d.new_api_key(False)
    h = d.secret_hmac(PEPPER, parts)
    assert len(h) == 32
    assert d.hmac_matches(PEPPER, parts, h)
    assert not d.hmac_matches(bytes(32), parts, h)
    assert not d.hmac_matches(PEPPER, ApiKeyParts(False, parts.key_id, "x" * 22), h)
    assert parts.secret.encode() not in h


def test_verify_outcomes() -> None:
    parts = d.new_api_key(False)
    assert d.verify_failure(_record(parts), parts, PEPPER, NOW) == ""
    assert d.verify_failure(None, parts, PEPPER, NOW) == "unknown_key"
    wrong = ApiKeyParts(False, parts.key_id, d.random_base62(22))
    assert d.verify_failure(_record(parts), wrong, PEPPER, NOW) == "secret_mismatch"
    assert d.verify_failure(_record(parts), parts, bytes(32), NOW) == "secret_mismatch"
    assert d.verify_failure(_record(parts, revoke_time=NOW), parts, PEPPER, NOW) == "revoked"
    assert d.verify_failure(_record(parts, revoke_time=NOW + timedelta(seconds=1)), parts, PEPPER, NOW) == ""
    assert d.verify_failure(_record(parts, expire_time=NOW - timedelta(seconds=1)), parts, PEPPER, NOW) == "expired"
    assert d.verify_failure(_record(parts, expire_time=NOW + timedelta(hours=1)), parts, PEPPER, NOW) == ""


def test_invalid_credentials_message_is_the_same_for_every_failure() -> None:
    err = d.InvalidCredentials()
    assert err.reason == "INVALID_CREDENTIALS" and err.code == "UNAUTHENTICATED"
    assert str(err) == str(d.InvalidCredentials())


def test_issue_request_checks() -> None:
    assert d.check_issue_request(1, 2, "  ci key ") == "ci key"
    for args in ((0, 1, "x"), (1, 0, "x"), (1, 1, "x" * 101), (1, 1, "bad\nname"), (-1, 1, "")):
        with pytest.raises(d.RequestInvalid):
            d.check_issue_request(*args)  # type: ignore[arg-type]


# -- root key --------------------------------------------------------------------------------------------

ROOT = bytes(range(100, 132))


def test_parse_root_key_forms() -> None:
    assert d.parse_root_key(ROOT.hex()) == ROOT
    assert d.parse_root_key(ROOT.hex().upper() + "\n") == ROOT
    assert d.parse_root_key(base64.b64encode(ROOT).decode()) == ROOT
    assert d.parse_root_key(base64.urlsafe_b64encode(ROOT).decode().rstrip("=")) == ROOT
    for bad in ("", "00" * 31, "00" * 33, base64.b64encode(b"x" * 31).decode(), "not a key at all!!"):
        with pytest.raises(RootKeyInvalid) as info:
            d.parse_root_key(bad)
        assert bad not in info.value.message or not bad


async def test_root_wrap_round_trip_and_binding() -> None:
    root = LocalRootKey({"r1": ROOT}, "r1")
    kek = d.new_key()
    wrapped = await root.wrap(kek, d.kek_aad(5, 1))
    assert wrapped.key_id == "r1" and kek not in wrapped.blob
    assert await root.unwrap(wrapped, d.kek_aad(5, 1)) == kek
    for aad in (d.kek_aad(6, 1), d.kek_aad(5, 2)):
        with pytest.raises(DecryptFailed):
            await root.unwrap(wrapped, aad)
    tampered = RootWrapped("r1", wrapped.blob[:-1] + bytes([wrapped.blob[-1] ^ 1]))
    with pytest.raises(DecryptFailed):
        await root.unwrap(tampered, d.kek_aad(5, 1))
    with pytest.raises(DecryptFailed):
        await root.unwrap(RootWrapped("r1", b"short"), d.kek_aad(5, 1))
    with pytest.raises(KeyVersionUnknown):
        await root.unwrap(RootWrapped("r0", wrapped.blob), d.kek_aad(5, 1))
    other = LocalRootKey({"r1": bytes(32)}, "r1")
    with pytest.raises(DecryptFailed):
        await other.unwrap(wrapped, d.kek_aad(5, 1))


async def test_root_rotation_keeps_old_ids_readable() -> None:
    old = LocalRootKey({"r1": ROOT}, "r1")
    wrapped = await old.wrap(b"k" * 32, b"aad")
    rotated = LocalRootKey({"r1": ROOT, "r2": bytes(32)}, "r2")
    assert await rotated.unwrap(wrapped, b"aad") == b"k" * 32
    assert (await rotated.wrap(b"k" * 32, b"aad")).key_id == "r2"
    # The pepper of an old root key id stays derivable (stored API-key hashes name it).
    assert await rotated.derive_secret(d.PEPPER_INFO, "r1") == await old.derive_secret(d.PEPPER_INFO)


async def test_derived_secrets_are_separated() -> None:
    root = LocalRootKey({"r1": ROOT}, "r1")
    kid, pepper = await root.derive_secret(d.PEPPER_INFO)
    assert kid == "r1" and len(pepper) == 32
    assert pepper != ROOT
    assert (await root.derive_secret(b"something else"))[1] != pepper
    with pytest.raises(KeyVersionUnknown):
        await root.derive_secret(d.PEPPER_INFO, "nope")
    assert ROOT.hex() not in repr(root)


def test_local_root_key_rejects_bad_config() -> None:
    with pytest.raises(RootKeyInvalid):
        LocalRootKey({"r1": b"short"}, "r1")
    with pytest.raises(RootKeyInvalid):
        LocalRootKey({"r1": ROOT}, "r2")


# -- data keys --------------------------------------------------------------------------------------------


def test_data_key_wrap_round_trip_and_layout() -> None:
    kek = AESGCM(d.new_key())
    dk = d.new_key()
    wrapped = d.wrap_data_key(kek, 5, 3, dk)
    assert len(wrapped) == d.WRAPPED_DATA_KEY_LEN == 65
    assert wrapped[0] == 1 and int.from_bytes(wrapped[1:5], "big") == 3
    assert d.wrapped_key_version(wrapped) == 3
    assert d.unwrap_data_key(kek, 5, wrapped) == dk
    assert dk not in wrapped


def test_data_key_unwrap_failures() -> None:
    kek = AESGCM(d.new_key())
    wrapped = d.wrap_data_key(kek, 5, 1, d.new_key())
    with pytest.raises(DecryptFailed):
        d.unwrap_data_key(kek, 6, wrapped)  # another account
    with pytest.raises(DecryptFailed):
        d.unwrap_data_key(AESGCM(d.new_key()), 5, wrapped)  # another KEK
    for i in range(len(wrapped)):
        bad = bytearray(wrapped)
        bad[i] ^= 0x80
        with pytest.raises(DecryptFailed):
            d.unwrap_data_key(kek, 5, bytes(bad))
    for bad_blob in (
        b"",
        wrapped[:-1],
        wrapped + b"\x00",
        b"\x02" + wrapped[1:],
        b"\x01\x00\x00\x00\x00" + wrapped[5:],
    ):
        with pytest.raises(DecryptFailed):
            d.wrapped_key_version(bad_blob)


def test_ttl_lru() -> None:
    now = [0.0]
    cache: d.TtlLru[str, int] = d.TtlLru(10, 2, clock=lambda: now[0])
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)  # evicts b (least recently used)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    now[0] = 10
    assert cache.get("a") is None and len(cache) == 1
    cache.pop("c")
    assert len(cache) == 0
