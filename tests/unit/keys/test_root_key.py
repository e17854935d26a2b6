"""The root key: parsing a configured key, and the in-memory provider (wrapping, rotation, derived secrets)."""

from __future__ import annotations

import base64

import pytest

from services.keys.adapters.root_key import LocalRootKey
from services.keys.domain.api_key_format import PEPPER_INFO
from services.keys.domain.crypto import new_key
from services.keys.domain.envelope import kek_aad
from services.keys.domain.errors import DecryptFailed, KeyVersionUnknown, RootKeyInvalid
from services.keys.domain.root_key import RootWrapped, parse_root_key

# -- root key --------------------------------------------------------------------------------------------

ROOT = bytes(range(100, 132))


def test_parse_root_key_forms() -> None:
    assert parse_root_key(ROOT.hex()) == ROOT
    assert parse_root_key(ROOT.hex().upper() + "\n") == ROOT
    assert parse_root_key(base64.b64encode(ROOT).decode()) == ROOT
    assert parse_root_key(base64.urlsafe_b64encode(ROOT).decode().rstrip("=")) == ROOT
    for bad in ("", "00" * 31, "00" * 33, base64.b64encode(b"x" * 31).decode(), "not a key at all!!"):
        with pytest.raises(RootKeyInvalid) as info:
            parse_root_key(bad)
        assert bad not in info.value.message or not bad


async def test_root_wrap_round_trip_and_binding() -> None:
    root = LocalRootKey({"r1": ROOT}, "r1")
    kek = new_key()
    wrapped = await root.wrap(kek, kek_aad(5, 1))
    assert wrapped.key_id == "r1" and kek not in wrapped.blob
    assert await root.unwrap(wrapped, kek_aad(5, 1)) == kek
    for aad in (kek_aad(6, 1), kek_aad(5, 2)):
        with pytest.raises(DecryptFailed):
            await root.unwrap(wrapped, aad)
    tampered = RootWrapped("r1", wrapped.blob[:-1] + bytes([wrapped.blob[-1] ^ 1]))
    with pytest.raises(DecryptFailed):
        await root.unwrap(tampered, kek_aad(5, 1))
    with pytest.raises(DecryptFailed):
        await root.unwrap(RootWrapped("r1", b"short"), kek_aad(5, 1))
    with pytest.raises(KeyVersionUnknown):
        await root.unwrap(RootWrapped("r0", wrapped.blob), kek_aad(5, 1))
    other = LocalRootKey({"r1": bytes(32)}, "r1")
    with pytest.raises(DecryptFailed):
        await other.unwrap(wrapped, kek_aad(5, 1))


async def test_root_rotation_keeps_old_ids_readable() -> None:
    old = LocalRootKey({"r1": ROOT}, "r1")
    wrapped = await old.wrap(b"k" * 32, b"aad")
    rotated = LocalRootKey({"r1": ROOT, "r2": bytes(32)}, "r2")
    assert await rotated.unwrap(wrapped, b"aad") == b"k" * 32
    assert (await rotated.wrap(b"k" * 32, b"aad")).key_id == "r2"
    # The pepper of an old root key id stays derivable (stored API-key hashes name it).
    assert await rotated.derive_secret(PEPPER_INFO, "r1") == await old.derive_secret(PEPPER_INFO)


async def test_derived_secrets_are_separated() -> None:
    root = LocalRootKey({"r1": ROOT}, "r1")
    kid, pepper = await root.derive_secret(PEPPER_INFO)
    assert kid == "r1" and len(pepper) == 32
    assert pepper != ROOT
    assert (await root.derive_secret(b"something else"))[1] != pepper
    with pytest.raises(KeyVersionUnknown):
        await root.derive_secret(PEPPER_INFO, "nope")
    assert ROOT.hex() not in repr(root)


def test_local_root_key_rejects_bad_config() -> None:
    with pytest.raises(RootKeyInvalid):
        LocalRootKey({"r1": b"short"}, "r1")
    with pytest.raises(RootKeyInvalid):
        LocalRootKey({"r1": ROOT}, "r2")
