"""Interactive authentication use cases, one method per RPC: login (customers and staff), resolving a
session for the gateway, the caller's own sessions, TOTP enrolment, recovery codes, step-up and password
change. (How recent a privileged call's step-up must be is checked by the svckit guard of every service.)

Brute force: every login first counts a failure against the client address and, once the user is known,
against the user (atomically, in PostgreSQL), and only then checks anything; a full success clears the
user's count. Unknown users, locked users and wrong passwords all cost one argon2 verification and get
the same INVALID_CREDENTIALS answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sendsafe.audit.v1 import event_pb2
from sendsafe.context.v1 import principal_pb2
from services.identity import credentials
from services.identity.credentials import Hasher, PasswordPolicy
from services.identity.domain import (
    AMR_OTP,
    AMR_PASSWORD,
    AMR_RECOVERY,
    STAFF,
    USER,
    USERNAME_RE,
    Attempt,
    InvalidCredentials,
    LoginThrottled,
    MfaAlreadyEnrolled,
    MfaCodeInvalid,
    MfaNotEnrolled,
    MfaNotPending,
    MfaRequired,
    SessionInvalid,
    SessionRecord,
    SessionRequired,
    StaffMfaMandatory,
    Subject,
    ThrottlePolicy,
    throttle_counters,
)
from services.identity.store import SecondFactorUse, TotpFactor
from svckit import context as callctx
from svckit.audit import new_event
from svckit.envelope import aad_for
from svckit.errors import InvalidArgument, NotFound

SERVICE = "identity"
TOTP_RECORD = "totp_secret"
Event = event_pb2.Event


class SessionNotFound(NotFound):
    reason = "SESSION_NOT_FOUND"


class CodeChoice(InvalidArgument):
    reason = "ONE_SECOND_FACTOR"


class AuthStore(Protocol):  # the parts of PgIdentityStore these use cases need
    async def find_subject(self, kind: str, username: str, platform_account_id: int) -> Subject | None: ...
    async def get_subject(self, kind: str, subject_id: int, platform_account_id: int) -> Subject | None: ...
    async def count_failure(self, scope: str, key: str, *, max_failures: int, window: int, lock: int) -> Attempt: ...
    async def forgive(self, counters: list[tuple[str, str]]) -> None: ...
    async def totp_factor(self, kind: str, subject_id: int) -> TotpFactor | None: ...
    async def create_session(
        self, session: SessionRecord, token_hash: bytes, use: SecondFactorUse | None, subject_key: str
    ) -> bool: ...
    async def rehash_password(self, kind: str, subject_id: int, old_hash: str, new_hash: str) -> None: ...
    async def recovery_codes_left(self, kind: str, subject_id: int) -> int: ...
    async def resolve_session(self, token_hash: bytes, idle_seconds: int) -> SessionRecord | None: ...
    async def get_session(self, session_id: str) -> SessionRecord | None: ...
    async def list_sessions(self, kind: str, subject_id: int) -> list[SessionRecord]: ...
    async def revoke_session(self, kind: str, subject_id: int, session_id: str, reason: str) -> bool: ...
    async def revoke_sessions(self, kind: str, subject_id: int, reason: str, keep: str | None = None) -> int: ...
    async def step_up(
        self, session_id: str, kind: str, subject_id: int, use: SecondFactorUse, amr: str, subject_key: str
    ) -> datetime | None: ...
    async def put_pending_totp(self, kind: str, subject_id: int, account_id: int, blob: bytes) -> bool: ...
    async def confirm_totp(
        self, kind: str, subject_id: int, step: int, recovery_hashes: list[bytes],
        before_commit: Callable[[], Awaitable[None]],
    ) -> bool: ...
    async def remove_totp(self, kind: str, subject_id: int, before_commit: Callable[[], Awaitable[None]]) -> bool: ...
    async def replace_recovery_codes(
        self, kind: str, subject_id: int, hashes: list[bytes], before_commit: Callable[[], Awaitable[None]]
    ) -> None: ...
    async def set_password(
        self, kind: str, subject_id: int, password_hash: str, *, revoke_except: str | None
    ) -> int: ...


class Auditor(Protocol):
    async def record(self, event: Event) -> None: ...
    async def record_strict(self, event: Event, timeout: float = ...) -> None: ...


class Sealer(Protocol):  # svckit.envelope.Envelope
    async def encrypt(self, account_id: int, aad: bytes, plaintext: bytes) -> bytes: ...
    async def decrypt(self, account_id: int, aad: bytes, blob: bytes) -> bytes: ...


@dataclass(frozen=True)
class SessionSettings:
    lifetime_seconds: int = 12 * 3600
    staff_lifetime_seconds: int = 8 * 3600
    idle_seconds: int = 3600
    step_up_max_age_seconds: int = 300
    totp_issuer: str = "SendSafe"
    audit_strict_timeout: float = 5.0


@dataclass(frozen=True)
class Enrollment:
    otpauth_uri: str
    secret: str
    qr_png: bytes


def _now() -> datetime:
    return datetime.now(UTC)


class Sessions:
    def __init__(
        self,
        store: AuthStore,
        audit: Auditor,
        sealer: Sealer,
        hasher: Hasher,
        *,
        platform_account_id: int,
        policy: PasswordPolicy,
        throttle: ThrottlePolicy,
        settings: SessionSettings,
        now: Callable[[], datetime] = _now,
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

    # -- login ------------------------------------------------------------------------------------------

    async def login(
        self, kind: str, username: str, password: str, totp_code: str = "", recovery_code: str = ""
    ) -> tuple[str, SessionRecord]:
        """(token, session) or InvalidCredentials / MfaRequired / LoginThrottled."""
        if totp_code and recovery_code:
            raise CodeChoice("give a totp_code or a recovery_code, not both")
        p = callctx.principal()
        address = p.client_address if p is not None else ""
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
            user_agent=p.user_agent if p is not None else "",
            create_time=now,
            expire_time=now + timedelta(seconds=lifetime),
            last_seen_time=now,
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
        secret = await self._secret(subject, factor)
        step = credentials.matching_step(secret, totp_code)
        if step is None:
            return None
        return SecondFactorUse(totp_step=step, confirm=not factor.confirmed), AMR_OTP

    async def _secret(self, subject: Subject, factor: TotpFactor) -> str:
        aad = aad_for(factor.account_id, TOTP_RECORD, subject.key)
        return (await self.sealer.decrypt(factor.account_id, aad, factor.secret_blob)).decode("ascii")

    async def _recovery_used(self, subject: Subject, session_id: str) -> None:
        left = await self._store.recovery_codes_left(subject.kind, subject.id)
        ev = self._subject_event("auth.recovery_code.use", subject, {"remaining": str(left), "session_id": session_id})
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

    def _subject_event(self, action: str, subject: Subject, details: dict[str, str]) -> Event:
        ev = new_event(SERVICE, action, resource_type=subject.kind, resource_id=str(subject.id), details=details)
        _actor(ev, subject)
        return ev

    # -- the gateway's Bearer scheme --------------------------------------------------------------------

    async def resolve(self, token: str) -> tuple[SessionRecord, Subject]:
        if not token.startswith(credentials.SESSION_TOKEN_PREFIX) or len(token) > 256:
            raise SessionInvalid("the session is not valid")
        session = await self._store.resolve_session(credentials.session_token_hash(token), self.settings.idle_seconds)
        if session is None:
            raise SessionInvalid("the session is not valid (expired, idle or revoked)")
        subject = await self._store.get_subject(session.subject_kind, session.subject_id, self.platform_account_id)
        if subject is None or not subject.enabled:
            raise SessionInvalid("the session's user is no longer active")
        return session, subject

    # -- step-up (RFC 9470; a privileged RPC's guard checks how recent it is) ----------------------------

    async def step_up(self, totp_code: str, recovery_code: str) -> datetime:
        session, subject = await self._me()
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

    async def _me(self) -> tuple[SessionRecord, Subject]:
        """The calling session and its subject; self-service needs an interactive session (a leaked API key
        must not be able to change a password, a second factor or anyone's sessions)."""
        p = callctx.principal()
        if p is None or p.auth_method != principal_pb2.AUTH_METHOD_SESSION or not p.session_id:
            raise SessionRequired("this needs a session: log in with POST /v1/auth/login")
        session = await self._store.get_session(p.session_id)
        kind = STAFF if p.staff else USER
        if session is None or session.subject_kind != kind or session.subject_id != p.user_id:
            raise SessionInvalid("the session is not valid")
        subject = await self._store.get_subject(kind, p.user_id, self.platform_account_id)
        if subject is None or not subject.enabled:
            raise SessionInvalid("the session's user is no longer active")
        return session, subject

    async def logout(self) -> None:
        session, subject = await self._me()
        await self._store.revoke_session(subject.kind, subject.id, session.id, "logout")
        await self._revoked([session.id], "logout")

    async def list_sessions(self) -> tuple[str, list[SessionRecord]]:
        session, subject = await self._me()
        return session.id, await self._store.list_sessions(subject.kind, subject.id)

    async def revoke_session(self, session_id: str) -> None:
        _, subject = await self._me()
        if not await self._store.revoke_session(subject.kind, subject.id, session_id, "revoked_by_owner"):
            raise SessionNotFound("no such live session")
        await self._revoked([session_id], "revoked_by_owner")

    async def revoke_other_sessions(self) -> int:
        session, subject = await self._me()
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

    # -- TOTP and recovery codes ------------------------------------------------------------------------

    async def start_totp(self, password: str) -> Enrollment:
        """Enrolment needs the password again: a stolen session alone must not bind an authenticator of the
        thief's (that would lock the owner out of step-up and MFA login)."""
        _, subject = await self._me()
        await self._check_password(subject, password)
        factor = await self._store.totp_factor(subject.kind, subject.id)
        if factor is not None and (factor.confirmed or subject.is_staff):
            raise MfaAlreadyEnrolled("a second factor is already enrolled; remove it first")
        return await self._new_factor(subject)

    async def _new_factor(self, subject: Subject) -> Enrollment:
        secret = credentials.new_totp_secret()
        account = subject.account_id
        blob = await self.sealer.encrypt(account, aad_for(account, TOTP_RECORD, subject.key), secret.encode("ascii"))
        if not await self._store.put_pending_totp(subject.kind, subject.id, account, blob):
            raise MfaAlreadyEnrolled("a second factor is already enrolled; remove it first")
        uri = credentials.totp_uri(secret, subject.username, self.settings.totp_issuer)
        await self._audit.record(self._subject_event("auth.mfa.enrol_start", subject, {"method": "totp"}))
        return Enrollment(uri, secret, credentials.qr_png(uri))

    async def confirm_totp(self, code: str) -> list[str]:
        _, subject = await self._me()
        code = credentials.require_code_format(code)
        factor = await self._store.totp_factor(subject.kind, subject.id)
        if factor is None or factor.confirmed:
            raise MfaNotPending("start an enrolment first (POST /v1/auth/mfa/totp)")
        step = credentials.matching_step(await self._secret(subject, factor), code)
        if step is None:
            raise MfaCodeInvalid("that code does not match; check the authenticator's clock")
        codes = credentials.new_recovery_codes()
        ev = self._subject_event("auth.mfa.enrol", subject, {"method": "totp", "recovery_codes": str(len(codes))})
        if not await self._store.confirm_totp(
            subject.kind, subject.id, step, [credentials.recovery_code_hash(c) for c in codes],
            lambda: self._audit.record_strict(ev, timeout=self.settings.audit_strict_timeout),
        ):
            raise MfaCodeInvalid("that code was already used; wait for the next one")
        return codes

    async def remove_totp(self) -> None:
        _, subject = await self._me()
        if subject.is_staff:
            raise StaffMfaMandatory("staff cannot be without a second factor")
        ev = self._subject_event("auth.mfa.remove", subject, {"method": "totp"})
        if not await self._store.remove_totp(
            subject.kind, subject.id, lambda: self._audit.record_strict(ev, timeout=self.settings.audit_strict_timeout)
        ):
            raise MfaNotEnrolled("no second factor is enrolled")

    async def regenerate_recovery_codes(self) -> list[str]:
        _, subject = await self._me()
        factor = await self._store.totp_factor(subject.kind, subject.id)
        if factor is None or not factor.confirmed:
            raise MfaNotEnrolled("enrol a second factor first")
        codes = credentials.new_recovery_codes()
        ev = self._subject_event("auth.recovery_codes.regenerate", subject, {"count": str(len(codes))})
        await self._store.replace_recovery_codes(
            subject.kind, subject.id, [credentials.recovery_code_hash(c) for c in codes],
            lambda: self._audit.record_strict(ev, timeout=self.settings.audit_strict_timeout),
        )
        return codes

    # -- password ---------------------------------------------------------------------------------------

    async def _check_password(self, subject: Subject, password: str) -> None:
        """The caller's password, entered again: counted like a login (a wrong one, and any while locked, is
        a failure toward the lockout) and answered like one."""
        attempt = await self._count(subject)
        ok = (not attempt.locked) and await self.hasher.verify(subject.password_hash, password)
        if not ok:
            await self._failed(subject, attempt, "bad_password")
            raise InvalidCredentials()

    async def change_password(self, current: str, new: str) -> int:
        session, subject = await self._me()
        await self._check_password(subject, current)
        self.policy.check(new, identifiers=(subject.username, subject.email))
        new_hash = await self.hasher.hash(new)
        n = await self._store.set_password(subject.kind, subject.id, new_hash, revoke_except=session.id)
        await self._audit.record(
            new_event(SERVICE, "auth.password.change", resource_type=subject.kind, resource_id=str(subject.id),
                      details={"sessions_revoked": str(n)})
        )
        return n


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
