"""Envelope encryption, the callers' side: encrypt records under per-account data keys from the keys service.

A service that stores sensitive data (message bodies, TOTP secrets) asks the keys service for a data key,
encrypts locally with AES-256-GCM, and stores the data key only in wrapped form next to the ciphertext.
The keys service is not on each record's path: the current data key per account is reused for a while and
unwrapped keys are cached, both in bounded, time-limited memory caches.

Blob format (version 1), all lengths in bytes::

    +---------+------------------+-------------+----------+--------------------------------+
    | version | wrapped key len  | wrapped key | nonce    | AES-256-GCM ciphertext || tag  |
    | 1 (=1)  | 2, big-endian    | n           | 12       | len(plaintext) + 16            |
    +---------+------------------+-------------+----------+--------------------------------+

* The wrapped key is opaque here. It is produced by the keys service, is self-describing (it names the
  account key-encryption-key version that wraps it) and can only be unwrapped for the account it was
  generated for. It is deliberately *not* authenticated by the GCM tag, so the keys service can later rewrap
  data keys to a newer key-encryption-key version without touching the ciphertext.
* The GCM associated data is ``version byte || account id (8 bytes, big-endian, signed) || aad`` where
  ``aad`` is the caller's associated data, normally ``aad_for(account_id, record_type, record_id)``. A blob
  copied to another account or another record, or decrypted with altered associated data, fails.
* The nonce is random per message; one data key encrypts at most ``MAX_MESSAGES_PER_KEY`` (2^20) messages,
  far below the 2^32 random-nonce limit for GCM.

Failures to decrypt raise `DecryptFailed` (reason ``DECRYPT_FAILED``); messages never carry key material,
plaintext or associated data.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import grpc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sendsafe.keys.v1 import keys_service_pb2, keys_service_pb2_grpc
from svckit.errors import FailedPrecondition, Unavailable

BLOB_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
DATA_KEY_SIZE = 32
MAX_MESSAGES_PER_KEY = 1 << 20
_AAD_MAGIC = b"sendsafe.aad.v1\x00"
_HEADER = struct.Struct(">BH")
_ACCOUNT = struct.Struct(">q")
K = TypeVar("K")
V = TypeVar("V")


class DecryptFailed(FailedPrecondition):
    """A blob could not be decrypted: tampered, wrong account or record, or its data key is unknown."""

    reason = "DECRYPT_FAILED"

    def __init__(self, message: str = "the data could not be decrypted") -> None:
        super().__init__(message)


class KeysUnavailable(Unavailable):
    reason = "KEYS_UNAVAILABLE"

    def __init__(self, message: str = "the keys service is unavailable") -> None:
        super().__init__(message)


class DataKeySource(Protocol):
    """Where data keys come from: the keys service (through `KeysStubSource`) or a fake in tests."""

    async def generate(self, account_id: int) -> tuple[bytes, bytes]:
        """A fresh data key for `account_id`: (plaintext_key, wrapped_key)."""
        ...

    async def decrypt(self, account_id: int, wrapped_key: bytes) -> bytes:
        """Unwrap `wrapped_key` for `account_id`; raise `DecryptFailed` when it is not that account's."""
        ...


