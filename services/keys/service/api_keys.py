"""API-key use cases: customers manage their own keys; the other services issue, verify, check and revoke them."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

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
from services.keys.domain.envelope import MAX_BATCH
from services.keys.domain.errors import (
    ApiKeyInactive,
    ApiKeyNotFound,
    BatchTooLarge,
    InvalidCredentials,
    KeyVersionUnknown,
)
from services.keys.domain.paging import page_size, page_token, parse_page_token
from services.keys.domain.restrictions import SendLimits
from services.keys.service.audit_trail import strict
from services.keys.service.ports import (
    ApiKeyStore,
    Audit,
    LastUsed,
    NoNotices,
    Notices,
    RootKeyProvider,
    Sealer,
    utcnow,
)
from svckit.audit import new_event
from svckit.errors import InvalidArgument
from svckit.keyevents import API_KEYS_CHANGED, KeyNotice
from svckit.senders import merge_senders, senders_summary, split_numbers

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeakReport:
    revoked: list[str]
    inactive: list[str]
    not_keys: int


class ApiKeyService:
    """Customer API keys: create/list/get/revoke/roll for the calling user; issue/verify/check/revoke for the other
    services; leak reports; the periodic last-used write-back."""

    def __init__(
        self,
        store: ApiKeyStore,
        last_used: LastUsed,
        root: RootKeyProvider,
        audit: Audit,
        *,
        rules: KeyRules | None = None,
        service_name: str = "keys",
        now: Callable[[], datetime] = utcnow,
        notices: Notices | None = None,
    ) -> None:
        self._store = store
        self._last_used = last_used
        self._root = root
        self._audit = audit
        self._rules = rules or KeyRules(declared_permissions=frozenset())
        self._name = service_name
        self._now = now
        self._notices: Notices = notices or NoNotices()
        self._peppers: dict[str, bytes] = {}
        self._sealer: Sealer | None = None

    def use_sealer(self, sealer: Sealer) -> None:
        """The account keys that seal the numbers of keys' sender limits (the KeyRingService, built after this)."""
        self._sealer = sealer

    def now(self) -> datetime:
        return self._now()

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
        stored = await self._sealed(record)
        await strict(self._audit, self._name, event, lambda evidence: self._store.insert_api_key(stored, evidence))
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
        rows = [await self._opened(r) for r in rows[:limit]]
        return rows, page_token(rows[-1].create_time, rows[-1].key_id) if more else ""

    async def list_account_api_keys(
        self, account_id: int, requested_size: int, token: str
    ) -> tuple[list[ApiKeyRecord], str]:
        """Every key of an account, any user's, active or not (metadata: the account export reads them)."""
        if account_id <= 0:
            raise InvalidArgument("give an account_id", reason="ACCOUNT_ID_REQUIRED")
        limit = page_size(requested_size)
        rows = await self._store.list_api_keys(
            account_id, None, show_inactive=True, now=self._now(), after=parse_page_token(token), limit=limit + 1,
        )
        more = len(rows) > limit
        rows = [await self._opened(r) for r in rows[:limit]]
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
        stored = await self._sealed(new)
        await strict(
            self._audit, self._name, event, lambda evidence: self._store.roll_api_key(old, old_until, stored, evidence)
        )
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
        await strict(self._audit, self._name, event, lambda evidence: self._store.insert_api_key(record, evidence))
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
        record = await self._opened(record)
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

    async def revoke_account_api_keys(self, account_id: int, reason: str) -> list[str]:
        """Revoke every key of every user of the account now (it is closing); queued events, as above."""
        why = check_revoke_user_request(account_id, None, "", reason)
        revoked = await self._store.revoke_user_keys(account_id, None, "", self._now())
        await self._revoked(revoked, account_id, "revoked", why, user_id=0)
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

    # -- internals: API keys ----------------------------------------------------------------------------------

    async def _own_key(self, caller: Caller, key_id: str) -> ApiKeyRecord:
        """One of the caller's own keys; NOT_FOUND for anyone else's (no oracle across users or accounts)."""
        if not valid_key_id(key_id):
            raise ApiKeyNotFound()
        record = await self._store.api_key(key_id)
        if record is None or record.account_id != caller.account_id or record.user_id != caller.user_id:
            raise ApiKeyNotFound()
        return await self._opened(record)

    async def _calling_key(self, caller: Caller) -> ApiKeyRecord | None:
        """The API key the caller authenticated with (None for sessions); it must still be active."""
        if not caller.api_key_id:
            return None
        record = await self._store.api_key(caller.api_key_id)
        if record is None or record.account_id != caller.account_id or not record.active(self._now()):
            raise ApiKeyInactive("the API key you call with is no longer active")
        return await self._opened(record)

    async def _sealed(self, record: ApiKeyRecord) -> ApiKeyRecord:
        """The stored form: a sender limit's numbers (they may be the customer's own phone numbers) sealed under
        the account's key, bound to the key id; its alpha tags stay in clear."""
        tags, numbers = split_numbers(record.send_limits.senders)
        if not numbers:
            return record
        if self._sealer is None:
            raise RuntimeError("the keys service was built without a sealer for sender limits")
        blob, _ = await self._sealer.encrypt(record.account_id, json.dumps(numbers).encode(),
                                             sender_limit_context(record.key_id))
        return replace(record, send_limits=replace(record.send_limits, senders=tags), sealed_numbers=blob)

    async def _opened(self, record: ApiKeyRecord) -> ApiKeyRecord:
        """A stored record with its sender limit whole again. A blob that no longer opens fails the call (the
        key's limit cannot be known, so it is not used), never widening it."""
        if record.sealed_numbers is None:
            return record
        if self._sealer is None:
            raise RuntimeError("the keys service was built without a sealer for sender limits")
        plain, _ = await self._sealer.decrypt(record.account_id, record.sealed_numbers,
                                              sender_limit_context(record.key_id))
        senders = merge_senders(record.send_limits.senders, json.loads(plain))
        return replace(record, send_limits=replace(record.send_limits, senders=senders), sealed_numbers=None)

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


def sender_limit_context(key_id: str) -> dict[str, str]:
    """The encryption context a key's sealed sender-limit numbers are bound to (also for keys' own rewrap)."""
    return {"record": "keys.api_key.allowed_senders", "key_id": key_id}


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
    if limits.senders:  # tags as they are, numbers only counted (a number is never in an audit record)
        details["allowed_senders"] = senders_summary(limits.senders)
    if record.created_by:
        details["created_by_key_id"] = record.created_by
    if record.limits_root:
        details["limits_key_id"] = record.limits_root
    return details
