"""The root key at the top of the key hierarchy: what it wraps (RootWrapped) and how a configured key is read."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from services.keys.domain.crypto import KEY_SIZE
from services.keys.domain.errors import RootKeyInvalid


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
