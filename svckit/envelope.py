"""Envelope encryption, the callers' side: encrypt records under per-account data keys from the keys service.

A service that stores sensitive data (message bodies, TOTP secrets) asks the keys service for a data key,
encrypts locally with AES-256-GCM, and stores the data key only in wrapped form next to the ciphertext.
The keys service is not on each record's path: the current data key per account is reused for a while and
unwrapped keys are cached, both in bounded, time-limited memory caches (`svckit.ttlcache`).

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

Failures to decrypt raise `DecryptFailed`. Its reason says why when the keys service knows (``DECRYPT_FAILED``
for altered data or associated data, ``KEY_ACCOUNT_MISMATCH``, ``KEY_VERSION_RETIRED``, ``KEYS_DESTROYED``,
``KEYS_PENDING_DESTRUCTION``); messages never carry key material, plaintext or associated data.

Keeping caches honest: `Envelope.follow(redis, prefix)` subscribes to the keys service's notices
(svckit.keyevents) and drops an account's cached keys when its key ring is rotated, retired, scheduled for
destruction or destroyed, and everything when the subscription (re)starts; `ttl_seconds` is the backstop.

Moving data to the newest key version: `rewrap_many` swaps the wrapped data key inside stored blobs through the
keys service's Rewrap RPC (one call per distinct data key, never a plaintext outside the keys service, the
ciphertext untouched); `svckit.envelope_rewrap.rewrap_all` drives it over a caller's table in batches, resumable
from a cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import grpc
import redis.asyncio as aioredis
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sendsafe.keys.v1 import keys_service_pb2, keys_service_pb2_grpc
from svckit.errors import FailedPrecondition, Unavailable
from svckit.keyevents import ACCOUNT_KEYS_CHANGED, KeyNotice, Subscriber
from svckit.redisconn import make_redis
from svckit.rpcstatus import error_reason
from svckit.ttlcache import TtlCache

BLOB_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
DATA_KEY_SIZE = 32
MAX_MESSAGES_PER_KEY = 1 << 20
_AAD_MAGIC = b"sendsafe.aad.v1\x00"
_HEADER = struct.Struct(">BH")
_ACCOUNT = struct.Struct(">q")
_LENGTH = struct.Struct(">H")
K = TypeVar("K")
V = TypeVar("V")


class DecryptFailed(FailedPrecondition):
    """A blob could not be decrypted: tampered, wrong account or record, or its data key is unknown, retired
    or destroyed (`reason` says which, when the keys service said)."""

    reason = "DECRYPT_FAILED"

    def __init__(self, message: str = "the data could not be decrypted", *, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)


class KeysRefused(FailedPrecondition):
    """The keys service refuses new data keys for the account (its keys are destroyed or pending destruction)."""

    reason = "KEYS_REFUSED"


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

    async def rewrap(self, account_id: int, wrapped_keys: Sequence[bytes]) -> list[bytes | str]:
        """Each wrapped key under the account's newest key version (the same bytes when it already is), or
        the error reason (str) for a key that cannot be rewrapped. At most `REWRAP_BATCH` keys per call.
        Raise `KeysRefused` when the account's keys take no rewrap at all (destruction pending, or destroyed)."""
        ...


REWRAP_BATCH = 1000


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
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                reason = error_reason(exc, consistent=False) or KeysRefused.reason
                raise KeysRefused("the account's keys cannot be used for new data", reason=reason) from None
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
                raise DecryptFailed(reason=error_reason(exc, consistent=False) or None) from None
            if exc.code() in _TRANSIENT:
                raise KeysUnavailable() from None
            raise
        if len(resp.plaintext) != DATA_KEY_SIZE:
            raise DecryptFailed()
        return resp.plaintext

    async def rewrap(self, account_id: int, wrapped_keys: Sequence[bytes]) -> list[bytes | str]:
        request = keys_service_pb2.RewrapRequest(
            account_id=account_id,
            items=[keys_service_pb2.RewrapItem(reference=str(i), blob=w) for i, w in enumerate(wrapped_keys)],
        )
        try:
            resp = await self._stub.Rewrap(request)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _TRANSIENT:
                raise KeysUnavailable() from None
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:  # the whole account (per-item errors are results)
                reason = error_reason(exc, consistent=False) or KeysRefused.reason
                raise KeysRefused("the account's keys take no rewrap (destruction pending or done)",
                                  reason=reason) from None
            raise
        if len(resp.results) != len(wrapped_keys):
            raise KeysUnavailable("the keys service returned a malformed rewrap answer")
        return [r.error_reason or r.blob for r in resp.results]


