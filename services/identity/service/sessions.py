"""Interactive authentication use cases, one method per RPC: login (customers and staff), resolving a
session for the gateway, step-up and the caller's own sessions (one's TOTP, recovery codes and password:
factors.py). (How recent a privileged call's step-up must be is checked by the svckit guard of every service.)

Brute force: every login first counts a failure against the client address and, once the user is known,
against the user (atomically, in PostgreSQL), and only then checks anything; a full success clears the
user's count. Unknown users, locked users and wrong passwords all cost one argon2 verification and get
the same INVALID_CREDENTIALS answer."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sendsafe.audit.v1 import event_pb2
from services.identity.domain import credentials
from services.identity.domain.account_policy import (
    ENROLMENT_PERMISSIONS,
    REVOKE_REASON,
    AccountPolicy,
    NetworkNotAllowed,
)
from services.identity.domain.accounts import USERNAME_RE
from services.identity.domain.caller import Caller
from services.identity.domain.credentials import TOTP_RECORD, PasswordPolicy
from services.identity.domain.errors import (
    CodeChoice,
    InvalidCredentials,
    LoginThrottled,
    MfaRequired,
    SessionInvalid,
    SessionNotFound,
    SessionRequired,
)
from services.identity.domain.sessions import (
    AMR_OTP,
    AMR_PASSWORD,
    AMR_RECOVERY,
    STAFF,
    USER,
    Attempt,
    SecondFactorUse,
    SessionRecord,
    SessionSettings,
    Subject,
    ThrottlePolicy,
    TotpFactor,
    throttle_counters,
)
from services.identity.service import auth_metrics
from services.identity.service.ports import AccountPolicyStore, Auditor, AuthStore, PasswordHasher, Sealer
from svckit.audit import new_event
from svckit.envelope import aad_for
from svckit.netaddr import client_network

SERVICE = "identity"

Event = event_pb2.Event


def _now() -> datetime:
    return datetime.now(UTC)


class Sessions:
    def __init__(
        self,
        store: AuthStore,
        audit: Auditor,
        sealer: Sealer,
        hasher: PasswordHasher,
        *,
        platform_account_id: int,
        policy: PasswordPolicy,
        throttle: ThrottlePolicy,
        settings: SessionSettings,
        now: Callable[[], datetime] = _now,
        policies: AccountPolicyStore | None = None,
    ) -> None:
        self._store = store
        self._audit = audit
        self.sealer = sealer
        self.hasher = hasher
        self.platform_account_id = platform_account_id
        self.policy = policy
        self._throttle = throttle
        self.settings = settings
        self._now = now
        self._policies = policies  # customer accounts' sign-in policies (None: no account has one)

    # -- login ------------------------------------------------------------------------------------------

    async def login(
        self, caller: Caller, kind: str, username: str, password: str, totp_code: str = "", recovery_code: str = ""
    ) -> tuple[str, SessionRecord]:
        """(token, session) or InvalidCredentials / MfaRequired / LoginThrottled; counted by outcome."""
        label = STAFF if kind == STAFF else USER
        try:
            result = await self._login(caller, kind, username, password, totp_code, recovery_code)
        except Exception as exc:
            auth_metrics.LOGINS.labels(label, auth_metrics.outcome_of(exc)).inc()
            raise
        auth_metrics.LOGINS.labels(label, "success").inc()
        return result

    async def _login(
        self, caller: Caller, kind: str, username: str, password: str, totp_code: str, recovery_code: str
    ) -> tuple[str, SessionRecord]:
        if totp_code and recovery_code:
            raise CodeChoice("give a totp_code or a recovery_code, not both")
        address = caller.client_address
        t = self._throttle
        counters = throttle_counters(address, t)
        for scope, key, limit in counters:
            at = await self._store.count_failure(
                scope, key, max_failures=limit, window=t.address_window_seconds, lock=t.address_window_seconds
            )
            if at.locked:
                await self._audit.record(
                    self._login_event(None, kind, event_pb2.OUTCOME_DENIED, LoginThrottled.reason, {"failure": scope})
                )
                raise LoginThrottled(
                    f"too many failed logins from this {scope}; try again later",
                    retry_after_seconds=str(t.address_window_seconds),
                )
        subject = await self._store.find_subject(kind, username, self.platform_account_id) if USERNAME_RE.fullmatch(
            username
        ) else None
        if subject is None or not subject.enabled or not subject.password_hash:
            await self.hasher.verify(None, password)  # the same cost as a wrong password
            failure = "unknown_user" if subject is None else ("disabled" if not subject.enabled else "no_password")
            await self._audit.record(
                self._login_event(subject, kind, event_pb2.OUTCOME_FAILURE, InvalidCredentials.reason,
                                  {"failure": failure})
            )
            raise InvalidCredentials()
        attempt = await self._count(subject)
        if attempt.locked:
            await self.hasher.verify(None, password)
            await self._failed(subject, attempt, "locked")
            raise InvalidCredentials()
        if not await self.hasher.verify(subject.password_hash, password):
            await self._failed(subject, attempt, "bad_password")
            raise InvalidCredentials()

        policy = await self.account_policy(subject)
        if not policy.allows_address(address):
            # After the password, so only someone who knows it learns that the account limits networks.
            await self._audit.record(
                self._login_event(subject, kind, event_pb2.OUTCOME_DENIED, NetworkNotAllowed.reason,
                                  {"failure": "network", "network": client_network(address)})
            )
            raise NetworkNotAllowed("the account does not allow sign-in from this network")
        factor = await self._store.totp_factor(subject.kind, subject.id)
        use: SecondFactorUse | None = None
        amr = [AMR_PASSWORD]
        mfa_time = None
        if subject.is_staff or (factor is not None and factor.confirmed):
            if not totp_code and not recovery_code:
                await self._audit.record(
                    self._login_event(subject, kind, event_pb2.OUTCOME_FAILURE, MfaRequired.reason,
                                      {"failure": "mfa_required", "failures": str(attempt.failures)})
                )
                raise MfaRequired("this account needs a second factor: send totp_code or recovery_code")
            found = await self._second_factor(subject, factor, totp_code, recovery_code)
            if found is None:
                await self._failed(subject, attempt, "bad_second_factor")
                raise InvalidCredentials()
            use, method = found
            amr.append(method)
            mfa_time = self._now()

        now = self._now()
        lifetime = self.settings.staff_lifetime_seconds if subject.is_staff else self.settings.lifetime_seconds
        session = SessionRecord(
            id=credentials.new_session_id(),
            subject_kind=subject.kind,
            subject_id=subject.id,
            account_id=subject.account_id,
            amr=tuple(amr),
            mfa_time=mfa_time,
            client_address=address,
            user_agent=caller.user_agent,
            create_time=now,
            expire_time=policy.session_expiry(now, now + timedelta(seconds=lifetime)),
            last_seen_time=now,
            enrolment_only=policy.restricts(mfa_time is not None),
        )
        token = credentials.new_session_token()
        if not await self._store.create_session(session, credentials.session_token_hash(token), use, subject.key):
            # Another request consumed this TOTP step or recovery code first (replay).
            await self._failed(subject, attempt, "second_factor_replayed")
            raise InvalidCredentials()
        await self._store.forgive([(scope, key) for scope, key, _ in counters])
        if self.hasher.needs_rehash(subject.password_hash):
            await self._store.rehash_password(
                subject.kind, subject.id, subject.password_hash, await self.hasher.hash(password)
            )
        details = {"amr": ",".join(amr), "session_id": session.id}
        await self._audit.record(self._login_event(subject, kind, event_pb2.OUTCOME_SUCCESS, "", details))
        if use is not None and use.recovery_hash is not None:
            await self._recovery_used(subject, session.id)
        return token, session

    async def _count(self, subject: Subject) -> Attempt:
        t = self._throttle
        return await self._store.count_failure(
            "subject", subject.key, max_failures=t.max_failures, window=t.window_seconds, lock=t.lock_seconds
        )

    async def _failed(self, subject: Subject, attempt: Attempt, failure: str) -> None:
        failures = attempt.failures
        kind = subject.kind
        await self._audit.record(
            self._login_event(subject, kind, event_pb2.OUTCOME_FAILURE, InvalidCredentials.reason,
                              {"failure": failure, "failures": str(failures)})
        )
        if failures == self._throttle.max_failures:
            auth_metrics.LOCKOUTS.labels(STAFF if kind == STAFF else USER).inc()
            ev = self._login_event(subject, kind, event_pb2.OUTCOME_SUCCESS, "",
                                   {"failures": str(failures), "lock_seconds": str(self._throttle.lock_seconds)})
            ev.action = "auth.lockout"
            await self._audit.record(ev)

    async def _second_factor(
        self, subject: Subject, factor: TotpFactor | None, totp_code: str, recovery_code: str
    ) -> tuple[SecondFactorUse, str] | None:
        """What to consume if the code is right (the store makes the consumption atomic), else None."""
        if recovery_code:
            if not credentials.normalize_recovery_code(recovery_code):
                return None  # not ASCII, or nothing but punctuation: a wrong code
            return SecondFactorUse(recovery_hash=credentials.recovery_code_hash(recovery_code)), AMR_RECOVERY
        if factor is None:
            return None
        secret = await self.secret(subject, factor)
        step = credentials.matching_step(secret, totp_code)
        if step is None:
            return None
        return SecondFactorUse(totp_step=step, confirm=not factor.confirmed), AMR_OTP

    async def secret(self, subject: Subject, factor: TotpFactor) -> str:
        aad = aad_for(factor.account_id, TOTP_RECORD, subject.key)
        return (await self.sealer.decrypt(factor.account_id, aad, factor.secret_blob)).decode("ascii")

    async def _recovery_used(self, subject: Subject, session_id: str) -> None:
        left = await self._store.recovery_codes_left(subject.kind, subject.id)
        ev = self.subject_event("auth.recovery_code.use", subject, {"remaining": str(left), "session_id": session_id})
        await self._audit.record(ev)

    def _login_event(
        self, subject: Subject | None, kind: str, outcome: int, reason: str, details: dict[str, str]
    ) -> Event:
        ev = new_event(SERVICE, "auth.login", outcome=outcome, error_reason=reason, resource_type="session",
                       details={"directory": kind, **details})
        _actor(ev, subject)
        if subject is not None:
            ev.resource.id = details.get("session_id", "")
        return ev

    def subject_event(self, action: str, subject: Subject, details: dict[str, str]) -> Event:
        ev = new_event(SERVICE, action, resource_type=subject.kind, resource_id=str(subject.id), details=details)
        _actor(ev, subject)
        return ev

    # -- the gateway's Bearer scheme --------------------------------------------------------------------

    async def resolve(self, token: str, client_address: str = "") -> tuple[SessionRecord, Subject]:
        if not token.startswith(credentials.SESSION_TOKEN_PREFIX) or len(token) > 256:
            raise SessionInvalid("the session is not valid")
        session = await self._store.resolve_session(credentials.session_token_hash(token), self.settings.idle_seconds)
        if session is None:
            raise SessionInvalid("the session is not valid (expired, idle or revoked)")
        subject = await self._store.get_subject(session.subject_kind, session.subject_id, self.platform_account_id)
        if subject is None or not subject.enabled:
            raise SessionInvalid("the session's user is no longer active")
        return await self._governed(session, subject, client_address)

    async def account_policy(self, subject: Subject) -> AccountPolicy:
        """The sign-in policy of the subject's account (staff: none, theirs is the platform's own)."""
        if subject.is_staff or self._policies is None:
            return AccountPolicy()
        return await self._policies.account_policy(subject.account_id)

    async def _governed(
        self, session: SessionRecord, subject: Subject, client_address: str
    ) -> tuple[SessionRecord, Subject]:
        """The session and subject as the account's policy lets this use see them: ended past the account's
        lifetime, refused from outside its networks (where it logged in or where it is used now), holding only
        what enrolling a second factor needs while one is required and none was verified on it."""
        policy = await self.account_policy(subject)
        if policy.outlived(session.create_time, self._now()):
            await self._store.revoke_session(subject.kind, subject.id, session.id, REVOKE_REASON)
            raise SessionInvalid("the session is not valid (the account's session lifetime has passed)")
        if not (policy.allows_address(client_address) and policy.allows_address(session.client_address)):
            raise NetworkNotAllowed("the account does not allow its sessions to be used from this network")
        restricted = policy.restricts(session.mfa_time is not None)
        session = dataclasses.replace(
            session, expire_time=policy.session_expiry(session.create_time, session.expire_time),
            enrolment_only=restricted,
        )
        if restricted:
            subject = dataclasses.replace(subject, permissions=subject.permissions & ENROLMENT_PERMISSIONS)
        return session, subject

    # -- step-up (RFC 9470; a privileged RPC's guard checks how recent it is) ----------------------------

    async def step_up(self, caller: Caller, totp_code: str, recovery_code: str) -> datetime:
        try:
            when = await self._step_up(caller, totp_code, recovery_code)
        except Exception as exc:
            auth_metrics.STEP_UPS.labels(auth_metrics.outcome_of(exc)).inc()
            raise
        auth_metrics.STEP_UPS.labels("success").inc()
        return when

    async def _step_up(self, caller: Caller, totp_code: str, recovery_code: str) -> datetime:
        session, subject = await self.me(caller)
        if bool(totp_code) == bool(recovery_code):
            raise CodeChoice("give a totp_code or a recovery_code")
        attempt = await self._count(subject)
        factor = await self._store.totp_factor(subject.kind, subject.id)
        found = None
        if not attempt.locked and (factor is not None and factor.confirmed):
            found = await self._second_factor(subject, factor, totp_code, recovery_code)
        when = None
        if found is not None:
            use, method = found
            when = await self._store.step_up(session.id, subject.kind, subject.id, use, method, subject.key)
        if when is None:
            await self._audit.record(
                new_event(SERVICE, "auth.step_up", outcome=event_pb2.OUTCOME_FAILURE,
                          error_reason=InvalidCredentials.reason, resource_type="session", resource_id=session.id,
                          details={"failures": str(attempt.failures)})
            )
            if attempt.failures == self._throttle.max_failures:
                await self._failed(subject, attempt, "bad_second_factor")
            raise InvalidCredentials()
        await self._audit.record(
            new_event(SERVICE, "auth.step_up", resource_type="session", resource_id=session.id,
                      details={"amr": found[1] if found else ""})
        )
        if found is not None and found[0].recovery_hash is not None:
            await self._recovery_used(subject, session.id)
        return when

    # -- the caller's own sessions ----------------------------------------------------------------------

    async def me(self, caller: Caller) -> tuple[SessionRecord, Subject]:
        """The calling session and its subject; self-service needs an interactive session (a leaked API key
        must not be able to change a password, a second factor or anyone's sessions)."""
        if not caller.session_id:
            raise SessionRequired("this needs a session: log in with POST /v1/auth/login")
        session = await self._store.get_session(caller.session_id)
        kind = STAFF if caller.staff else USER
        if session is None or session.subject_kind != kind or session.subject_id != caller.user_id:
            raise SessionInvalid("the session is not valid")
        subject = await self._store.get_subject(kind, caller.user_id, self.platform_account_id)
        if subject is None or not subject.enabled:
            raise SessionInvalid("the session's user is no longer active")
        return session, subject

    async def logout(self, caller: Caller) -> None:
        session, subject = await self.me(caller)
        await self._store.revoke_session(subject.kind, subject.id, session.id, "logout")
        await self._revoked([session.id], "logout")

    async def list_sessions(self, caller: Caller) -> tuple[str, list[SessionRecord]]:
        session, subject = await self.me(caller)
        return session.id, await self._store.list_sessions(subject.kind, subject.id)

    async def revoke_session(self, caller: Caller, session_id: str) -> None:
        _, subject = await self.me(caller)
        if not await self._store.revoke_session(subject.kind, subject.id, session_id, "revoked_by_owner"):
            raise SessionNotFound("no such live session")
        await self._revoked([session_id], "revoked_by_owner")

    async def revoke_other_sessions(self, caller: Caller) -> int:
        session, subject = await self.me(caller)
        n = await self._store.revoke_sessions(subject.kind, subject.id, "revoked_by_owner", keep=session.id)
        await self._audit.record(
            new_event(SERVICE, "auth.session.revoke", resource_type="session", resource_id="*",
                      details={"scope": "all_others", "count": str(n), "kept": session.id})
        )
        return n

    async def _revoked(self, ids: list[str], reason: str) -> None:
        for sid in ids:
            await self._audit.record(
                new_event(SERVICE, "auth.session.revoke", resource_type="session", resource_id=sid,
                          details={"reason": reason})
            )

    # -- the caller's password, entered again (used by Factors) ------------------------------------------

    async def check_password(self, subject: Subject, password: str) -> None:
        """The caller's password, entered again: counted like a login (a wrong one, and any while locked, is
        a failure toward the lockout) and answered like one."""
        attempt = await self._count(subject)
        ok = (not attempt.locked) and await self.hasher.verify(subject.password_hash, password)
        if not ok:
            await self._failed(subject, attempt, "bad_password")
            raise InvalidCredentials()


def _actor(ev: Event, subject: Subject | None) -> None:
    """Login calls arrive anonymously: the subject (once known) is the actor; nobody, when unknown."""
    if subject is None:
        ev.actor.type = "anonymous"
        ev.actor.id = ""
        ev.actor.account_id = 0
        return
    ev.actor.type = "staff" if subject.is_staff else "user"
    ev.actor.id = str(subject.id)
    ev.actor.account_id = subject.account_id