# Codes with which the keys service says "this wrapped key is not valid for this account".
_REJECTED = frozenset(
    {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND}
)
_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class KeysStubSource:
    """`DataKeySource` over the keys service's gRPC stub (channel from `svckit.rpc.secure_channel`)."""

    def __init__(self, stub: keys_service_pb2_grpc.KeysServiceStub) -> None:
        self._stub = stub

    async def generate(self, account_id: int) -> tuple[bytes, bytes]:
        try:
            resp = await self._stub.GenerateDataKey(keys_service_pb2.GenerateDataKeyRequest(account_id=account_id))
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _TRANSIENT:
                raise KeysUnavailable() from None
            raise
        if len(resp.plaintext) != DATA_KEY_SIZE or not resp.wrapped_key:
            raise KeysUnavailable("the keys service returned a malformed data key")
        return resp.plaintext, resp.wrapped_key

    async def decrypt(self, account_id: int, wrapped_key: bytes) -> bytes:
        try:
            resp = await self._stub.DecryptDataKey(
                keys_service_pb2.DecryptDataKeyRequest(account_id=account_id, wrapped_key=wrapped_key)
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _REJECTED:
                raise DecryptFailed() from None
            if exc.code() in _TRANSIENT:
                raise KeysUnavailable() from None
            raise
        if len(resp.plaintext) != DATA_KEY_SIZE:
            raise DecryptFailed()
        return resp.plaintext


def aad_for(account_id: int, record_type: str, record_id: str) -> bytes:
    """Canonical associated data binding a ciphertext to {account, record type, record id}.

    Fixed-width account id and length-prefixed strings, so no two distinct triples share an encoding.
    """
    if not record_type:
        raise ValueError("record_type must not be empty")
    rtype = record_type.encode()
    rid = record_id.encode()
    if len(rtype) > 0xFFFF or len(rid) > 0xFFFF:
        raise ValueError("record_type and record_id must be shorter than 64 KiB")
    return b"".join(
        (_AAD_MAGIC, _ACCOUNT.pack(account_id), struct.pack(">H", len(rtype)), rtype, struct.pack(">H", len(rid)), rid)
    )


@dataclass
class _CurrentKey:
    wrapped: bytes
    aead: AESGCM
    created: float
    uses: int = 0


@dataclass
class _UnwrappedKey:
    account_id: int
    aead: AESGCM
    created: float


def _gcm_aad(account_id: int, aad: bytes) -> bytes:
    return bytes((BLOB_VERSION,)) + _ACCOUNT.pack(account_id) + aad


class Envelope:
    """Encrypt and decrypt records for accounts, caching data keys briefly.

    * Encrypt: one current data key per account, reused until `ttl_seconds` pass or it has encrypted
      `MAX_MESSAGES_PER_KEY` messages.
    * Decrypt: unwrapped keys cached by (account, SHA-256 of the wrapped key) for `ttl_seconds`.
    * Both caches hold at most `max_entries` entries (least recently used evicted first).
    * Concurrent misses for the same account / wrapped key share one call to the source.
    """

    def __init__(
        self,
        source: DataKeySource,
        *,
        ttl_seconds: float = 300.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._source = source
        self._ttl = ttl_seconds
        self._max = max_entries
        self._clock = clock
        self._current: OrderedDict[int, _CurrentKey] = OrderedDict()
        self._unwrapped: OrderedDict[bytes, _UnwrappedKey] = OrderedDict()
        self._generating: dict[int, asyncio.Task[_CurrentKey]] = {}
        self._unwrapping: dict[bytes, asyncio.Task[_UnwrappedKey]] = {}
        self._epoch = 0  # bumped by clear(); results of calls started before are not cached

    # -- public API -------------------------------------------------------------------------------------

    async def encrypt(self, account_id: int, aad: bytes, plaintext: bytes) -> bytes:
        key = await self._reserve(account_id, 1)
        return self._seal(key, account_id, aad, plaintext)

    async def encrypt_many(self, account_id: int, items: list[tuple[bytes, bytes]]) -> list[bytes]:
        """Encrypt (aad, plaintext) pairs for one account under one data key (more only past the use limit)."""
        out: list[bytes] = []
        for start in range(0, len(items), MAX_MESSAGES_PER_KEY):
            chunk = items[start : start + MAX_MESSAGES_PER_KEY]
            key = await self._reserve(account_id, len(chunk))
            out.extend(self._seal(key, account_id, aad, plaintext) for aad, plaintext in chunk)
        return out

    async def decrypt(self, account_id: int, aad: bytes, blob: bytes) -> bytes:
        wrapped, nonce, ciphertext = _parse(blob)
        key = await self._unwrap(account_id, wrapped)
        try:
            return key.aead.decrypt(nonce, ciphertext, _gcm_aad(account_id, aad))
        except InvalidTag:
            raise DecryptFailed() from None

    def clear(self, account_id: int | None = None) -> None:
        """Forget cached keys (all, or one account's), e.g. after rotation or destruction."""
        self._epoch += 1
        if account_id is None:
            self._current.clear()
            self._unwrapped.clear()
            return
        self._current.pop(account_id, None)
        for digest in [d for d, k in self._unwrapped.items() if k.account_id == account_id]:
            del self._unwrapped[digest]

    # -- internals --------------------------------------------------------------------------------------

    def _seal(self, key: _CurrentKey, account_id: int, aad: bytes, plaintext: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        sealed = key.aead.encrypt(nonce, plaintext, _gcm_aad(account_id, aad))
        return b"".join((_HEADER.pack(BLOB_VERSION, len(key.wrapped)), key.wrapped, nonce, sealed))

    def _fresh(self, created: float) -> bool:
        return self._clock() - created < self._ttl

    async def _reserve(self, account_id: int, n: int) -> _CurrentKey:
        """The account's current data key with `n` uses reserved on it, generating a new one if needed."""
        key = self._current.get(account_id)
        if key is not None and self._fresh(key.created) and key.uses + n <= MAX_MESSAGES_PER_KEY:
            key.uses += n
            self._current.move_to_end(account_id)
            return key
        while True:
            task = self._generating.get(account_id)
            if task is None:
                task = asyncio.ensure_future(self._generate(account_id, self._epoch))
                self._generating[account_id] = task
                task.add_done_callback(functools.partial(_forget, self._generating, account_id))
            key = await asyncio.shield(task)
            if key.uses + n <= MAX_MESSAGES_PER_KEY:
                key.uses += n
                return key
            # Others used it up while we waited: the next round generates another.
            _forget(self._generating, account_id, task)

    async def _generate(self, account_id: int, epoch: int) -> _CurrentKey:
        plaintext, wrapped = await self._source.generate(account_id)
        if len(plaintext) != DATA_KEY_SIZE or len(wrapped) > 0xFFFF:
            raise KeysUnavailable("the keys service returned a malformed data key")
        now = self._clock()
        aead = AESGCM(plaintext)
        key = _CurrentKey(wrapped=wrapped, aead=aead, created=now)
        if epoch == self._epoch:
            _put(self._current, account_id, key, self._max)
            # What we just encrypted is usually read back soon: let decrypt find it without a call.
            _put(self._unwrapped, _digest(account_id, wrapped), _UnwrappedKey(account_id, aead, now), self._max)
        return key

    async def _unwrap(self, account_id: int, wrapped: bytes) -> _UnwrappedKey:
        digest = _digest(account_id, wrapped)
        key = self._unwrapped.get(digest)
        if key is not None:
            if self._fresh(key.created):
                self._unwrapped.move_to_end(digest)
                return key
            del self._unwrapped[digest]
        task = self._unwrapping.get(digest)
        if task is None:
            task = asyncio.ensure_future(self._fetch(account_id, wrapped, digest, self._epoch))
            self._unwrapping[digest] = task
            task.add_done_callback(functools.partial(_forget, self._unwrapping, digest))
        return await asyncio.shield(task)

    async def _fetch(self, account_id: int, wrapped: bytes, digest: bytes, epoch: int) -> _UnwrappedKey:
        plaintext = await self._source.decrypt(account_id, wrapped)
        if len(plaintext) != DATA_KEY_SIZE:
            raise DecryptFailed()
        key = _UnwrappedKey(account_id, AESGCM(plaintext), self._clock())
        if epoch == self._epoch:
            _put(self._unwrapped, digest, key, self._max)
        return key


def _parse(blob: bytes) -> tuple[bytes, bytes, bytes]:
    if len(blob) < _HEADER.size:
        raise DecryptFailed()
    version, wrapped_len = _HEADER.unpack_from(blob)
    if version != BLOB_VERSION or wrapped_len == 0:
        raise DecryptFailed()
    start = _HEADER.size
    nonce_at = start + wrapped_len
    body_at = nonce_at + NONCE_SIZE
    if len(blob) < body_at + TAG_SIZE:
        raise DecryptFailed()
    return blob[start:nonce_at], blob[nonce_at:body_at], blob[body_at:]


def _digest(account_id: int, wrapped: bytes) -> bytes:
    # The account is part of the cache key: a wrapped key cached for one account never unlocks another's.
    return hashlib.sha256(_ACCOUNT.pack(account_id) + wrapped).digest()


def _put(cache: OrderedDict[K, V], key: K, value: V, limit: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)


def _forget(inflight: dict[K, asyncio.Task[V]], key: K, task: asyncio.Task[V]) -> None:
    if inflight.get(key) is task:
        del inflight[key]
    # Retrieve the exception so a failure nobody awaited (all waiters cancelled) is not logged as unretrieved.
    if not task.cancelled():
        task.exception()
