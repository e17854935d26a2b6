"""Identity use cases, one method per RPC: get the caller's account, look up a user, create an account."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from sendsafe.audit.v1 import event_pb2
from services.identity.domain import (
    USERNAME_RE,
    Account,
    AccountDetails,
    AccountSettings,
    Currency,
    NewAccount,
    User,
    UserDisabled,
    UserLookupInvalid,
    UsernameInvalid,
    UserNotFound,
    check_balance,
    check_username,
    new_account,
)
from svckit.audit import new_event
from svckit.errors import DomainError

SERVICE = "identity"


class IdentityStore(Protocol):
    async def get_user(self, user_id: int) -> tuple[Account, User] | None: ...
    async def find_user(self, api_username: str) -> tuple[Account, User] | None: ...
    async def create_account(
        self, new: NewAccount, before_commit: Callable[[Account, User], Awaitable[None]]
    ) -> tuple[Account, User]: ...


class Balances(Protocol):
    async def get_balance(self, account_id: int) -> str: ...


class Auditor(Protocol):
    async def record(self, event: event_pb2.Event) -> None: ...
    async def record_strict(self, event: event_pb2.Event, timeout: float = ...) -> None: ...


@dataclass(frozen=True)
class CreateAccountInput:
    account_name: str
    api_username: str
    email: str
    phone_number: str
    first_name: str
    last_name: str
    country: str
    test_mode: bool


class Service:
    def __init__(
        self,
        store: IdentityStore,
        balances: Balances,
        audit: Auditor,
        *,
        currency: Currency,
        default_country: str,
        default_timezone: str,
        audit_strict_timeout: float = 5.0,
        account_settings: AccountSettings | None = None,
    ) -> None:
        self._store = store
        self._balances = balances
        self._audit = audit
        self._currency = currency
        self._default_country = default_country
        self._default_timezone = default_timezone
        self._strict_timeout = audit_strict_timeout
        self._settings = account_settings or AccountSettings()

    async def get_account(self, account_id: int, user_id: int) -> AccountDetails:
        """The account object for an authenticated principal (account and user from the gateway)."""
        found = await self._store.get_user(user_id)
        if found is None or found[1].account_id != account_id:
            raise UserNotFound("no such user in this account")
        account, user = found
        if not user.enabled:
            # The gateway should not have let a disabled user in; identity owns the truth.
            raise UserDisabled("this user is disabled")
        balance = check_balance(await self._balances.get_balance(account.id))
        return AccountDetails(account, user, balance, self._currency, self._settings)

    async def get_user(self, user_id: int = 0, api_username: str = "") -> tuple[Account, User]:
        """A user by id, or by api_username (ignoring case) when no id is given."""
        if user_id < 0 or (user_id == 0 and not api_username):
            raise UserLookupInvalid("give a user_id or an api_username")
        if user_id:
            found = await self._store.get_user(user_id)
        else:
            try:
                check_username(api_username)
            except UsernameInvalid:
                raise UserNotFound("no such user") from None
            found = await self._store.find_user(api_username)
        if found is None:
            raise UserNotFound("no such user")
        return found

    async def create_account(self, req: CreateAccountInput) -> tuple[Account, User]:
        """Create an account and its main user, all or nothing, with the audit event recorded
        before the transaction commits: when the audit log cannot take it, nothing is created."""
        stored: list[event_pb2.Event] = []

        async def evidence(account: Account, user: User) -> None:
            ev = self._created_event(account, user)
            stored.append(ev)
            await self._audit.record_strict(ev, timeout=self._strict_timeout)

        try:
            new = new_account(
                account_name=req.account_name,
                api_username=req.api_username,
                email=req.email,
                phone_number=req.phone_number,
                first_name=req.first_name,
                last_name=req.last_name,
                country=req.country,
                test_mode=req.test_mode,
                default_country=self._default_country,
                default_timezone=self._default_timezone,
            )
            return await self._store.create_account(new, evidence)
        except Exception as err:
            reason = err.reason if isinstance(err, DomainError) else "INTERNAL"
            failed = new_event(
                SERVICE,
                "account.create",
                outcome=event_pb2.OUTCOME_FAILURE,
                resource_type="account",
                error_reason=reason,
                details={"api_username": req.api_username} if USERNAME_RE.fullmatch(req.api_username) else {},
            )
            if stored:
                # The success event may still reach the log (it was queued or in flight) although the
                # transaction rolled back; this one, for the same account id, says it did not happen.
                failed.resource.id = stored[0].resource.id
                failed.actor.account_id = stored[0].actor.account_id
                failed.details["supersedes_event_id"] = stored[0].event_id
            await self._audit.record(failed)
            raise

    def _created_event(self, account: Account, user: User) -> event_pb2.Event:
        # No email or phone: the event names the objects, the identity database holds the details.
        # account_id puts the event in the new account's own audit feed (access transparency).
        return new_event(
            SERVICE,
            "account.create",
            resource_type="account",
            resource_id=str(account.id),
            account_id=account.id,
            details={
                "user_id": str(user.id),
                "api_username": user.api_username,
                "test_mode": str(account.test_mode).lower(),
            },
        )