def aad_for(account_id: int, record_type: str, record_id: str) -> bytes:
    """Canonical associated data binding a ciphertext to {account, record type, record id}.

    Fixed-width account id and length-prefixed strings, so no two distinct triples share an encoding.
    """
    rid = record_id.encode()
    if len(rid) > 0xFFFF:
        raise ValueError("record_type and record_id must be shorter than 64 KiB")
    return _aad_prefix(account_id, record_type) + _LENGTH.pack(len(rid)) + rid


@functools.lru_cache(maxsize=4096)
def _aad_prefix(account_id: int, record_type: str) -> bytes:
    """The part of `aad_for` before the record id (the send path seals two records per message)."""
    if not record_type:
        raise ValueError("record_type must not be empty")
    rtype = record_type.encode()
    if len(rtype) > 0xFFFF:
        raise ValueError("record_type and record_id must be shorter than 64 KiB")
    return _AAD_MAGIC + _ACCOUNT.pack(account_id) + _LENGTH.pack(len(rtype)) + rtype


@dataclass(frozen=True)
class RewrapOutcome:
    blob: bytes  # the blob to store (the input when unchanged or failed)
    changed: bool
    error_reason: str = ""


@dataclass
class _CurrentKey:
    wrapped: bytes
    aead: AESGCM
    uses: int = 0


@dataclass
class _UnwrappedKey:
    account_id: int
    aead: AESGCM


def _gcm_aad(account_id: int, aad: bytes) -> bytes:
    return bytes((BLOB_VERSION,)) + _ACCOUNT.pack(account_id) + aad


