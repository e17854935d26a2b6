"""Envelope encryption under an account's KEK: wrapped data keys, small-secret ciphertexts, the encryption
context. Pure: no I/O.

Self-describing blobs (all integers big-endian); the header is authenticated as associated data::

    wrapped data key, format 1 (legacy, read only): 1 | version (4) | nonce (12) | sealed key + tag (48)
    wrapped data key, format 2:                     2 | version (4) | account (8) | nonce (12) | sealed (48)
    ciphertext (Encrypt), format 3:                 3 | version (4) | account (8) | nonce (12) | sealed (n + 16)

The optional encryption context (a string map) is bound as associated data in a canonical encoding, so
decryption must present exactly the same map. Carrying the account in the header gives a clear
KEY_ACCOUNT_MISMATCH instead of a bare authentication failure when a blob is sent for the wrong account.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.keys.domain.crypto import KEY_SIZE, NONCE_SIZE, TAG_SIZE, hkdf
from services.keys.domain.errors import ContextInvalid, DecryptFailed, KeyAccountMismatch, PlaintextTooLarge
from services.keys.domain.key_rings import MAX_KEK_VERSION

MAX_CONTEXT_PAIRS = 32
MAX_CONTEXT_BYTES = 4096
MAX_PLAINTEXT = 4096
MAX_BATCH = 1000


def canonical_context(context: Mapping[str, str]) -> bytes:
    """An unambiguous encoding of the context: pairs sorted by key, each part length-prefixed."""
    if len(context) > MAX_CONTEXT_PAIRS:
        raise ContextInvalid(f"at most {MAX_CONTEXT_PAIRS} encryption context pairs")
    out = [struct.pack(">H", len(context))]
    for key in sorted(context):
        if not key:
            raise ContextInvalid("encryption context keys must not be empty")
        k, v = key.encode(), context[key].encode()
        out += [struct.pack(">I", len(k)), k, struct.pack(">I", len(v)), v]
    encoded = b"".join(out)
    if len(encoded) > MAX_CONTEXT_BYTES:
        raise ContextInvalid(f"the encryption context must encode to at most {MAX_CONTEXT_BYTES} bytes")
    return encoded


FORMAT_DATA_KEY_V1 = 1
FORMAT_DATA_KEY = 2
FORMAT_CIPHERTEXT = 3
WRAPPED_DATA_KEY_FORMAT = FORMAT_DATA_KEY
_HEADER_V1 = struct.Struct(">BI")
_HEADER = struct.Struct(">BIq")
_ACCOUNT_VERSION = struct.Struct(">qI")
WRAPPED_DATA_KEY_V1_LEN = _HEADER_V1.size + NONCE_SIZE + KEY_SIZE + TAG_SIZE
WRAPPED_DATA_KEY_LEN = _HEADER.size + NONCE_SIZE + KEY_SIZE + TAG_SIZE
_ENCRYPT_INFO = b"sendsafe kek encrypt v1"


@dataclass(frozen=True)
class BlobHeader:
    fmt: int
    version: int
    account_id: int | None  # None: a legacy format-1 wrapped key (account bound only through the AAD)
    size: int  # header length

    @property
    def is_data_key(self) -> bool:
        return self.fmt in (FORMAT_DATA_KEY_V1, FORMAT_DATA_KEY)


def parse_blob(blob: bytes) -> BlobHeader:
    """The header of a wrapped data key or ciphertext; DecryptFailed when `blob` is neither."""
    if not blob:
        raise DecryptFailed("the data is empty")
    fmt = blob[0]
    if fmt == FORMAT_DATA_KEY_V1:
        if len(blob) != WRAPPED_DATA_KEY_V1_LEN:
            raise DecryptFailed("the data is not a wrapped key: wrong length")
        _, version = _HEADER_V1.unpack_from(blob)
        header = BlobHeader(fmt, int(version), None, _HEADER_V1.size)
    elif fmt in (FORMAT_DATA_KEY, FORMAT_CIPHERTEXT):
        minimum = WRAPPED_DATA_KEY_LEN if fmt == FORMAT_DATA_KEY else _HEADER.size + NONCE_SIZE + TAG_SIZE
        if len(blob) < minimum or (fmt == FORMAT_DATA_KEY and len(blob) != WRAPPED_DATA_KEY_LEN):
            raise DecryptFailed("the data is truncated or padded")
        _, version, account = _HEADER.unpack_from(blob)
        header = BlobHeader(fmt, int(version), int(account), _HEADER.size)
    else:
        raise DecryptFailed("the data is not a SendSafe wrapped key or ciphertext (unknown format)")
    if not 0 < header.version <= MAX_KEK_VERSION:
        raise DecryptFailed("the data names an impossible key version")
    return header


def check_blob_account(header: BlobHeader, account_id: int) -> None:
    if header.account_id is not None and header.account_id != account_id:
        raise KeyAccountMismatch()


def kek_aad(account_id: int, version: int) -> bytes:
    """Associated data when the root key wraps an account's KEK: the KEK is bound to its account and version."""
    return b"sendsafe.kek.v1\x00" + _ACCOUNT_VERSION.pack(account_id, version)


