"""Identity use cases, one method per RPC: get the caller's account, look up a user, create an account, and
the ClickSend sub-account endpoints (create, list, get, update, delete, regenerate the API key).

Sub-account management is defence in depth on top of the gateway's permission check: the target must be
in the caller's account, and every create, change, re-key, password reset and delete passes the delegation
rule (`domain.subaccounts.delegate`: the target ends up with no more than the actor holds, restrictions are
inherited and never lifted by someone under them, the main user is changed only by itself). Every change is
recorded before it commits (fail closed) and refusals are recorded as DENIED."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from sendsafe.audit.v1 import event_pb2
from services.identity.domain.accounts import (
    USERNAME_RE,
    Account,
    AccountDetails,
    AccountSettings,
    Currency,
    User,
    check_balance,
    check_email,
    check_name,
    check_phone,
    check_username,
    new_account,
)
from services.identity.domain.caller import Caller
from services.identity.domain.credentials import PasswordPolicy
from services.identity.domain.errors import (
    MissingRequiredFields,
    PrincipalRequired,
    SubaccountNotFound,
    UserDisabled,
    UserLookupInvalid,
    UsernameInvalid,
    UserNotFound,
)
from services.identity.domain.flags import FLAG_NAMES
from services.identity.domain.subaccounts import (
    NewSubaccount,
    SubaccountChanges,
    check_flag,
    check_notes,
    delegate,
    delegate_senders,
)
from services.identity.service.ports import Auditor, Balances, IdentityStore, Keys, PasswordHasher
from svckit.audit import new_event
from svckit.errors import (
    DomainError,
    PermissionDenied,
    Unauthenticated,
)
from svckit.paging import PageWindow, page_window
from svckit.senders import senders_summary

SERVICE = "identity"


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
    password: str = ""
    timezone: str = ""  # validated by the caller (sign-up); the platform's default when empty


@dataclass(frozen=True)
class SubaccountInput:
    """A create or update request as given: None = not given. Flags are the raw 0/1 integers."""

    api_username: str | None = None
    password: str | None = None
    email: str | None = None
    phone_number: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    notes: str | None = None
    flags: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SubaccountPage:
    window: PageWindow
    total: int
    users: list[User]


class Accounts:
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
        keys: Keys | None = None,
        hasher: PasswordHasher | None = None,
        policy: PasswordPolicy | None = None,
    ) -> None:
        self._store = store
        self._keys = keys
        self._hasher = hasher
        self._policy = policy or PasswordPolicy()
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

    async def account_owners(self, account_id: int) -> list[User]:
        """Who security notifications about the account go to: its main user (messaging emails them)."""
        if account_id <= 0:
            raise UserLookupInvalid("give an account_id")
        return await self._store.account_owners(account_id)

    async def users_after(self, account_id: int, after_user_id: int, page_size: int) -> tuple[list[User], int]:
        """One page of the account's users by id for its export (messaging), and the id to continue after
        (0: that was the last page)."""
        if account_id <= 0 or after_user_id < 0:
            raise UserLookupInvalid("give an account_id (and a user id to continue after)")
        limit = min(max(page_size, 0) or 100, 500)
        users = await self._store.users_after(account_id, after_user_id, limit)
        return users, (users[-1].id if len(users) == limit else 0)

    async def create_account(
        self, req: CreateAccountInput, also: Callable[[Account, User], Awaitable[None]] | None = None
    ) -> tuple[Account, User]:
        """Create an account and its main user, all or nothing, with the audit event recorded
        before the transaction commits: when the audit log cannot take it, nothing is created. `also` runs
        before the commit too, after that event (staff's transparency events for an account they open)."""
        stored: list[event_pb2.Event] = []

        async def evidence(account: Account, user: User) -> None:
            ev = self._created_event(account, user)
            stored.append(ev)
            await self._audit.record_strict(ev, timeout=self._strict_timeout)
            if also is not None:
                await also(account, user)

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
                default_timezone=req.timezone or self._default_timezone,
            )
            password_hash = None
            if req.password:
                assert self._hasher is not None
                self._policy.check(req.password, identifiers=(new.api_username, new.email))
                password_hash = await self._hasher.hash(req.password)
            return await self._store.create_account(new, evidence, password_hash)
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

    # -- sub-accounts (ClickSend /v3/subaccounts) ---------------------------------------------------------

    async def _caller(self, caller: Caller) -> User:
        """The calling user: enabled, and a customer (staff have no sub-accounts)."""
        if not caller.account_id or not caller.user_id or caller.staff:
            raise PrincipalRequired("managing sub-accounts needs an authenticated customer user")
        found = await self._store.get_user(caller.user_id)
        if found is None or found[1].account_id != caller.account_id or not found[1].enabled:
            raise UserDisabled("this user is disabled")
        return found[1]

    async def _target(self, actor: User, subaccount_id: int) -> tuple[Account, User]:
        found = await self._store.get_user(subaccount_id) if subaccount_id > 0 else None
        if found is None or found[1].account_id != actor.account_id:
            raise SubaccountNotFound("Subaccount not found.")  # another account's user is not even named
        return found

    @contextlib.asynccontextmanager
    async def _evidence(self, action: str, resource_id: str = "") -> AsyncIterator[None]:
        """Record a refused or failed change (DENIED for permission problems, FAILURE otherwise)."""
        try:
            yield
        except DomainError as err:
            denied = isinstance(err, PermissionDenied | Unauthenticated)
            await self._audit.record(
                new_event(
                    SERVICE, action,
                    outcome=event_pb2.OUTCOME_DENIED if denied else event_pb2.OUTCOME_FAILURE,
                    error_reason=err.reason, resource_type="subaccount", resource_id=resource_id,
                )
            )
            raise

    def _event(self, action: str, user: User, details: dict[str, str] | None = None) -> event_pb2.Event:
        return new_event(SERVICE, action, resource_type="subaccount", resource_id=str(user.id), details=details)

    async def _strict(self, ev: event_pb2.Event) -> None:
        await self._audit.record_strict(ev, timeout=self._strict_timeout)

    def _flags(self, raw: dict[str, int]) -> dict[str, bool]:
        return {name: check_flag(name, value) for name, value in raw.items()}

    async def _password_hash(self, password: str, username: str, email: str) -> str:
        assert self._hasher is not None
        self._policy.check(password, identifiers=(username, email))
        return await self._hasher.hash(password)

    async def create_subaccount(self, caller: Caller, req: SubaccountInput) -> tuple[User, str]:
        """The new sub-account and its first API key (the only time the key is shown)."""
        async with self._evidence("subaccount.create"):
            actor = await self._caller(caller)
            missing = [f for f in ("api_username", "password", "email") if not getattr(req, f)]
            if missing:
                raise MissingRequiredFields(f"missing required fields: {', '.join(missing)}", fields=",".join(missing))
            assert req.api_username and req.password and req.email
            flags = delegate(actor, None, self._flags(req.flags))
            account = await self._account_of(actor)
            email = check_email(req.email)
            new = NewSubaccount(
                account_id=actor.account_id,
                api_username=check_username(req.api_username),
                email=email,
                phone_number=check_phone(req.phone_number or "", account.country),
                first_name=check_name(req.first_name or "", "first_name", required=False),
                last_name=check_name(req.last_name or "", "last_name", required=False),
                notes=check_notes(req.notes),
                flags=flags,
                allowed_senders=actor.allowed_senders,  # a sender limit is inherited (delegate_senders)
            )
            password_hash = await self._password_hash(req.password, new.api_username, email)
            issued: list[str] = []

            async def before_commit(user: User) -> None:
                await self._strict(self._event("subaccount.create", user, _flag_details(user)))
                assert self._keys is not None
                _, api_key = await self._keys.issue(account.id, user.id, "subaccount", account.test_mode)
                issued.append(api_key)

            user = await self._store.create_subaccount(new, password_hash, before_commit)
            return user, issued[0]

    async def _account_of(self, user: User) -> Account:
        found = await self._store.get_user(user.id)
        assert found is not None
        return found[0]

    async def list_subaccounts(self, caller: Caller, page: int, limit: int) -> SubaccountPage:
        actor = await self._caller(caller)
        window = page_window(page, limit)
        total, users = await self._store.list_users(actor.account_id, window.offset, window.limit)
        return SubaccountPage(window, total, users)

    async def get_subaccount(self, caller: Caller, subaccount_id: int) -> User:
        actor = await self._caller(caller)
        return (await self._target(actor, subaccount_id))[1]

    async def update_subaccount(self, caller: Caller, subaccount_id: int, req: SubaccountInput) -> User:
        async with self._evidence("subaccount.update", str(subaccount_id)):
            actor = await self._caller(caller)
            account, target = await self._target(actor, subaccount_id)
            resulting = delegate(actor, target, self._flags(req.flags))
            flags = resulting if req.flags else None
            email = check_email(req.email) if req.email is not None else None
            changes = SubaccountChanges(
                email=email,
                phone_number=_maybe(req.phone_number, lambda v: check_phone(v, account.country)),
                first_name=_maybe(req.first_name, lambda v: check_name(v, "first_name", required=False)),
                last_name=_maybe(req.last_name, lambda v: check_name(v, "last_name", required=False)),
                notes=check_notes(req.notes),
                set_notes=req.notes is not None,
                flags=flags,
                password_hash=(
                    await self._password_hash(req.password, target.api_username, email or target.email)
                    if req.password is not None else None
                ),
            )

            async def before_commit(user: User) -> None:
                details = {"fields": ",".join(changes.changed_fields())}
                if flags is not None:
                    details.update(_flag_details(user))
                await self._strict(self._event("subaccount.update", user, details))

            user = await self._store.update_user(target.id, changes, before_commit)
            if user is None:
                raise SubaccountNotFound("Subaccount not found.")
            return user

    async def update_sender_limits(self, caller: Caller, subaccount_id: int, requested: list[str]) -> User:
        """Limit a sub-account to sender ids, or lift its limit (issue 21), under the delegation rule; the change is
        a subaccount.update event (fields=allowed_senders) recorded before it commits."""
        async with self._evidence("subaccount.update", str(subaccount_id)):
            actor = await self._caller(caller)
            _, target = await self._target(actor, subaccount_id)
            senders = delegate_senders(actor, target, requested)

            async def before_commit(user: User) -> None:
                await self._strict(self._event("subaccount.update", user, {
                    "fields": "allowed_senders", "allowed_senders": senders_summary(senders) or "any"}))

            user = await self._store.set_allowed_senders(target.id, target.account_id, senders, before_commit)
            if user is None:
                raise SubaccountNotFound("Subaccount not found.")
            return user

    async def delete_subaccount(self, caller: Caller, subaccount_id: int) -> None:
        """The user is gone: its API keys are revoked first (keys service), then the user and its sessions."""
        async with self._evidence("subaccount.delete", str(subaccount_id)):
            actor = await self._caller(caller)
            _, target = await self._target(actor, subaccount_id)
            delegate(actor, target)
            if target.is_main:
                raise PermissionDenied("the main user cannot be deleted", reason="MAIN_USER_PROTECTED")
            assert self._keys is not None
            revoked = await self._keys.revoke_user_keys(target.account_id, target.id, reason="user_deleted")
            ev = self._event("subaccount.delete", target, {"api_keys_revoked": str(revoked)})
            if not await self._store.delete_user(target.id, lambda: self._strict(ev)):
                raise SubaccountNotFound("Subaccount not found.")

    async def regenerate_api_key(self, caller: Caller, subaccount_id: int) -> str:
        """A new key; every other key of the user is revoked at once (the gateway drops cached
        verifications on the keys service's notice, or within its bounded cache time)."""
        async with self._evidence("subaccount.regen_api_key", str(subaccount_id)):
            actor = await self._caller(caller)
            account, target = await self._target(actor, subaccount_id)
            delegate(actor, target)
            assert self._keys is not None
            key_id, api_key = await self._keys.issue(account.id, target.id, "regenerated", account.test_mode)
            revoked = await self._keys.revoke_user_keys(account.id, target.id, keep_key_id=key_id, reason="regenerated")
            await self._strict(
                self._event(
                    "subaccount.regen_api_key", target, {"api_key_id": key_id, "api_keys_revoked": str(revoked)}
                )
            )
            return api_key


def _maybe(value: str | None, check: Callable[[str], str]) -> str | None:
    return None if value is None else check(value)


def _flag_details(user: User) -> dict[str, str]:
    details = {"flags_on": ",".join(n for n in FLAG_NAMES if getattr(user.flags, n))}
    if user.allowed_senders:  # tags as they are, numbers only counted
        details["allowed_senders"] = senders_summary(user.allowed_senders)
    return details
