"""Keys use cases: one method per RPC (issue/verify API keys, generate/decrypt data keys), plus the
periodic last-used write-back.

Unwrapped account KEKs are cached in memory for a short, bounded time, so generating or unwrapping a data
key is normally pure CPU (no database, no root-key call). Concurrent misses for one account share one load.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Hashable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sendsafe.audit.v1 import event_pb2
from services.keys.domain import (
    DEFAULT_SCOPES,
    PEPPER_INFO,
    ApiKeyRecord,
    DecryptFailed,
    InvalidCredentials,
    KeyVersionUnknown,
    RootKeyProvider,
    StoredKek,
    TtlLru,
    VerifiedKey,
    check_account_id,
    check_issue_request,
    check_revoke_user_request,
    kek_aad,
    new_api_key,
    new_key,
    parse_api_key,
    secret_hmac,
    unwrap_data_key,
    verify_failure,
    wrap_data_key,
    wrapped_key_version,
)
from svckit.audit import new_event
from svckit.keyevents import API_KEYS_CHANGED, KeyNotice

_LOG = logging.getLogger(__name__)
T = TypeVar("T")


class KeyStore(Protocol):
    async def current_kek(self, account_id: int) -> StoredKek | None: ...
    async def kek_version(self, account_id: int, version: int) -> StoredKek | None: ...
    async def create_first_kek(self, first: StoredKek) -> tuple[StoredKek, bool]: ...
    async def insert_api_key(self, record: ApiKeyRecord, before_commit: Callable[[], Awaitable[None]]) -> None: ...
    async def api_key(self, key_id: str) -> ApiKeyRecord | None: ...
    async def revoke_user_keys(self, account_id: int, user_id: int, keep_key_id: str, when: datetime) -> list[str]: ...
    async def set_last_used(self, items: Sequence[tuple[str, datetime]]) -> int: ...


class LastUsed(Protocol):
    async def touch(self, key_id: str, when: float | None = None) -> None: ...
    async def take(self, limit: int) -> list[tuple[str, datetime]]: ...
    async def give_back(self, key_ids: Sequence[str]) -> None: ...


class Notices(Protocol):
    async def publish(self, notice: KeyNotice) -> int: ...


class _NoNotices:
    async def publish(self, notice: KeyNotice) -> int:
        return 0


class Audit(Protocol):
    async def record(self, event: event_pb2.Event) -> None: ...
    async def record_strict(self, event: event_pb2.Event, timeout: float = 5.0) -> None: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Service:
    def __init__(
        self,
        store: KeyStore,
        last_used: LastUsed,
        root: RootKeyProvider,
        audit: Audit,
        *,
        kek_cache_seconds: float = 60.0,
        kek_cache_entries: int = 10_000,
        service_name: str = "keys",
        now: Callable[[], datetime] = _utcnow,
        notices: Notices | None = None,
    ) -> None:
        self._store = store
        self._notices: Notices = notices or _NoNotices()
        self._last_used = last_used
        self._root = root
        self._audit = audit
        self._name = service_name
        self._now = now
        self._current_version: TtlLru[int, int] = TtlLru(kek_cache_seconds, kek_cache_entries)
        self._keks: TtlLru[tuple[int, int], AESGCM] = TtlLru(kek_cache_seconds, kek_cache_entries)
        self._peppers: dict[str, bytes] = {}
        self._inflight: dict[Hashable, asyncio.Task[Any]] = {}

    # -- API keys -----------------------------------------------------------------------------------------

    async def issue_api_key(self, account_id: int, user_id: int, name: str, test_mode: bool) -> tuple[str, str]:
        """A new key for a user: (key_id, the full key). The full key exists only in this return value.

        Privileged: the audit event is stored before the key is committed or returned (fail closed)."""
        name = check_issue_request(account_id, user_id, name)
        parts = new_api_key(test_mode)
        pepper_id, pepper = await self._pepper(None)
        record = ApiKeyRecord(
            key_id=parts.key_id,
            account_id=account_id,
            user_id=user_id,
            name=name,
            test_mode=test_mode,
            scopes=DEFAULT_SCOPES,
            secret_hmac=secret_hmac(pepper, parts),
            pepper_id=pepper_id,
            create_time=self._now(),
        )
        event = new_event(
            self._name,
            "keys.api_key.issued",
            resource_type="api_key",
            resource_id=parts.key_id,
            account_id=account_id,
            details={
                "user_id": str(user_id),
                "name": name,
                "mode": "test" if test_mode else "live",
                "scopes": ",".join(record.scopes),
            },
        )
        attempted = False

        async def evidence() -> None:
            nonlocal attempted
            attempted = True
            await self._audit.record_strict(event)

        try:
            await self._store.insert_api_key(record, before_commit=evidence)
        except Exception as err:
            # Rolled back and never shown. The success event may still reach the log (queued or in flight);
            # this one, for the same key id and account, says it did not happen.
            failed = new_event(
                self._name,
                "keys.api_key.issued",
                outcome=event_pb2.OUTCOME_FAILURE,
                resource_type="api_key",
                resource_id=parts.key_id,
                error_reason=getattr(err, "reason", "INTERNAL"),
                account_id=account_id,
                details={"user_id": str(user_id)},
            )
            if attempted:
                failed.details["supersedes_event_id"] = event.event_id
            await self._audit.record(failed)
            raise
        return parts.key_id, parts.format()

    async def verify_api_key(self, api_key: str) -> VerifiedKey:
        """Whose key this is, or InvalidCredentials (one message for every failure)."""
        parts = parse_api_key(api_key)
        if parts is None:  # garbage or a typo: no database lookup
            await self._verify_failed("", 0, "malformed")
            raise InvalidCredentials()
        record = await self._store.api_key(parts.key_id)
        try:
            _, pepper = await self._pepper(record.pepper_id if record else None)
        except KeyVersionUnknown:
            await self._verify_failed(parts.key_id, record.account_id if record else 0, "pepper_unknown")
            raise InvalidCredentials() from None
        failure = verify_failure(record, parts, pepper, self._now())
        if failure or record is None:
            await self._verify_failed(parts.key_id, record.account_id if record else 0, failure)
            raise InvalidCredentials()
        await self._touch(parts.key_id)
        return VerifiedKey(record.key_id, record.account_id, record.user_id, record.scopes)

    async def revoke_user_api_keys(self, account_id: int, user_id: int, keep_key_id: str, reason: str) -> list[str]:
        """Revoke every key of one user (but `keep_key_id`) now; the ids revoked by this call.

        Not fail-closed on audit: refusing a revocation because the audit log is slow would keep a
        possibly leaked key alive. The events are queued (retried until stored) instead."""
        why = check_revoke_user_request(account_id, user_id, keep_key_id, reason)
        revoked = await self._store.revoke_user_keys(account_id, user_id, keep_key_id, self._now())
        if revoked:
            await self._notices.publish(KeyNotice(API_KEYS_CHANGED, account_id, tuple(revoked), "revoked"))
        for key_id in revoked:
            await self._audit.record(
                new_event(
                    self._name,
                    "keys.api_key.revoked",
                    resource_type="api_key",
                    resource_id=key_id,
                    account_id=account_id,
                    details={"user_id": str(user_id), "reason": why},
                )
            )
        return revoked

    async def flush_last_used(self, batch: int = 1000) -> int:
        """Write last-used times recorded in Redis back to PostgreSQL, in batches. Returns keys written."""
        written = 0
        while True:
            items = await self._last_used.take(batch)
            if not items:
                return written
            try:
                await self._store.set_last_used(items)
            except BaseException:
                await self._last_used.give_back([k for k, _ in items])
                raise
            written += len(items)
            if len(items) < batch:
                return written

    # -- data keys ----------------------------------------------------------------------------------------

    async def generate_data_key(self, account_id: int) -> tuple[bytes, bytes, int]:
        """(plaintext, wrapped, KEK version) of a fresh data key; creates the account's KEK on first use."""
        check_account_id(account_id)
        version, kek = await self._current_kek(account_id)
        data_key = new_key()
        return data_key, wrap_data_key(kek, account_id, version, data_key), version

    async def decrypt_data_key(self, account_id: int, wrapped: bytes) -> tuple[bytes, int]:
        """(plaintext, KEK version) of a wrapped data key of `account_id`."""
        check_account_id(account_id)
        try:
            version = wrapped_key_version(wrapped)
            kek = await self._kek(account_id, version)
            return unwrap_data_key(kek, account_id, wrapped), version
        except (DecryptFailed, KeyVersionUnknown) as err:
            await self._audit.record(
                new_event(
                    self._name,
                    "keys.data_key.decrypt_failed",
                    outcome=event_pb2.OUTCOME_FAILURE,
                    resource_type="account_keys",
                    resource_id=str(account_id),
                    error_reason=err.reason,
                    account_id=account_id,
                )
            )
            raise

    # -- internals ----------------------------------------------------------------------------------------

    async def _pepper(self, pepper_id: str | None) -> tuple[str, bytes]:
        kid = pepper_id or self._root.current_key_id
        pepper = self._peppers.get(kid)
        if pepper is None:
            kid, pepper = await self._root.derive_secret(PEPPER_INFO, kid)
            self._peppers[kid] = pepper
        return kid, pepper

    async def _verify_failed(self, key_id: str, account_id: int, failure: str) -> None:
        await self._audit.record(
            new_event(
                self._name,
                "keys.api_key.verify_failed",
                outcome=event_pb2.OUTCOME_FAILURE,
                resource_type="api_key" if key_id else "",
                resource_id=key_id,
                error_reason=InvalidCredentials.reason,
                account_id=account_id or None,
                details={"failure": failure},
            )
        )

    async def _touch(self, key_id: str) -> None:
        # Best effort, bounded: a slow or absent Redis must not fail or stall authentication.
        try:
            async with asyncio.timeout(0.5):
                await self._last_used.touch(key_id)
        except Exception as exc:
            _LOG.warning("could not record last use of API key %s: %s", key_id, type(exc).__name__)

    async def _current_kek(self, account_id: int) -> tuple[int, AESGCM]:
        version = self._current_version.get(account_id)
        if version is not None:
            kek = self._keks.get((account_id, version))
            if kek is not None:
                return version, kek
        return await self._single(("current", account_id), lambda: self._load_current(account_id))

    async def _load_current(self, account_id: int) -> tuple[int, AESGCM]:
        stored = await self._store.current_kek(account_id)
        if stored is None:
            kek = new_key()
            wrapped = await self._root.wrap(kek, kek_aad(account_id, 1))
            stored, created = await self._store.create_first_kek(StoredKek(account_id, 1, wrapped))
            if created:
                await self._audit.record(
                    new_event(
                        self._name,
                        "keys.kek.created",
                        resource_type="account_keys",
                        resource_id=str(account_id),
                        account_id=account_id,
                        details={"version": "1", "root_key_id": wrapped.key_id},
                    )
                )
        aead = await self._unwrap_kek(stored)
        self._current_version.put(account_id, stored.version)
        return stored.version, aead

    async def _kek(self, account_id: int, version: int) -> AESGCM:
        kek = self._keks.get((account_id, version))
        if kek is not None:
            return kek
        return await self._single(("kek", account_id, version), lambda: self._load_kek(account_id, version))

    async def _load_kek(self, account_id: int, version: int) -> AESGCM:
        stored = await self._store.kek_version(account_id, version)
        if stored is None:
            raise KeyVersionUnknown()
        return await self._unwrap_kek(stored)

    async def _unwrap_kek(self, stored: StoredKek) -> AESGCM:
        try:
            raw = await self._root.unwrap(stored.wrapped, kek_aad(stored.account_id, stored.version))
        except (DecryptFailed, KeyVersionUnknown):
            # Not the caller's fault: the stored KEK or the root key configuration is wrong. INTERNAL.
            raise RuntimeError(
                f"stored KEK of account {stored.account_id} version {stored.version} does not unwrap under root key"
                f" {stored.wrapped.key_id!r}"
            ) from None
        aead = AESGCM(raw)
        self._keks.put((stored.account_id, stored.version), aead)
        return aead

    async def _single(self, key: Hashable, load: Callable[[], Awaitable[T]]) -> T:
        """Run `load` once for concurrent callers with the same `key`; a cancelled caller leaves it running."""
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(load())
            self._inflight[key] = task
            task.add_done_callback(functools.partial(_forget, self._inflight, key))
        result: T = await asyncio.shield(task)
        return result


def _forget(inflight: dict[Hashable, asyncio.Task[Any]], key: Hashable, task: asyncio.Task[Any]) -> None:
    if inflight.get(key) is task:
        del inflight[key]
    if not task.cancelled():
        task.exception()  # mark retrieved: waiters may all have gone