def data_key_aad_v1(account_id: int, version: int) -> bytes:
    return b"sendsafe.dek.v1\x00" + bytes((FORMAT_DATA_KEY_V1,)) + _ACCOUNT_VERSION.pack(account_id, version)


def _aad(label: bytes, header: bytes, context: Mapping[str, str]) -> bytes:
    return label + header + canonical_context(context)


@dataclass(frozen=True)
class Kek:
    """One unwrapped KEK version, as two purpose-bound AEADs (never exported, never logged)."""

    account_id: int
    version: int
    wrap: AESGCM = field(repr=False)  # wraps data keys (the KEK itself, as in format 1)
    seal: AESGCM = field(repr=False)  # encrypts small secrets (an HKDF subkey of the KEK)

    @classmethod
    def of(cls, account_id: int, version: int, raw: bytes) -> Kek:
        return cls(account_id, version, AESGCM(raw), AESGCM(hkdf(raw, _ENCRYPT_INFO)))


def wrap_data_key(kek: Kek, data_key: bytes, context: Mapping[str, str] | None = None) -> bytes:
    header = _HEADER.pack(FORMAT_DATA_KEY, kek.version, kek.account_id)
    nonce = secrets.token_bytes(NONCE_SIZE)
    sealed = kek.wrap.encrypt(nonce, data_key, _aad(b"sendsafe.dek.v2\x00", header, context or {}))
    return header + nonce + sealed


def unwrap_data_key(kek: Kek, blob: bytes, context: Mapping[str, str] | None = None) -> bytes:
    header = parse_blob(blob)
    if not header.is_data_key:
        raise DecryptFailed("the data is a ciphertext, not a wrapped data key")
    check_blob_account(header, kek.account_id)
    nonce = blob[header.size : header.size + NONCE_SIZE]
    if header.fmt == FORMAT_DATA_KEY_V1:
        if context:
            raise DecryptFailed()  # format 1 had no context: a non-empty one cannot match
        aad = data_key_aad_v1(kek.account_id, header.version)
    else:
        aad = _aad(b"sendsafe.dek.v2\x00", blob[: header.size], context or {})
    try:
        key = kek.wrap.decrypt(nonce, blob[header.size + NONCE_SIZE :], aad)
    except InvalidTag:
        raise DecryptFailed() from None
    if len(key) != KEY_SIZE:
        raise DecryptFailed()
    return key


def encrypt_small(kek: Kek, plaintext: bytes, context: Mapping[str, str] | None = None) -> bytes:
    if len(plaintext) > MAX_PLAINTEXT:
        raise PlaintextTooLarge(f"at most {MAX_PLAINTEXT} bytes: encrypt larger data with a data key")
    header = _HEADER.pack(FORMAT_CIPHERTEXT, kek.version, kek.account_id)
    nonce = secrets.token_bytes(NONCE_SIZE)
    return header + nonce + kek.seal.encrypt(nonce, plaintext, _aad(b"sendsafe.ct.v1\x00", header, context or {}))


def decrypt_small(kek: Kek, blob: bytes, context: Mapping[str, str] | None = None) -> bytes:
    header = parse_blob(blob)
    if header.fmt != FORMAT_CIPHERTEXT:
        raise DecryptFailed("the data is a wrapped data key, not a ciphertext")
    check_blob_account(header, kek.account_id)
    nonce = blob[header.size : header.size + NONCE_SIZE]
    try:
        return kek.seal.decrypt(
            nonce, blob[header.size + NONCE_SIZE :], _aad(b"sendsafe.ct.v1\x00", blob[: header.size], context or {})
        )
    except InvalidTag:
        raise DecryptFailed() from None
