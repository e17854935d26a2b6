"""Closing an account (issue 15), orchestrated here because identity owns accounts: one method per RPC (close,
cancel, get; staff cancel goes through `Staff`) and the sweep that drives every closure to its end.

Close (main user, privileged, the account's name typed back): in one transaction the account becomes `closing`,
every session of it ends, the owner's address is kept sealed under the *platform's* key (the account's own keys
fail during the window and are gone after it: the receipt email needs it; erased with the closure row once sent)
and the main user's second factor moves under the platform's key too (so the main user can still log in with
password + second factor during the window, to see or cancel the closure: the only thing it then holds). The other
immediate steps follow at once and are retried by the sweep while a peer is down (so no account is left
half-closed silently): every API key revoked, sends stopped (scheduled and queued messages cancelled and refunded),
the account's keys scheduled for destruction after ACCOUNT_CLOSURE_PENDING_SECONDS.

Cancel (main user or staff, until the keys are destroyed): keys enabled again and sends resumed; revoked API keys
and ended sessions stay revoked. The sweep and cancel take the account's closure lock, so a cancel never races a
step.

At the end of the window the keys service destroys the keys (crypto-shred, signed receipt); the sweep then purges
keys' rows (getting the receipt), messaging's, audit's configuration (events stay), emails the receipt, and deletes
identity's rows last. Every step is an audit event (`account.closure.<step>`)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sendsafe.audit.v1 import event_pb2
from services.identity.domain.caller import Caller
from services.identity.domain.closure import (
    OWNER_EMAIL_RECORD,
    Closure,
    ClosureState,
    check_cancel,
    check_close,
    receipt_reference,
)
from services.identity.domain.credentials import TOTP_RECORD
from services.identity.domain.errors import AccountClosing, AccountNotClosing, PrincipalRequired
from services.identity.domain.sessions import USER
from services.identity.service.ports import Auditor, ClosurePeers, ClosureStore, Sealer
from svckit.audit import new_event
from svckit.envelope import aad_for

SERVICE = "identity"
_LOG = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


class Closures:
    def __init__(
        self, store: ClosureStore, peers: ClosurePeers, audit: Auditor, sealer: Sealer, *, platform_account_id: int,
        pending_seconds: int, audit_strict_timeout: float = 5.0, now: Callable[[], datetime] = _now,
    ) -> None:
        self._store = store
        self._peers = peers
        self._audit = audit
        self._sealer = sealer
        self._platform = platform_account_id
        self._pending = pending_seconds
        self._timeout = audit_strict_timeout
        self._now = now

    def _event(
        self, action: str, account_id: int, details: dict[str, str] | None = None, by: str = ""
    ) -> event_pb2.Event:
        return new_event(SERVICE, action, resource_type="account", resource_id=str(account_id), account_id=account_id,
                         details={**(details or {}), **({"by": by} if by else {})})

    # -- the main user's RPCs ------------------------------------------------------------------------------

    async def get(self, caller: Caller) -> Closure:
        if caller.account_id <= 0:
            raise PrincipalRequired("this call needs a signed-in user")
        closure = await self._store.closure(caller.account_id)
        return closure or Closure(caller.account_id, ClosureState.OPEN)

    async def close(self, caller: Caller, account_name: str) -> Closure:
        # The state first: a closing account's users cannot be opened any more (its keys refuse).
        closure = await self._store.closure(caller.account_id) if caller.account_id > 0 else None
        if closure is not None and closure.state is not ClosureState.OPEN:
            raise AccountClosing("the account is already closing")
        found = await self._store.get_user(caller.user_id) if caller.user_id > 0 and not caller.staff else None
        if found is None or found[0].id != caller.account_id:
            raise PrincipalRequired("this call needs a signed-in user")
        account, user = found
        check_close(ClosureState.OPEN, user.is_main, account_name, account.name)
        platform = self._platform
        email_ct = await self._sealer.encrypt(
            platform, aad_for(platform, OWNER_EMAIL_RECORD, str(account.id)), user.email.encode())
        totp = await self._move_totp(account.id, platform)
        destroy_time = self._now() + timedelta(seconds=self._pending)
        by = f"user:{user.id}"
        event = self._event("account.closure.requested", account.id, {
            "destroy_time": destroy_time.isoformat(), "pending_window_seconds": str(self._pending)}, by)

        async def evidence() -> None:  # privileged: stored before the account starts closing (fail closed)
            await self._audit.record_strict(event, timeout=self._timeout)

        if not await self._store.start_closure(account.id, by, destroy_time, email_ct, totp, evidence):
            raise AccountClosing("the account is already closing")
        await self._audit.record(self._event("account.closure.sessions_ended", account.id))
        await self.advance(account.id)
        return await self._store.closure(account.id) or Closure(account.id, ClosureState.CLOSING)

    async def cancel(self, caller: Caller) -> Closure:
        if caller.account_id <= 0 or caller.staff:
            raise PrincipalRequired("this call needs a signed-in user")
        return await self.cancel_for(caller.account_id, f"user:{caller.user_id}")

    async def cancel_for(
        self, account_id: int, by: str, evidence: Callable[[], Awaitable[None]] | None = None
    ) -> Closure:
        """Cancel the account's closure (its main user, or staff with `evidence` of their own)."""
        async with self._store.closure_lock(account_id, wait=True):
            closure = await self._store.closure(account_id)
            if closure is None:
                raise AccountNotClosing("no such account")
            check_cancel(closure.state)
            await self._peers.cancel_key_destruction(account_id)  # AccountClosed when the keys are gone
            await self._peers.resume_sends(account_id)
            totp = await self._move_totp(account_id, account_id)
            event = self._event("account.closure.cancelled", account_id, {}, by)

            async def stored() -> None:
                if evidence is not None:
                    await evidence()
                await self._audit.record_strict(event, timeout=self._timeout)

            if not await self._store.cancel_closure(account_id, totp, stored):
                raise AccountNotClosing("the account is not closing")
        return Closure(account_id, ClosureState.OPEN)

    async def _move_totp(self, account_id: int, to_account: int) -> tuple[int, int, bytes] | None:
        """The main user's second factor re-sealed under `to_account`'s key (the platform's while closing)."""
        found = await self._store.main_totp(account_id)
        if found is None or found[1] == to_account:
            return None
        user_id, sealed_under, blob = found
        key = f"{USER}:{user_id}"
        secret = await self._sealer.decrypt(sealed_under, aad_for(sealed_under, TOTP_RECORD, key), blob)
        return user_id, to_account, await self._sealer.encrypt(to_account, aad_for(to_account, TOTP_RECORD, key),
                                                              secret)

    # -- the sweep -----------------------------------------------------------------------------------------

    async def sweep(self, limit: int = 50) -> int:
        """Advance every closure in progress; returns the steps done. Idempotent; safe on many replicas."""
        done = 0
        for account_id in await self._store.closing_accounts(limit):
            done += await self.advance(account_id, wait=False)
        return done

    async def advance(self, account_id: int, *, wait: bool = True) -> int:
        """Do what is due for one closure, in order, stopping at the first step that fails (retried later)."""
        done = 0
        async with self._store.closure_lock(account_id, wait=wait) as locked:
            if not locked:
                return 0
            closure = await self._store.closure(account_id)
            for step in closure.next_steps(self._now()) if closure else []:
                try:
                    details = await self._run(step, account_id)
                except Exception as exc:  # a peer down: the sweep retries this step
                    _LOG.warning("closure of account %d: step %s failed (%s); retrying later", account_id, step,
                                 getattr(exc, "reason", type(exc).__name__))
                    break
                done += 1
                if step != "identity_purged":
                    await self._store.step_done(account_id, step, details.pop("_destroy_time", None))
                await self._audit.record(self._event(
                    "account.closed" if step == "identity_purged" else f"account.closure.{step}", account_id,
                    {k: str(v) for k, v in details.items()}))
        return done

    async def _run(self, step: str, account_id: int) -> dict[str, Any]:
        p = self._peers
        if step == "sessions_ended":
            return {"sessions": await self._store.end_sessions(account_id)}
        if step == "api_keys_revoked":
            return {"api_keys": await p.revoke_account_api_keys(account_id)}
        if step == "sends_stopped":
            return {"cancelled_messages": await p.stop_sends(account_id)}
        if step == "keys_scheduled":
            when = await p.schedule_key_destruction(account_id, self._pending)
            return {"_destroy_time": when} if when else {}
        if step == "keys_purged":
            await p.purge_keys(account_id)  # KEYS_NOT_DESTROYED until keys maintenance has destroyed them
            return {}
        if step == "messaging_purged":
            return {"rows": await p.purge_messaging(account_id)}
        if step == "audit_purged":
            return {"rows": await p.purge_audit(account_id)}
        if step == "receipt_sent":
            receipt = await p.purge_keys(account_id)
            sealed = await self._store.owner_email_ct(account_id)
            if sealed is None:
                return {"sent": "false"}
            to = (await self._sealer.decrypt(
                self._platform, aad_for(self._platform, OWNER_EMAIL_RECORD, str(account_id)), sealed)).decode()
            return {"sent": str(await p.send_receipt(account_id, to, receipt)).lower()}
        if step == "identity_purged":
            receipt = await p.purge_keys(account_id)
            reference = receipt_reference(receipt[0])
            return {"rows": await self._store.purge_account(account_id, reference), "receipt_sha256": reference}
        raise ValueError(f"unknown closure step {step!r}")
