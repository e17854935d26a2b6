"""Sign-up use cases, one method per RPC: open an account (self-service, or by staff for a customer), enter the
emailed code, and ask for a new one (rules in domain.signup).

The account is made by `Accounts.create_account` (the one account-creation path: validation, password policy,
sealed personal data, its strict audit event) in test mode; then a code goes to the main user's address through
messaging's email channel (`SignupMail`: messaging reads the address from identity, so it never travels from
here). Entering the code takes the account out of test mode; nothing else does. Every step is an audit event
with ids and network facts (the call context's client address; the network in details) -- never an email
address, a name or a code. A username already in use is 409 ALREADY_EXISTS, as ClickSend's create answers; the
email is not required to be unique (see README: Sign-up), so sign-up reveals nothing about who has an account
beyond usernames, which are public login names anyway; per-network throttling bounds probing for them. The
account is named after its username: account names are kept in clear like usernames, so a person's own name is
never put there (it goes to the main user's sealed first and last name)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sendsafe.audit.v1 import event_pb2
from services.identity.domain.accounts import Account, User, check_name, check_username, new_account
from services.identity.domain.caller import Caller
from services.identity.domain.credentials import PasswordPolicy
from services.identity.domain.errors import PasswordRejected, UsernameInvalid
from services.identity.domain.signup import (
    SIGNUP,
    STAFF_OPENED,
    PasswordRequired,
    SignupCodeInvalid,
    SignupPolicy,
    SignupThrottled,
    Verification,
    check_code,
    check_timezone,
    new_code,
    split_name,
    verification_email,
)
from services.identity.service.accounts import Accounts, CreateAccountInput
from services.identity.service.ports import Auditor, PasswordHasher, SignupMail, SignupStore, Throttle
from svckit.audit import new_event
from svckit.errors import DomainError
from svckit.netaddr import client_network

SERVICE = "identity"


@dataclass(frozen=True)
class SignupInput:
    name: str
    username: str
    email: str
    password: str
    country: str
    timezone: str = ""


@dataclass(frozen=True)
class Opened:
    """A new account, in test mode until its code is entered."""

    account: Account
    user: User
    email_sent: bool
    code_expire_time: datetime


class Signups:
    def __init__(
        self, accounts: Accounts, store: SignupStore, throttle: Throttle, mail: SignupMail, hasher: PasswordHasher,
        audit: Auditor, *, policy: SignupPolicy, password_policy: PasswordPolicy, default_country: str,
        default_timezone: str, audit_strict_timeout: float = 5.0, clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._accounts = accounts
        self._store = store
        self._throttle = throttle
        self._mail = mail
        self._hasher = hasher
        self._audit = audit
        self.policy = policy
        self._password_policy = password_policy
        self._default_country = default_country
        self._default_timezone = default_timezone
        self._strict_timeout = audit_strict_timeout
        self._now = clock or (lambda: datetime.now(UTC))

    # -- opening an account -------------------------------------------------------------------------------

    async def signup(self, caller: Caller, req: SignupInput) -> Opened:
        """Open an account and email its code. The request's shape is checked before anything is counted;
        then the caller's address and network are throttled before the password is hashed."""
        name = check_name(req.name, "name", required=True)
        check_username(req.username)  # before the account name made from it
        timezone = check_timezone(req.timezone, self._default_timezone)
        first, last = split_name(name)
        new = new_account(
            account_name=req.username, api_username=req.username, email=req.email, phone_number="",
            first_name=first, last_name=last, country=req.country, test_mode=True,
            default_country=self._default_country, default_timezone=timezone,
        )
        if not req.password:  # self-service needs one (create_account checks a given one against the policy)
            self._password_policy.check(req.password, identifiers=(new.api_username, new.email))
            raise PasswordRejected("a password is required", rule="min_length")
        await self._throttled(caller, SIGNUP, "identity.signup")
        account, user = await self._accounts.create_account(CreateAccountInput(
            account_name=new.account_name, api_username=new.api_username, email=new.email, phone_number="",
            first_name=new.first_name, last_name=new.last_name, country=new.country, test_mode=True,
            password=req.password, timezone=timezone,
        ))
        await self._audit.record(self._event("identity.signup", account.id, {"user_id": str(user.id), "origin": SIGNUP,
                                                                             **_network(caller)}))
        sent, expire = await self._first_code(account, user, SIGNUP)
        return Opened(account, user, sent, expire)

    async def open_for_customer(
        self, req: SignupInput, transparency: Callable[[Account, User], Awaitable[None]]
    ) -> Opened:
        """Staff open an account for a customer: no password (staff never know it: the customer sets it with the
        emailed code), test mode until then. `transparency` records staff's events in both feeds before the
        account is committed."""
        name = check_name(req.name, "name", required=True)
        check_username(req.username)
        timezone = check_timezone(req.timezone, self._default_timezone)
        first, last = split_name(name)
        account, user = await self._accounts.create_account(CreateAccountInput(
            account_name=req.username, api_username=req.username, email=req.email, phone_number="",
            first_name=first, last_name=last, country=req.country, test_mode=True, timezone=timezone,
        ), also=transparency)
        sent, expire = await self._first_code(account, user, STAFF_OPENED)
        return Opened(account, user, sent, expire)

    async def _first_code(self, account: Account, user: User, origin: str) -> tuple[bool, datetime]:
        code, expire = new_code(), self._now() + timedelta(seconds=self.policy.code_ttl_seconds)
        await self._store.start_verification(account.id, user.id, origin, await self._hasher.hash(code), expire)
        return await self._send(account.id, user.api_username, code, origin, 1), expire

    async def _send(self, account_id: int, username: str, code: str, origin: str, number: int) -> bool:
        subject, body = verification_email(username, code, self.policy.code_ttl_seconds,
                                           staff_opened=origin == STAFF_OPENED)
        details = {"code_number": str(number), "origin": origin}
        try:
            await self._mail.send(account_id, subject, body, f"signup-{account_id}-{number}")
        except DomainError as err:
            await self._audit.record(self._event("identity.signup.code_sent", account_id, details,
                                                 outcome=event_pb2.OUTCOME_FAILURE, reason=err.reason))
            return False
        await self._audit.record(self._event("identity.signup.code_sent", account_id, details))
        return True

    # -- the code -----------------------------------------------------------------------------------------

    async def verify(
        self, caller: Caller, username: str, code: str, password: str = ""
    ) -> tuple[Verification, datetime]:
        """Take the account out of test mode (and, for an account staff opened, set its password)."""
        code = check_code(code)
        try:
            username = check_username(username)
        except UsernameInvalid:
            raise SignupCodeInvalid("the code is wrong or no longer valid; ask for a new one") from None
        await self._throttled(caller, "signup_code", "identity.signup.verify")
        v = await self._store.verification(username)
        refused = self._refusal(v)
        if v is None or refused:
            await self._hasher.verify(None, code)  # the same cost whatever the reason
            await self._audit.record(self._event("identity.signup.verify", v.account_id if v else 0,
                                                 {"failure": refused or "no_pending_signup", **_network(caller)},
                                                 outcome=event_pb2.OUTCOME_FAILURE, reason=SignupCodeInvalid.reason))
            raise SignupCodeInvalid("the code is wrong or no longer valid; ask for a new one")
        # Counted before the hash is checked, so concurrent guesses cannot outrun the limit.
        attempts = await self._store.count_attempt(v.account_id)
        good = attempts <= self.policy.max_attempts and await self._hasher.verify(v.code_hash, code)
        if not good:
            details = {"failure": "wrong_code", "attempts": str(attempts), **_network(caller)}
            await self._audit.record(self._event("identity.signup.verify", v.account_id, details,
                                                 outcome=event_pb2.OUTCOME_FAILURE, reason=SignupCodeInvalid.reason))
            raise SignupCodeInvalid("the code is wrong or no longer valid; ask for a new one")
        password_hash = None
        if not v.has_password:
            if not password:
                await self._store.forgive_attempt(v.account_id)
                raise PasswordRequired("this account has no password yet: give the one you will log in with")
            found = await self._accounts.get_user(v.user_id)
            try:
                self._password_policy.check(password, identifiers=(v.username, found[1].email))
            except DomainError:
                await self._store.forgive_attempt(v.account_id)
                raise
            password_hash = await self._hasher.hash(password)

        async def evidence() -> None:
            details = {"user_id": str(v.user_id), "origin": v.origin, "attempts": str(attempts), **_network(caller)}
            if password_hash is not None:
                details["password_set"] = "true"  # noqa: S105 - a fact, not a password
            await self._audit.record_strict(self._event("identity.signup.verify", v.account_id, details),
                                            timeout=self._strict_timeout)

        verified = await self._store.complete(v.account_id, v.user_id, str(v.code_hash), password_hash, evidence)
        if verified is None:  # a concurrent entry used the code first
            raise SignupCodeInvalid("the code is wrong or no longer valid; ask for a new one")
        return v, verified

    def _refusal(self, v: Verification | None) -> str:
        if v is None:
            return "no_pending_signup"
        now = self._now()
        if v.verify_time is not None:
            return "already_verified"
        if v.code_expire_time is None or now >= v.code_expire_time:
            return "expired"
        if v.attempts >= self.policy.max_attempts:
            return "attempts_used"
        return "" if v.code_usable(now, self.policy) else "no_code"

    async def resend(self, caller: Caller, username: str) -> None:
        """A new code by email when the sign-up is pending and its limits allow; the same answer otherwise."""
        try:
            username = check_username(username)
        except UsernameInvalid:
            return
        await self._throttled(caller, "signup_code", "identity.signup.code_sent")
        v = await self._store.verification(username)
        if v is None:  # recorded (network facts only), answered as any other refusal
            await self._audit.record(self._event("identity.signup.code_sent", 0,
                                                 {"failure": "no_pending_signup", **_network(caller)},
                                                 outcome=event_pb2.OUTCOME_DENIED, reason="SIGNUP_RESEND_REFUSED"))
            return
        code, expire = new_code(), self._now() + timedelta(seconds=self.policy.code_ttl_seconds)
        number = await self._store.replace_code(
            v.account_id, await self._hasher.hash(code), expire, max_codes=self.policy.max_codes,
            interval_seconds=self.policy.resend_interval_seconds,
        ) if v.may_resend(self._now(), self.policy) else 0
        if not number:
            failure = "verified" if v.verify_time else ("codes_used" if v.codes_sent >= self.policy.max_codes
                                                        else "too_soon")
            await self._audit.record(self._event("identity.signup.code_sent", v.account_id,
                                                 {"failure": failure, **_network(caller)},
                                                 outcome=event_pb2.OUTCOME_DENIED, reason="SIGNUP_RESEND_REFUSED"))
            return
        await self._send(v.account_id, v.username, code, v.origin, number)

    # -- shared ---------------------------------------------------------------------------------------------

    async def _throttled(self, caller: Caller, scope: str, action: str) -> None:
        p = self.policy
        for counter, key, limit in p.counters(caller.client_address, scope):
            at = await self._throttle.count_failure(counter, key, max_failures=limit, window=p.window_seconds,
                                                    lock=p.window_seconds)
            if at.locked:
                await self._audit.record(self._event(action, 0, {"failure": counter, **_network(caller)},
                                                     outcome=event_pb2.OUTCOME_DENIED, reason=SignupThrottled.reason))
                raise SignupThrottled(f"too many sign-up requests from this {counter.rsplit('_', 1)[1]}; try later",
                                      retry_after_seconds=str(p.window_seconds))

    def _event(self, action: str, account_id: int, details: dict[str, str], *,
               outcome: int = event_pb2.OUTCOME_SUCCESS, reason: str = "") -> event_pb2.Event:
        # account_id puts the event in the new account's own feed; 0 (not known yet) leaves it to the platform's.
        return new_event(SERVICE, action, outcome=outcome, error_reason=reason, resource_type="account",
                         resource_id=str(account_id) if account_id else "", details=details,
                         account_id=account_id or None)


def _network(caller: Caller) -> dict[str, str]:
    return {"network": client_network(caller.client_address)} if caller.client_address else {}