class Envelope:
    """Encrypt and decrypt records for accounts, caching data keys briefly.

    * Encrypt: one current data key per account, reused until `ttl_seconds` pass or it has encrypted
      `MAX_MESSAGES_PER_KEY` messages.
    * Decrypt: unwrapped keys cached by (account, SHA-256 of the wrapped key) for `ttl_seconds`.
    * Both caches hold at most `max_entries` entries (least recently used evicted first).
    * Concurrent misses for the same account / wrapped key share one call to the source (its own task: a
      cancelled caller does not cancel it for the others, which `svckit.ttlcache.get_or_load` would).
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
        self._current: TtlCache[int, _CurrentKey] = TtlCache(ttl_seconds, max_entries, clock)
        self._unwrapped: TtlCache[bytes, _UnwrappedKey] = TtlCache(ttl_seconds, max_entries, clock)
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
            nonces = os.urandom(NONCE_SIZE * len(chunk))  # one system call for the chunk's nonces
            out.extend(
                self._seal(key, account_id, aad, plaintext, nonces[i * NONCE_SIZE : (i + 1) * NONCE_SIZE])
                for i, (aad, plaintext) in enumerate(chunk)
            )
        return out

    async def decrypt(self, account_id: int, aad: bytes, blob: bytes) -> bytes:
        wrapped, nonce, ciphertext = _parse(blob)
        key = await self._unwrap(account_id, wrapped)
        try:
            return key.aead.decrypt(nonce, ciphertext, _gcm_aad(account_id, aad))
        except InvalidTag:
            raise DecryptFailed() from None

    def follow(self, redis: aioredis.Redis, prefix: str) -> Subscriber:
        """Clear cached keys when the keys service announces a change to an account's keys (rotation,
        retirement, destruction). Start the returned subscriber; close it on shutdown."""

        def on_notice(notice: KeyNotice) -> None:
            self.clear(notice.account_id)

        return Subscriber(redis, prefix, on_notice=on_notice, on_resync=self.clear, kinds=(ACCOUNT_KEYS_CHANGED,))

    async def rewrap_many(self, account_id: int, blobs: Sequence[bytes]) -> list[RewrapOutcome]:
        """Each blob with its wrapped data key moved to the account's newest key version (ciphertext unchanged).
        Blobs that share a data key share one rewrap; nothing here ever sees a plaintext. `KeysRefused` when
        the account's keys take no rewrap at all (its destruction is pending or done)."""
        parsed: list[tuple[bytes, bytes, bytes] | None] = []
        for blob in blobs:
            try:
                parsed.append(_parse(blob))
            except DecryptFailed:
                parsed.append(None)
        distinct = list(dict.fromkeys(p[0] for p in parsed if p is not None))
        fresh: dict[bytes, bytes | str] = {}
        for start in range(0, len(distinct), REWRAP_BATCH):
            chunk = distinct[start : start + REWRAP_BATCH]
            fresh.update(zip(chunk, await self._source.rewrap(account_id, chunk), strict=True))
        out: list[RewrapOutcome] = []
        for blob, parts in zip(blobs, parsed, strict=True):
            if parts is None:
                out.append(RewrapOutcome(blob, False, DecryptFailed.reason))
                continue
            wrapped, nonce, sealed = parts
            result = fresh[wrapped]
            if isinstance(result, str):
                out.append(RewrapOutcome(blob, False, result))
            elif result == wrapped:
                out.append(RewrapOutcome(blob, False))
            else:
                if len(result) > 0xFFFF:
                    raise KeysUnavailable("the keys service returned a malformed wrapped key")
                out.append(RewrapOutcome(_pack(result, nonce, sealed), True))
        return out

    def clear(self, account_id: int | None = None) -> None:
        """Forget cached keys (all, or one account's), e.g. after rotation or destruction."""
        self._epoch += 1
        if account_id is None:
            self._current.clear()
            self._unwrapped.clear()
            return
        self._current.pop(account_id)
        self._unwrapped.pop_where(lambda _, key: key.account_id == account_id)

    # -- internals --------------------------------------------------------------------------------------

    def _seal(self, key: _CurrentKey, account_id: int, aad: bytes, plaintext: bytes, nonce: bytes = b"") -> bytes:
        nonce = nonce or os.urandom(NONCE_SIZE)
        return _pack(key.wrapped, nonce, key.aead.encrypt(nonce, plaintext, _gcm_aad(account_id, aad)))

    async def _reserve(self, account_id: int, n: int) -> _CurrentKey:
        """The account's current data key with `n` uses reserved on it, generating a new one if needed."""
        key = self._current.get(account_id)
        if key is not None and key.uses + n <= MAX_MESSAGES_PER_KEY:
            key.uses += n
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
        aead = AESGCM(plaintext)
        key = _CurrentKey(wrapped=wrapped, aead=aead)
        if epoch == self._epoch:
            self._current.put(account_id, key)
            # What we just encrypted is usually read back soon: let decrypt find it without a call.
            self._unwrapped.put(_digest(account_id, wrapped), _UnwrappedKey(account_id, aead))
        return key

    async def _unwrap(self, account_id: int, wrapped: bytes) -> _UnwrappedKey:
        digest = _digest(account_id, wrapped)
        key = self._unwrapped.get(digest)
        if key is not None:
            return key
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
        key = _UnwrappedKey(account_id, AESGCM(plaintext))
        if epoch == self._epoch:
            self._unwrapped.put(digest, key)
        return key


def follow_key_notices(
    envelope: Envelope, redis_url: str, prefix: str, stack: contextlib.AsyncExitStack
) -> Subscriber:
    """Wire `envelope.follow` for a service's lifetime (its own Redis connection, closed with `stack`), so
    rotation and destruction clear the service's cached data keys at once. Call from an app's build()."""
    redis = make_redis(redis_url)
    stack.push_async_callback(redis.aclose)
    follower = envelope.follow(redis, prefix)
    follower.start()
    stack.push_async_callback(follower.close)
    return follower


def _pack(wrapped: bytes, nonce: bytes, sealed: bytes) -> bytes:
    return b"".join((_HEADER.pack(BLOB_VERSION, len(wrapped)), wrapped, nonce, sealed))


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


def _forget(inflight: dict[K, asyncio.Task[V]], key: K, task: asyncio.Task[V]) -> None:
    if inflight.get(key) is task:
        del inflight[key]
    # Retrieve the exception so a failure nobody awaited (all waiters cancelled) is not logged as unretrieved.
    if not task.cancelled():
        task.exception()
