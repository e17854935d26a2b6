"""Keys use cases: one method per RPC, plus the periodic jobs (last-used write-back, maintenance).

Customer API keys: create/list/get/revoke/roll for the calling user, issue/verify/revoke for the other
services, leak reports. Key management: data keys and small-secret encryption under per-account key rings,
rewrap, rotation (manual and periodic), retirement (minimum decryption version), destruction with a pending
window and a signed receipt, root-key rotation (a rewrap job that moves every KEK to the current root key).

Unwrapped KEKs and ring states are cached in memory for a short, bounded time, so data-key calls are normally
pure CPU. Every change to a ring clears this process's cache at once and publishes a key notice, on which the
other replicas (and the callers' envelope caches) clear theirs. Concurrent misses for one key share one load.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from sendsafe.audit.v1 import event_pb2
from services.keys.domain.api_key_format import PEPPER_INFO, new_api_key, parse_api_key, secret_hmac, valid_key_id
from services.keys.domain.api_keys import (
    DEFAULT_SCOPES,
    MAX_LINEAGE_HOPS,
    VERIFY_ERRORS,
    ApiKeyRecord,
    Caller,
    KeyRules,
    VerifiedKey,
    check_issue_request,
    check_key_check_request,
    check_new_key,
    check_revoke_user_request,
    check_roll,
    key_in_effect,
    limits_root,
    rolled_lifetime,
    valid_for,
    verify_failure,
)
from services.keys.domain.crypto import new_key
from services.keys.domain.envelope import (
    FORMAT_CIPHERTEXT,
    FORMAT_DATA_KEY,
    MAX_BATCH,
    Kek,
    check_blob_account,
    decrypt_small,
    encrypt_small,
    kek_aad,
    parse_blob,
    unwrap_data_key,
    wrap_data_key,
)
from services.keys.domain.errors import (
    AccountKeysNotFound,
    ApiKeyInactive,
    ApiKeyNotFound,
    BatchTooLarge,
    DecryptFailed,
    InvalidCredentials,
    KeysDestroyed,
    KeyVersionUnknown,
    NotPendingDestruction,
)
from services.keys.domain.key_rings import (
    AccountRing,
    RingState,
    StoredKek,
    check_account_id,
    check_pending_window,
    check_policy,
)
from services.keys.domain.paging import page_size, page_token, parse_page_token
from services.keys.domain.receipts import RECEIPT_SIGNING_INFO, ReceiptSigner, destruction_receipt, receipt_signer
from services.keys.domain.restrictions import SendLimits
from services.keys.domain.root_key import RootKeyProvider
from services.keys.domain.ttl_lru import TtlLru
from svckit.audit import new_event
from svckit.config import ConfigError
from svckit.errors import DomainError
from svckit.keyevents import ACCOUNT_KEYS_CHANGED, API_KEYS_CHANGED, KeyNotice

_LOG = logging.getLogger(__name__)
T = TypeVar("T")
Context = Mapping[str, str]


class RootKeyMismatch(ConfigError):
    """The configured root keys do not open the stored keys (raised at start-up)."""


class KeyStore(Protocol):
    async def ring(self, account_id: int) -> AccountRing | None: ...
    async def kek_version(self, account_id: int, version: int) -> StoredKek | None: ...
    async def kek_versions(self, account_id: int) -> list[StoredKek]: ...
    async def create_first_kek(self, first: StoredKek) -> tuple[AccountRing, bool]: ...
    async def add_kek_version(
        self, new: StoredKek, expected_current: int, before_commit: Callable[[], Awaitable[None]]
    ) -> AccountRing | None: ...
    async def set_policy(
        self, account_id: int, rotation_period_seconds: int, min_decryption_version: int,
        before_commit: Callable[[], Awaitable[None]],
    ) -> AccountRing | None: ...
    async def schedule_destruction(
        self, account_id: int, destroy_time: datetime, now: datetime, requested_by: str,
        before_commit: Callable[[], Awaitable[None]],
    ) -> AccountRing | None: ...
    async def cancel_destruction(
        self, account_id: int, before_commit: Callable[[], Awaitable[None]]
    ) -> AccountRing | None: ...
    async def due_rotations(self, now: datetime, default_period_seconds: int, limit: int) -> list[AccountRing]: ...
    async def due_destructions(self, now: datetime, limit: int) -> list[int]: ...
    async def destroy(
        self, account_id: int, now: datetime,
        before_commit: Callable[[list[tuple[int, bytes]], datetime | None, str], Awaitable[None]],
    ) -> bool: ...
    async def keks_to_rewrap(self, current_root_key_id: str, limit: int) -> list[StoredKek]: ...
    async def newest_kek(self) -> StoredKek | None: ...
    async def replace_wrapped(self, account_id: int, version: int, old_root_key_id: str, new: Any) -> bool: ...
    async def root_key_usage(self) -> tuple[dict[str, int], dict[str, int]]: ...
    async def add_signing_key(self, key_id: str, public_key: bytes, when: datetime) -> None: ...
    async def signing_keys(self) -> list[tuple[str, bytes, datetime]]: ...
    async def insert_api_key(self, record: ApiKeyRecord, before_commit: Callable[[], Awaitable[None]]) -> None: ...
    async def api_key(self, key_id: str) -> ApiKeyRecord | None: ...
    async def api_key_lineage(self, key_id: str, limit: int) -> list[ApiKeyRecord]: ...
    async def list_api_keys(
        self, account_id: int, user_id: int, *, show_inactive: bool, now: datetime,
        after: tuple[datetime, str] | None, limit: int,
    ) -> list[ApiKeyRecord]: ...
    async def revoke_api_key(self, key_id: str, when: datetime) -> bool: ...
    async def roll_api_key(
        self, old: ApiKeyRecord, old_expire_time: datetime, new: ApiKeyRecord,
        before_commit: Callable[[], Awaitable[None]],
    ) -> None: ...
    async def revoke_user_keys(self, account_id: int, user_id: int, keep_key_id: str, when: datetime) -> list[str]: ...
    async def rehash_api_key(self, key_id: str, old_pepper_id: str, new_hmac: bytes, new_pepper_id: str) -> bool: ...
    async def set_last_used(self, items: Sequence[tuple[str, datetime, str]]) -> int: ...


class LastUsed(Protocol):
    async def touch(self, key_id: str, address: str = "", when: float | None = None) -> None: ...
    async def take(self, limit: int) -> list[tuple[str, datetime, str]]: ...
    async def give_back(self, key_ids: Sequence[str]) -> None: ...


class Notices(Protocol):
    async def publish(self, notice: KeyNotice) -> int: ...


class _NoNotices:
    async def publish(self, notice: KeyNotice) -> int:
        return 0


class Audit(Protocol):
    async def record(self, event: event_pb2.Event) -> None: ...
    async def record_strict(self, event: event_pb2.Event, timeout: float = 5.0) -> None: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class AccountStatus:
    ring: AccountRing
    versions: list[StoredKek]
    next_rotation_time: datetime | None


@dataclass(frozen=True)
class RewrapOutcome:
    reference: str
    blob: bytes
    version: int
    changed: bool
    error_reason: str = ""


@dataclass(frozen=True)
class RootKeyUsage:
    root_key_id: str
    current: bool
    wrapped_keys: int
    api_key_hashes: int


@dataclass(frozen=True)
class MaintenanceReport:
    rotated: int = 0
    destroyed: int = 0
    rewrapped: int = 0
    remaining: int = 0


@dataclass(frozen=True)
class LeakReport:
    revoked: list[str]
    inactive: list[str]
    not_keys: int


class Service:
    def __init__(
        self,
        store: KeyStore,
        last_used: LastUsed,
        root: RootKeyProvider,
        audit: Audit,
        *,
        rules: KeyRules | None = None,
        kek_cache_seconds: float = 60.0,
        kek_cache_entries: int = 10_000,
        rotation_period: timedelta = timedelta(days=90),
        min_pending_window: timedelta = timedelta(days=7),
        rewrap_batch: int = 500,
        service_name: str = "keys",
        now: Callable[[], datetime] = utcnow,
        notices: Notices | None = None,
    ) -> None:
        self._store = store
        self._last_used = last_used
        self._root = root
        self._audit = audit
        self._rules = rules or KeyRules(declared_permissions=frozenset())
        self._rotation_period = rotation_period
        self._min_pending = min_pending_window
        self._rewrap_batch = rewrap_batch
        self._name = service_name
        self._now = now
        self._notices: Notices = notices or _NoNotices()
        self._rings: TtlLru[int, AccountRing] = TtlLru(kek_cache_seconds, kek_cache_entries)
        self._keks: TtlLru[tuple[int, int], Kek] = TtlLru(kek_cache_seconds, kek_cache_entries)
        self._peppers: dict[str, bytes] = {}
        self._signer: ReceiptSigner | None = None
        self._inflight: dict[Hashable, asyncio.Task[Any]] = {}

    def now(self) -> datetime:
        return self._now()

    async def prepare(self) -> None:
        """Check that the configured root keys open what is stored, then derive the receipt signing key and
        publish its public half (once per root key)."""
        await self._check_root_keys()
        await self._receipt_signer()

    async def _check_root_keys(self) -> None:
        """Refuse to start when the newest stored KEK does not unwrap under the configured root keys: every
        account's data would then fail to decrypt, one request at a time, as internal errors. It happens
        when the root key was replaced or lost, or the database was written by another deployment (or
        another checkout's `make run`)."""
        newest = await self._store.newest_kek()
        if newest is None or newest.wrapped is None:
            return
        try:
            await self._root.unwrap(newest.wrapped, kek_aad(newest.account_id, newest.version))
        except (DecryptFailed, KeyVersionUnknown):
            raise RootKeyMismatch([
                f"the keys database holds KEKs wrapped under root key {newest.wrapped.key_id!r}, and the configured"
                f" root keys ({', '.join(self._root.key_ids)}) do not open them (account {newest.account_id}"
                f" version {newest.version}): configure the root key that wrote them"
            ]) from None

    # -- customer API keys ----------------------------------------------------------------------------------

    async def create_api_key(
        self,
        caller: Caller,
        *,
        name: str,
        scopes: Sequence[str],
        expire_time: datetime | None,
        allowed_cidrs: Sequence[str],
        send_limits: SendLimits,
    ) -> tuple[ApiKeyRecord, str]:
        """A new key of the calling user: (record, the full key). Privileged: audited before it exists."""
        now = self._now()
        parent = await self._calling_key(caller)
        spec = check_new_key(
            caller, parent, name=name, scopes=scopes, expire_time=expire_time, allowed_cidrs=allowed_cidrs,
            send_limits=send_limits, rules=self._rules, now=now,
        )
        parts = new_api_key(caller.test_mode)
        pepper_id, pepper = await self._pepper(None)
        record = ApiKeyRecord(
            key_id=parts.key_id, account_id=caller.account_id, user_id=caller.user_id, name=spec.name,
            test_mode=caller.test_mode, scopes=spec.scopes, secret_hmac=secret_hmac(pepper, parts),
            pepper_id=pepper_id, create_time=now, expire_time=spec.expire_time, allowed_cidrs=spec.allowed_cidrs,
            send_limits=spec.send_limits, created_by=caller.api_key_id, limits_root=limits_root(parent),
        )
        event = self._key_event("keys.api_key.created", record, _key_details(record))
        await self._strict(event, lambda evidence: self._store.insert_api_key(record, evidence))
        return record, parts.format()

    async def list_api_keys(
        self, caller: Caller, requested_size: int, token: str, show_inactive: bool
    ) -> tuple[list[ApiKeyRecord], str]:
        limit = page_size(requested_size)
        rows = await self._store.list_api_keys(
            caller.account_id, caller.user_id, show_inactive=show_inactive, now=self._now(),
            after=parse_page_token(token), limit=limit + 1,
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, page_token(rows[-1].create_time, rows[-1].key_id) if more else ""

    async def get_api_key(self, caller: Caller, key_id: str) -> ApiKeyRecord:
        return await self._own_key(caller, key_id)

    async def revoke_api_key(self, caller: Caller, key_id: str) -> ApiKeyRecord:
        """Revoke one of the caller's keys now (idempotent). Not fail-closed on audit, like every revocation."""
        record = await self._own_key(caller, key_id)
        if await self._store.revoke_api_key(record.key_id, self._now()):
            await self._revoked([record.key_id], record.account_id, "revoked", "owner", user_id=record.user_id)
        return await self._own_key(caller, key_id)

    async def roll_api_key(
        self, caller: Caller, key_id: str, overlap_seconds: int, expire_time: datetime | None
    ) -> tuple[ApiKeyRecord, str, ApiKeyRecord]:
        """Replace one of the caller's keys: (new record, new full key, old record with its new expiry)."""
        now = self._now()
        old = await self._own_key(caller, key_id)
        old_until = check_roll(old, overlap_seconds, now)
        parent = await self._calling_key(caller)
        spec = check_new_key(
            caller, parent, name=old.name, scopes=old.scopes, expire_time=expire_time,
            allowed_cidrs=old.allowed_cidrs, send_limits=old.send_limits, rules=self._rules, now=now,
            default_lifetime=rolled_lifetime(old, self._rules),
        )
        parts = new_api_key(old.test_mode)
        pepper_id, pepper = await self._pepper(None)
        new = ApiKeyRecord(
            key_id=parts.key_id, account_id=old.account_id, user_id=old.user_id, name=spec.name,
            test_mode=old.test_mode, scopes=spec.scopes, secret_hmac=secret_hmac(pepper, parts), pepper_id=pepper_id,
            create_time=now, expire_time=spec.expire_time, allowed_cidrs=spec.allowed_cidrs,
            send_limits=spec.send_limits, rolled_from=old.key_id, created_by=caller.api_key_id,
            limits_root=limits_root(parent, rolled=old),
        )
        details = _key_details(new) | {
            "rolled_from": old.key_id,
            "overlap_seconds": str(overlap_seconds),
            "previous_expire_time": old_until.isoformat(),
        }
        event = self._key_event("keys.api_key.rolled", new, details)
        await self._strict(event, lambda evidence: self._store.roll_api_key(old, old_until, new, evidence))
        await self._notices.publish(KeyNotice(API_KEYS_CHANGED, old.account_id, (old.key_id,), "rolled"))
        return new, parts.format(), replace(old, expire_time=old_until, rolled_to=new.key_id)

    # -- API keys for the other services ----------------------------------------------------------------------

    async def issue_api_key(
        self, account_id: int, user_id: int, name: str, test_mode: bool
    ) -> tuple[str, str, datetime]:
        """A new key for a user: (key_id, the full key, expiry). The full key exists only in this return value.

        Privileged: the audit event is stored before the key is committed or returned (fail closed)."""
        name = check_issue_request(account_id, user_id, name)
        now = self._now()
        parts = new_api_key(test_mode)
        pepper_id, pepper = await self._pepper(None)
        record = ApiKeyRecord(
            key_id=parts.key_id, account_id=account_id, user_id=user_id, name=name, test_mode=test_mode,
            scopes=DEFAULT_SCOPES, secret_hmac=secret_hmac(pepper, parts), pepper_id=pepper_id, create_time=now,
            expire_time=now + self._rules.max_lifetime,
        )
        details = {"user_id": str(user_id), "name": name, "mode": "test" if test_mode else "live",
                   "scopes": ",".join(record.scopes)}
        event = self._key_event("keys.api_key.issued", record, details)
        await self._strict(event, lambda evidence: self._store.insert_api_key(record, evidence))
        assert record.expire_time is not None
        return parts.key_id, parts.format(), record.expire_time

    async def verify_api_key(self, api_key: str, client_address: str = "") -> VerifiedKey:
        """Whose key this is, or an Unauthenticated/PermissionDenied error. Until the secret is proven the
        answer is always INVALID_CREDENTIALS; after, the real reason (revoked, expired, address)."""
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
        now = self._now()
        failure = verify_failure(record, parts, pepper, now, client_address)
        if failure or record is None:
            error = VERIFY_ERRORS.get(failure, InvalidCredentials)()
            if record is not None and not isinstance(error, InvalidCredentials):
                # The secret was proven: say which key (never the secret) so the gateway can file the event.
                error.metadata.update(key_id=record.key_id, account_id=str(record.account_id))
            await self._verify_failed(parts.key_id, record.account_id if record else 0, failure, error.reason,
                                      client_address if record else "")
            raise error
        await self._best_effort("record last use", self._last_used.touch(record.key_id, client_address,
                                                                         now.timestamp()))
        if record.pepper_id != self._root.current_key_id:  # root key rotated: move the hash, once
            current_id, current = await self._pepper(None)
            await self._best_effort("rehash", self._store.rehash_api_key(
                record.key_id, record.pepper_id, secret_hmac(current, parts), current_id))
        return VerifiedKey(
            record.key_id, record.account_id, record.user_id, record.scopes, record.send_limits,
            record.expire_time, valid_for(record, now), record.limits_bucket,
        )

    async def check_api_key(self, account_id: int, user_id: int, key_id: str) -> ApiKeyRecord | None:
        """The key that still stands for `key_id` of this user (itself, or the key it was rolled to), or None."""
        check_key_check_request(account_id, user_id, key_id)
        chain = await self._store.api_key_lineage(key_id, MAX_LINEAGE_HOPS)
        return key_in_effect(chain, account_id, user_id, self._now())

    async def revoke_user_api_keys(self, account_id: int, user_id: int, keep_key_id: str, reason: str) -> list[str]:
        """Revoke every key of one user (but `keep_key_id`) now; the ids revoked by this call.

        Not fail-closed on audit: refusing a revocation because the audit log is slow would keep a
        possibly leaked key alive. The events are queued (retried until stored) instead."""
        why = check_revoke_user_request(account_id, user_id, keep_key_id, reason)
        revoked = await self._store.revoke_user_keys(account_id, user_id, keep_key_id, self._now())
        await self._revoked(revoked, account_id, "revoked", why, user_id=user_id)
        return revoked

    async def report_leaked_api_keys(self, candidates: Sequence[str], source: str) -> LeakReport:
        """Revoke every live key among `candidates` (strings found in public). Only real keys count: the
        format, checksum and keyed hash must all match, so a report cannot revoke keys it does not hold."""
        if len(candidates) > MAX_BATCH:
            raise BatchTooLarge(f"at most {MAX_BATCH} candidates per report")
        where = source.strip()[:200]
        revoked: list[str] = []
        inactive: list[str] = []
        not_keys = 0
        now = self._now()
        for candidate in dict.fromkeys(c.strip() for c in candidates):
            parts = parse_api_key(candidate)
            record = await self._store.api_key(parts.key_id) if parts else None
            if parts is None or record is None:
                not_keys += 1
                continue
            try:
                _, pepper = await self._pepper(record.pepper_id)
            except KeyVersionUnknown:
                not_keys += 1
                continue
            failure = verify_failure(record, parts, pepper, now)
            if failure in ("secret_mismatch", "mode_mismatch"):
                not_keys += 1
            elif failure:
                inactive.append(record.key_id)
            elif await self._store.revoke_api_key(record.key_id, now):
                revoked.append(record.key_id)
                await self._revoked([record.key_id], record.account_id, "leaked", "leaked",
                                    user_id=record.user_id, extra={"source": where})
            else:
                inactive.append(record.key_id)
        return LeakReport(sorted(revoked), sorted(inactive), not_keys)

    async def flush_last_used(self, batch: int = 1000) -> int:
        """Write last uses recorded in Redis back to PostgreSQL, in batches. Returns keys written."""
        written = 0
        while True:
            items = await self._last_used.take(batch)
            if not items:
                return written
            try:
                await self._store.set_last_used(items)
            except BaseException:
                await self._last_used.give_back([k for k, _, _ in items])
                raise
            written += len(items)
            if len(items) < batch:
                return written

    async def list_receipt_signing_keys(self) -> list[tuple[str, bytes, datetime]]:
        await self._receipt_signer()
        return await self._store.signing_keys()

    # -- data keys and encryption ------------------------------------------------------------------------------

    async def generate_data_key(self, account_id: int, context: Context | None = None) -> tuple[bytes, bytes, int]:
        """(plaintext, wrapped, KEK version) of a fresh data key; creates the account's ring on first use."""
        kek = await self._current_kek(account_id)
        data_key = new_key()
        return data_key, wrap_data_key(kek, data_key, context), kek.version

    async def generate_data_key_without_plaintext(
        self, account_id: int, context: Context | None = None
    ) -> tuple[bytes, int]:
        _, wrapped, version = await self.generate_data_key(account_id, context)
        return wrapped, version

    async def decrypt_data_key(
        self, account_id: int, wrapped: bytes, context: Context | None = None
    ) -> tuple[bytes, int]:
        """(plaintext, KEK version) of a wrapped data key of `account_id`."""
        try:
            kek = await self._kek_for(account_id, wrapped)
            return unwrap_data_key(kek, wrapped, context), kek.version
        except DomainError as err:
            await self._decrypt_failed(account_id, err, "keys.data_key.decrypt_failed")
            raise

    async def encrypt(self, account_id: int, plaintext: bytes, context: Context | None = None) -> tuple[bytes, int]:
        kek = await self._current_kek(account_id)
        return encrypt_small(kek, plaintext, context), kek.version

    async def decrypt(self, account_id: int, ciphertext: bytes, context: Context | None = None) -> tuple[bytes, int]:
        try:
            kek = await self._kek_for(account_id, ciphertext)
            return decrypt_small(kek, ciphertext, context), kek.version
        except DomainError as err:
            await self._decrypt_failed(account_id, err, "keys.decrypt_failed")
            raise

    async def rewrap(
        self, account_id: int, items: Sequence[tuple[str, bytes, Context]]
    ) -> tuple[list[RewrapOutcome], int]:
        """Each item (wrapped data key or ciphertext) under the account's current version. The plaintext never
        leaves this method; a failing item fails alone (its error reason is in its outcome)."""
        if len(items) > MAX_BATCH:
            raise BatchTooLarge(f"at most {MAX_BATCH} items per call")
        current = await self._current_kek(account_id)
        out: list[RewrapOutcome] = []
        failures: dict[str, int] = {}
        for reference, blob, context in items:
            try:
                header = parse_blob(blob)
                check_blob_account(header, account_id)
                if header.version == current.version and header.fmt in (FORMAT_DATA_KEY, FORMAT_CIPHERTEXT):
                    kek = await self._kek_for(account_id, blob)  # still proves it is sound and usable
                    if header.is_data_key:
                        unwrap_data_key(kek, blob, context)
                    else:
                        decrypt_small(kek, blob, context)
                    out.append(RewrapOutcome(reference, blob, current.version, False))
                    continue
                kek = await self._kek_for(account_id, blob)
                if header.is_data_key:
                    fresh = wrap_data_key(current, unwrap_data_key(kek, blob, context), context)
                else:
                    fresh = encrypt_small(current, decrypt_small(kek, blob, context), context)
                out.append(RewrapOutcome(reference, fresh, current.version, True))
            except DomainError as err:
                failures[err.reason] = failures.get(err.reason, 0) + 1
                out.append(RewrapOutcome(reference, b"", 0, False, err.reason))
        changed = sum(o.changed for o in out)
        await self._audit.record(
            new_event(
                self._name, "keys.rewrapped",
                outcome=event_pb2.OUTCOME_SUCCESS if not failures else event_pb2.OUTCOME_FAILURE,
                resource_type="account_keys", resource_id=str(account_id), account_id=account_id,
                details={"items": str(len(items)), "changed": str(changed), "to_version": str(current.version)}
                | {f"failed_{k.lower()}": str(v) for k, v in failures.items()},
            )
        )
        return out, current.version

    # -- key management -----------------------------------------------------------------------------------------

    async def account_key_status(self, account_id: int) -> AccountStatus:
        check_account_id(account_id)
        ring = await self._store.ring(account_id)
        if ring is None:
            raise AccountKeysNotFound()
        return await self._status(ring)

    async def rotate_account_key(self, account_id: int, why: str = "manual") -> AccountStatus:
        """Add a version and make it current. Privileged: the event is stored before the rotation commits."""
        check_account_id(account_id)
        ring = await self._store.ring(account_id)
        if ring is None:
            raise AccountKeysNotFound()
        ring.check_usable()
        version = ring.current_version + 1
        wrapped = await self._root.wrap(new_key(), kek_aad(account_id, version))
        event = self._ring_event("keys.account_key.rotated", account_id, {
            "from_version": str(ring.current_version), "version": str(version), "trigger": why,
            "root_key_id": wrapped.key_id,
        })
        new = StoredKek(account_id, version, wrapped, self._now())
        rotated = await self._strict(
            event, lambda evidence: self._store.add_kek_version(new, ring.current_version, evidence)
        )
        if rotated is None:  # rotated (or changed state) by someone else meanwhile: report what is there now
            return await self.account_key_status(account_id)
        await self._ring_changed(account_id, "rotated")
        return await self._status(rotated)

    async def set_account_key_policy(
        self, account_id: int, rotation_period_seconds: int | None, min_decryption_version: int | None
    ) -> AccountStatus:
        check_account_id(account_id)
        ring = await self._store.ring(account_id)
        if ring is None:
            raise AccountKeysNotFound()
        period, minimum = check_policy(ring, rotation_period_seconds, min_decryption_version)
        event = self._ring_event("keys.account_key.policy_changed", account_id, {
            "rotation_period_seconds": str(period), "min_decryption_version": str(minimum),
            "previous_min_decryption_version": str(ring.min_decryption_version),
        })
        changed = await self._strict(
            event, lambda evidence: self._store.set_policy(account_id, period, minimum, evidence)
        )
        if changed is None:
            return await self.account_key_status(account_id)
        await self._ring_changed(account_id, "retired" if minimum != ring.min_decryption_version else "policy")
        return await self._status(changed)

    async def schedule_destruction(self, account_id: int, window_seconds: int, requested_by: str) -> AccountStatus:
        """From now on every use fails; at the end of the window maintenance destroys the keys."""
        check_account_id(account_id)
        window = check_pending_window(window_seconds, self._min_pending)
        ring = await self._store.ring(account_id)
        if ring is None:
            raise AccountKeysNotFound()
        ring.check_usable()
        now = self._now()
        event = self._ring_event("keys.account_keys.destruction_scheduled", account_id, {
            "destroy_time": (now + window).isoformat(), "pending_window_seconds": str(window_seconds),
            "requested_by": requested_by,
        })
        scheduled = await self._strict(event, lambda evidence: self._store.schedule_destruction(
            account_id, now + window, now, requested_by, evidence))
        if scheduled is None:
            return await self.account_key_status(account_id)
        await self._ring_changed(account_id, "destruction_scheduled")
        return await self._status(scheduled)

    async def cancel_destruction(self, account_id: int) -> AccountStatus:
        check_account_id(account_id)
        ring = await self._store.ring(account_id)
        if ring is None:
            raise AccountKeysNotFound()
        if ring.state is RingState.DESTROYED:
            raise KeysDestroyed()
        if ring.state is not RingState.PENDING_DESTRUCTION:
            raise NotPendingDestruction("the account's keys are not scheduled for destruction")
        event = self._ring_event("keys.account_keys.destruction_cancelled", account_id, {})
        cancelled = await self._strict(event, lambda evidence: self._store.cancel_destruction(account_id, evidence))
        if cancelled is None:
            return await self.account_key_status(account_id)
        await self._ring_changed(account_id, "destruction_cancelled")
        return await self._status(cancelled)

    async def root_key_status(self) -> tuple[str, list[RootKeyUsage]]:
        keks, peppers = await self._store.root_key_usage()
        current = self._root.current_key_id
        ids = dict.fromkeys([current, *self._root.key_ids, *sorted(keks), *sorted(peppers)])
        return current, [
            RootKeyUsage(kid, kid == current, keks.get(kid, 0), peppers.get(kid, 0)) for kid in ids
        ]

    async def run_maintenance(self, batch: int = 100) -> MaintenanceReport:
        """Due destructions, due rotations, one batch of root-key rewrapping. Safe on many replicas at once."""
        now = self._now()
        destroyed = 0
        for account_id in await self._store.due_destructions(now, batch):
            if await self._destroy(account_id, now):
                destroyed += 1
        rotated = 0
        period = int(self._rotation_period.total_seconds())
        for ring in await self._store.due_rotations(now, period, batch):
            try:
                await self.rotate_account_key(ring.account_id, "scheduled")
                rotated += 1
            except DomainError as err:
                _LOG.warning("scheduled rotation of account %d failed: %s", ring.account_id, err.reason)
        rewrapped, remaining = await self._rewrap_root_batch()
        return MaintenanceReport(rotated, destroyed, rewrapped, remaining)

    # -- key notices -------------------------------------------------------------------------------------------

    def forget_account(self, account_id: int) -> None:
        """Drop what this process caches about an account's keys (on a notice from another replica)."""
        self._rings.pop(account_id)
        self._keks.pop_where(lambda k: k[0] == account_id)

    def forget_all(self) -> None:
        self._rings.clear()
        self._keks.clear()

    def on_notice(self, notice: KeyNotice) -> None:
        if notice.kind == ACCOUNT_KEYS_CHANGED:
            self.forget_account(notice.account_id)

    # -- internals: API keys ----------------------------------------------------------------------------------

    async def _own_key(self, caller: Caller, key_id: str) -> ApiKeyRecord:
        """One of the caller's own keys; NOT_FOUND for anyone else's (no oracle across users or accounts)."""
        if not valid_key_id(key_id):
            raise ApiKeyNotFound()
        record = await self._store.api_key(key_id)
        if record is None or record.account_id != caller.account_id or record.user_id != caller.user_id:
            raise ApiKeyNotFound()
        return record

    async def _calling_key(self, caller: Caller) -> ApiKeyRecord | None:
        """The API key the caller authenticated with (None for sessions); it must still be active."""
        if not caller.api_key_id:
            return None
        record = await self._store.api_key(caller.api_key_id)
        if record is None or record.account_id != caller.account_id or not record.active(self._now()):
            raise ApiKeyInactive("the API key you call with is no longer active")
        return record

    async def _pepper(self, pepper_id: str | None) -> tuple[str, bytes]:
        kid = pepper_id or self._root.current_key_id
        pepper = self._peppers.get(kid)
        if pepper is None:
            kid, pepper = await self._root.derive_secret(PEPPER_INFO, kid)
            self._peppers[kid] = pepper
        return kid, pepper

    async def _revoked(
        self, key_ids: Sequence[str], account_id: int, change: str, why: str, *, user_id: int,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        if not key_ids:
            return
        await self._notices.publish(KeyNotice(API_KEYS_CHANGED, account_id, tuple(key_ids), change))
        for key_id in key_ids:
            await self._audit.record(
                new_event(
                    self._name, f"keys.api_key.{change}", resource_type="api_key", resource_id=key_id,
                    account_id=account_id, details={"user_id": str(user_id), "reason": why, **(extra or {})},
                )
            )

    def _key_event(self, action: str, record: ApiKeyRecord, details: Mapping[str, str]) -> event_pb2.Event:
        return new_event(self._name, action, resource_type="api_key", resource_id=record.key_id,
                         account_id=record.account_id, details=details)

    async def _verify_failed(
        self, key_id: str, account_id: int, failure: str, reason: str = InvalidCredentials.reason,
        client_address: str = "",
    ) -> None:
        details = {"failure": failure}
        if client_address:
            details["client_address"] = client_address[:64]
        await self._audit.record(
            new_event(
                self._name,
                "keys.api_key.verify_failed",
                outcome=event_pb2.OUTCOME_DENIED if failure == "address_not_allowed" else event_pb2.OUTCOME_FAILURE,
                resource_type="api_key" if key_id else "",
                resource_id=key_id,
                error_reason=reason,
                account_id=account_id or None,
                details=details,
            )
        )

    async def _best_effort(self, what: str, call: Awaitable[Any]) -> None:
        # Bounded: a slow or absent Redis/database must not fail or stall authentication.
        try:
            async with asyncio.timeout(0.5):
                await call
        except Exception as exc:
            _LOG.warning("API key %s failed: %s", what, type(exc).__name__)

    async def _strict(
        self, event: event_pb2.Event, action: Callable[[Callable[[], Awaitable[None]]], Awaitable[T]]
    ) -> T:
        """Run `action(evidence)` where `evidence()` stores `event` before the action commits (fail closed).
        When the action fails after the event may have been stored, a superseding failure event says so."""
        attempted = False

        async def evidence() -> None:
            nonlocal attempted
            attempted = True
            await self._audit.record_strict(event)

        try:
            return await action(evidence)
        except Exception as err:
            failed = event_pb2.Event()
            failed.CopyFrom(event)
            failed.event_id = new_event(self._name, event.action).event_id
            failed.outcome = event_pb2.OUTCOME_FAILURE
            failed.error_reason = getattr(err, "reason", "INTERNAL")
            failed.details.clear()
            if attempted:
                failed.details["supersedes_event_id"] = event.event_id
            await self._audit.record(failed)
            raise

    # -- internals: key rings -----------------------------------------------------------------------------------

    async def _ring(self, account_id: int, *, create: bool) -> AccountRing:
        check_account_id(account_id)
        ring = self._rings.get(account_id)
        if ring is not None:
            return ring
        return await self._single(("ring", account_id, create), lambda: self._load_ring(account_id, create))

    async def _load_ring(self, account_id: int, create: bool) -> AccountRing:
        ring = await self._store.ring(account_id)
        if ring is None:
            if not create:
                raise KeyVersionUnknown()
            now = self._now()
            wrapped = await self._root.wrap(new_key(), kek_aad(account_id, 1))
            ring, created = await self._store.create_first_kek(StoredKek(account_id, 1, wrapped, now))
            if created:
                await self._audit.record(
                    self._ring_event("keys.kek.created", account_id, {"version": "1", "root_key_id": wrapped.key_id})
                )
        self._rings.put(account_id, ring)
        return ring

    async def _current_kek(self, account_id: int) -> Kek:
        ring = await self._ring(account_id, create=True)
        ring.check_usable()
        return await self._kek(account_id, ring.current_version)

    async def _kek_for(self, account_id: int, blob: bytes) -> Kek:
        """The KEK version a blob names, after every check that can fail before any cryptography."""
        check_account_id(account_id)
        header = parse_blob(blob)
        check_blob_account(header, account_id)
        ring = await self._ring(account_id, create=False)
        ring.check_decrypt(header.version)
        return await self._kek(account_id, header.version)

    async def _kek(self, account_id: int, version: int) -> Kek:
        kek = self._keks.get((account_id, version))
        if kek is not None:
            return kek
        return await self._single(("kek", account_id, version), lambda: self._load_kek(account_id, version))

    async def _load_kek(self, account_id: int, version: int) -> Kek:
        stored = await self._store.kek_version(account_id, version)
        if stored is None:
            raise KeyVersionUnknown()
        if stored.wrapped is None:
            raise KeysDestroyed()
        try:
            raw = await self._root.unwrap(stored.wrapped, kek_aad(account_id, version))
        except (DecryptFailed, KeyVersionUnknown):
            # Not the caller's fault: the stored KEK or the root key configuration is wrong. INTERNAL.
            raise RuntimeError(
                f"stored KEK of account {account_id} version {version} does not unwrap under root key"
                f" {stored.wrapped.key_id!r}"
            ) from None
        kek = Kek.of(account_id, version, raw)
        self._keks.put((account_id, version), kek)
        return kek

    async def _status(self, ring: AccountRing) -> AccountStatus:
        versions = await self._store.kek_versions(ring.account_id)
        return AccountStatus(ring, versions, ring.next_rotation_time(self._rotation_period))

    async def _ring_changed(self, account_id: int, change: str) -> None:
        self.forget_account(account_id)
        await self._notices.publish(KeyNotice(ACCOUNT_KEYS_CHANGED, account_id, (), change))

    def _ring_event(self, action: str, account_id: int, details: Mapping[str, str]) -> event_pb2.Event:
        return new_event(self._name, action, resource_type="account_keys", resource_id=str(account_id),
                         account_id=account_id, details=details)

    async def _decrypt_failed(self, account_id: int, err: DomainError, action: str) -> None:
        await self._audit.record(
            new_event(
                self._name, action, outcome=event_pb2.OUTCOME_FAILURE, resource_type="account_keys",
                resource_id=str(account_id), error_reason=err.reason, account_id=account_id if account_id > 0 else None,
            )
        )

    async def _receipt_signer(self) -> ReceiptSigner:
        if self._signer is None or not self._signer.key_id.startswith(self._root.current_key_id + "."):
            root_id, seed = await self._root.derive_secret(RECEIPT_SIGNING_INFO)
            signer = receipt_signer(root_id, seed)
            await self._store.add_signing_key(signer.key_id, signer.public_bytes, self._now())
            self._signer = signer
        return self._signer

    async def _destroy(self, account_id: int, now: datetime) -> bool:
        signer = await self._receipt_signer()

        async def receipt(destroyed: list[tuple[int, bytes]], scheduled: datetime | None, requested_by: str) -> None:
            body = destruction_receipt(
                account_id=account_id, destroyed=destroyed, scheduled_time=scheduled, destroy_time=now,
                requested_by=requested_by, signing_key_id=signer.key_id,
            )
            event = self._ring_event("keys.account_keys.destroyed", account_id, {
                "receipt": body.decode(),
                "signature": base64.b64encode(signer.sign(body)).decode(),
                "signing_key_id": signer.key_id,
                "public_key": base64.b64encode(signer.public_bytes).decode(),
                "versions": ",".join(str(v) for v, _ in destroyed),
            })
            await self._audit.record_strict(event)

        try:
            done = await self._store.destroy(account_id, now, receipt)
        except Exception as exc:  # retried by the next maintenance run; nothing was destroyed
            _LOG.warning("destruction of account %d keys failed (%s); retrying later", account_id,
                         getattr(exc, "reason", type(exc).__name__))
            return False
        if done:
            await self._ring_changed(account_id, "destroyed")
        return done

    async def _rewrap_root_batch(self) -> tuple[int, int]:
        """Move one batch of KEKs wrapped under older root keys to the current one. Resumable by design:
        each run picks whatever is still under an old key. Returns (rewrapped, still remaining)."""
        current = self._root.current_key_id
        done = 0
        batch = await self._store.keks_to_rewrap(current, self._rewrap_batch)
        if not batch:  # the steady state: one indexed query, no counting
            return 0, 0
        for stored in batch:
            assert stored.wrapped is not None
            aad = kek_aad(stored.account_id, stored.version)
            try:
                raw = await self._root.unwrap(stored.wrapped, aad)
            except (KeyVersionUnknown, DecryptFailed):
                _LOG.error("root key %r is needed to rewrap account %d version %d but is not configured or wrong",
                           stored.wrapped.key_id, stored.account_id, stored.version)
                continue
            if await self._store.replace_wrapped(stored.account_id, stored.version, stored.wrapped.key_id,
                                                 await self._root.wrap(raw, aad)):
                done += 1
        keks, _ = await self._store.root_key_usage()
        remaining = sum(n for kid, n in keks.items() if kid != current)
        if done:
            await self._audit.record(new_event(self._name, "keys.root_key.rewrapped", resource_type="root_key",
                                               resource_id=current,
                                               details={"rewrapped": str(done), "remaining": str(remaining)}))
        return done, remaining

    async def _single(self, key: Hashable, load: Callable[[], Awaitable[T]]) -> T:
        """Run `load` once for concurrent callers with the same `key`; a cancelled caller leaves it running."""
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(load())
            self._inflight[key] = task
            task.add_done_callback(functools.partial(_forget, self._inflight, key))
        result: T = await asyncio.shield(task)
        return result


def _key_details(record: ApiKeyRecord) -> dict[str, str]:
    limits = record.send_limits
    details = {
        "user_id": str(record.user_id),
        "name": record.name,
        "mode": "test" if record.test_mode else "live",
        "scopes": ",".join(record.scopes),
        "expire_time": record.expire_time.isoformat() if record.expire_time else "",
    }
    if record.allowed_cidrs:
        details["allowed_cidrs"] = ",".join(record.allowed_cidrs)
    if not limits.unlimited:
        details["send_limits"] = f"{limits.per_minute}/min,{limits.per_day}/day,{'+'.join(limits.countries) or '*'}"
    if record.created_by:
        details["created_by_key_id"] = record.created_by
    if record.limits_root:
        details["limits_key_id"] = record.limits_root
    return details


def _forget(inflight: dict[Hashable, asyncio.Task[Any]], key: Hashable, task: asyncio.Task[Any]) -> None:
    if inflight.get(key) is task:
        del inflight[key]
    if not task.cancelled():
        task.exception()  # mark retrieved: waiters may all have gone

