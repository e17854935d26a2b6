"""Cryptographic primitives shared by the key hierarchy: sizes, fresh keys, HKDF subkeys. Pure: no I/O."""

from __future__ import annotations

import secrets

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16


def hkdf(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=info).derive(key)


def new_key() -> bytes:
    return secrets.token_bytes(KEY_SIZE)
