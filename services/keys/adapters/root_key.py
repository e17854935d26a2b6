"""The root key provider that holds the root keys in process memory (a KMS or HSM adapter would sit beside it,
implementing the same services.keys.service.ports.RootKeyProvider)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.keys.domain.crypto import KEY_SIZE, NONCE_SIZE, TAG_SIZE, hkdf
from services.keys.domain.errors import DecryptFailed, KeyVersionUnknown, RootKeyInvalid
from services.keys.domain.root_key import RootWrapped

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
