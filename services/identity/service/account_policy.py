"""An account's sign-in policy, one method per RPC: read it (every user of the account), replace it (the main
user; the guard checks the permission and the step-up). A change is audited before it commits, and applies to
existing sessions at once: those logged in from outside the new networks, or older than the new lifetime, are
revoked. How the policy governs logins and sessions is Sessions' (service/sessions.py), by the rules of
domain/account_policy.py."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from services.identity.domain.account_policy import (
    DEFAULT_MIN_SESSION_LIFETIME_SECONDS,
    REVOKE_REASON,
    AccountPolicy,
    check_not_locking_out,
    describe_change,
    new_policy,
    sessions_to_end,
)
from services.identity.domain.caller import Caller
from services.identity.domain.errors import PrincipalRequired
from services.identity.service.ports import AccountPolicyStore, Auditor
from svckit.audit import new_event

SERVICE = "identity"


def _now() -> datetime:
    return datetime.now(UTC)


class AccountPolicies:
    def __init__(
        self, store: AccountPolicyStore, audit: Auditor, *, audit_strict_timeout: float = 5.0,
        min_session_lifetime_seconds: int = DEFAULT_MIN_SESSION_LIFETIME_SECONDS,
        now: Callable[[], datetime] = _now,
    ) -> None:
        self._store = store
        self._audit = audit
        self._strict_timeout = audit_strict_timeout
        self.min_session_lifetime_seconds = min_session_lifetime_seconds
        self._now = now

    async def get(self, caller: Caller) -> AccountPolicy:
        return await self._store.account_policy(_account_of(caller))

    async def update(
        self, caller: Caller, require_second_factor: bool, allowed_networks: list[str], session_lifetime_seconds: int
    ) -> tuple[AccountPolicy, int]:
        """The policy now in force and how many sessions it ended."""
        account_id = _account_of(caller)
        policy = new_policy(require_second_factor, allowed_networks, session_lifetime_seconds,
                            min_session_lifetime_seconds=self.min_session_lifetime_seconds)
        check_not_locking_out(policy, caller.client_address)

        async def record(old: AccountPolicy, new: AccountPolicy) -> None:
            change = describe_change(old, new)
            ev = new_event(SERVICE, "account.policy.update", resource_type="account", resource_id=str(account_id),
                           details=change.details)
            await self._audit.record_strict(ev, timeout=self._strict_timeout)

        _, stored = await self._store.put_account_policy(account_id, policy, caller.user_id, record)
        live = await self._store.live_account_sessions(account_id)
        ended = await self._store.revoke_account_sessions(
            account_id, sessions_to_end(stored, live, self._now()), REVOKE_REASON
        )
        if ended:
            await self._audit.record(
                new_event(SERVICE, "auth.session.revoke", resource_type="session", resource_id="*",
                          details={"reason": REVOKE_REASON, "count": str(len(ended)), "sessions": ",".join(ended)})
            )
        return stored, len(ended)


def _account_of(caller: Caller) -> int:
    if not caller.account_id or not caller.user_id or caller.staff:
        raise PrincipalRequired("the account policy needs a user of the account")
    return caller.account_id
