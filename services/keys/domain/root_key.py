"""The root key: the top of the key hierarchy (RootKeyProvider) and the in-memory provider (LocalRootKey)."""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.keys.domain.crypto import KEY_SIZE, NONCE_SIZE, TAG_SIZE, hkdf
from services.keys.domain.errors import DecryptFailed, KeyVersionUnknown, RootKeyInvalid


@dataclass(frozen=True)
class RootWrapped:
    key_id: str
    blob: bytes  # nonce || ciphertext+tag


def parse_root_key(text: str) -> bytes:
    """32 bytes from 64 hex characters or base64 (standard or URL-safe). Errors never echo the input."""
    text = text.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text)
    try:
        raw = base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_SIZE:
        raise RootKeyInvalid("the root key must be 32 bytes, as 64 hex characters or base64")
    return raw


class RootKeyProvider(Protocol):
    """The top of the hierarchy. A cloud KMS or HSM implements the same calls (wrap/unwrap map to its
    Encrypt/Decrypt with the associated data as encryption context; derive_secret to an HMAC or derive-key
    operation), so root key material never has to leave it.

    Everything wrapped or derived records the `key_id` it used, so rotating the root key only changes what
    new wraps use; older ids stay resolvable for unwrapping until the rewrap job has moved everything to the
    current one (GetRootKeyStatus shows what is left), after which they can be removed.
    """

    @property
    def current_key_id(self) -> str: ...

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every id this provider can unwrap with (the current one first)."""
        ...

    async def wrap(self, plaintext: bytes, aad: bytes) -> RootWrapped: ...

    async def unwrap(self, wrapped: RootWrapped, aad: bytes) -> bytes: ...

    async def derive_secret(self, info: bytes, key_id: str | None = None) -> tuple[str, bytes]:
        """A stable 32-byte secret for `info` under `key_id` (default: current). (key_id, secret)."""
        ...


_ROOT_WRAP_INFO = b"sendsafe root kek-wrap v1"


class LocalRootKey:
    """Root keys held in process memory (development, or a key mounted from a secret store).

    The raw root key is only ever used as HKDF input: one derived key wraps KEKs (AES-256-GCM), other
    derived secrets (e.g. the API-key pepper) come from `derive_secret`, so no key serves two purposes.
    """

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        if current not in keys:
            raise RootKeyInvalid("the current root key id has no key")
        for k in keys.values():
            if len(k) != KEY_SIZE:
                raise RootKeyInvalid("root keys are 32 bytes")
        self._keys = dict(keys)
        self._current = current
        self._aead = {kid: AESGCM(hkdf(k, _ROOT_WRAP_INFO)) for kid, k in self._keys.items()}

    def __repr__(self) -> str:
        return f"LocalRootKey(ids={sorted(self._keys)}, current={self._current!r})"

    @property
    def current_key_id(self) -> str:
        return self._current

    @property
    def key_ids(self) -> tuple[str, ...]:
        return (self._current, *sorted(k for k in self._keys if k != self._current))

    async def wrap(self, plaintext: bytes, aad: bytes) -> RootWrapped:
        nonce = secrets.token_bytes(NONCE_SIZE)
        return RootWrapped(self._current, nonce + self._aead[self._current].encrypt(nonce, plaintext, aad))

    async def unwrap(self, wrapped: RootWrapped, aad: bytes) -> bytes:
        aead = self._aead.get(wrapped.key_id)
        if aead is None:
            raise KeyVersionUnknown()
        if len(wrapped.blob) < NONCE_SIZE + TAG_SIZE:
            raise DecryptFailed()
        try:
            return aead.decrypt(wrapped.blob[:NONCE_SIZE], wrapped.blob[NONCE_SIZE:], aad)
        except InvalidTag:
            raise DecryptFailed() from None

    async def derive_secret(self, info: bytes, key_id: str | None = None) -> tuple[str, bytes]:
        kid = self._current if key_id is None else key_id
        key = self._keys.get(kid)
        if key is None:
            raise KeyVersionUnknown()
        return kid, hkdf(key, info)
