"""One's own authentication factors, on an interactive session, one method per RPC: TOTP enrolment and removal,
recovery codes and the password. Checking the password again counts like a login (`Sessions.check_password`)."""

from __future__ import annotations

from services.identity.domain import credentials
from services.identity.domain.caller import Caller
from services.identity.domain.credentials import TOTP_RECORD, Enrollment
from services.identity.domain.errors import (
    MfaAlreadyEnrolled,
    MfaCodeInvalid,
    MfaNotEnrolled,
    MfaNotPending,
    StaffMfaMandatory,
)
from services.identity.domain.sessions import USER, Subject
from services.identity.service.ports import Auditor, AuthStore
from services.identity.service.sessions import Sessions
from svckit.audit import new_event
from svckit.envelope import aad_for

SERVICE = "identity"


class Factors:
    def __init__(self, store: AuthStore, audit: Auditor, sessions: Sessions) -> None:
        self._store = store
        self._audit = audit
        self._sessions = sessions

    # -- TOTP and recovery codes ------------------------------------------------------------------------

    async def start_totp(self, caller: Caller, password: str) -> Enrollment:
        """Enrolment needs the password again: a stolen session alone must not bind an authenticator of the
        thief's (that would lock the owner out of step-up and MFA login)."""
        _, subject = await self._sessions.me(caller)
        await self._sessions.check_password(subject, password)
        factor = await self._store.totp_factor(subject.kind, subject.id)
        if factor is not None and (factor.confirmed or subject.is_staff):
            raise MfaAlreadyEnrolled("a second factor is already enrolled; remove it first")
        return await self._new_factor(subject)

    async def _new_factor(self, subject: Subject) -> Enrollment:
        secret = credentials.new_totp_secret()
        account = subject.account_id
        aad = aad_for(account, TOTP_RECORD, subject.key)
        blob = await self._sessions.sealer.encrypt(account, aad, secret.encode("ascii"))
        if not await self._store.put_pending_totp(subject.kind, subject.id, account, blob):
            raise MfaAlreadyEnrolled("a second factor is already enrolled; remove it first")
        uri = credentials.totp_uri(secret, subject.username, self._sessions.settings.totp_issuer)
        await self._audit.record(self._sessions.subject_event("auth.mfa.enrol_start", subject, {"method": "totp"}))
        return Enrollment(uri, secret, credentials.qr_png(uri))

    async def confirm_totp(self, caller: Caller, code: str) -> list[str]:
        _, subject = await self._sessions.me(caller)
        code = credentials.require_code_format(code)
        factor = await self._store.totp_factor(subject.kind, subject.id)
        if factor is None or factor.confirmed:
            raise MfaNotPending("start an enrolment first (POST /v1/auth/mfa/totp)")
        step = credentials.matching_step(await self._sessions.secret(subject, factor), code)
        if step is None:
            raise MfaCodeInvalid("that code does not match; check the authenticator's clock")
        codes = credentials.new_recovery_codes()
        ev = self._sessions.subject_event(
            "auth.mfa.enrol", subject, {"method": "totp", "recovery_codes": str(len(codes))}
        )
        if not await self._store.confirm_totp(
            subject.kind, subject.id, step, [credentials.recovery_code_hash(c) for c in codes],
            lambda: self._audit.record_strict(ev, timeout=self._sessions.settings.audit_strict_timeout),
        ):
            raise MfaCodeInvalid("that code was already used; wait for the next one")
        return codes

    async def remove_totp(self, caller: Caller) -> None:
        _, subject = await self._sessions.me(caller)
        if subject.is_staff:
            raise StaffMfaMandatory("staff cannot be without a second factor")
        ev = self._sessions.subject_event("auth.mfa.remove", subject, {"method": "totp"})
        if not await self._store.remove_totp(
            subject.kind, subject.id,
            lambda: self._audit.record_strict(ev, timeout=self._sessions.settings.audit_strict_timeout),
        ):
            raise MfaNotEnrolled("no second factor is enrolled")

    async def regenerate_recovery_codes(self, caller: Caller) -> list[str]:
        _, subject = await self._sessions.me(caller)
        factor = await self._store.totp_factor(subject.kind, subject.id)
        if factor is None or not factor.confirmed:
            raise MfaNotEnrolled("enrol a second factor first")
        codes = credentials.new_recovery_codes()
        ev = self._sessions.subject_event("auth.recovery_codes.regenerate", subject, {"count": str(len(codes))})
        await self._store.replace_recovery_codes(
            subject.kind, subject.id, [credentials.recovery_code_hash(c) for c in codes],
            lambda: self._audit.record_strict(ev, timeout=self._sessions.settings.audit_strict_timeout),
        )
        return codes

    # -- password ---------------------------------------------------------------------------------------

    # -- password ---------------------------------------------------------------------------------------

    async def change_password(self, caller: Caller, current: str, new: str) -> int:
        session, subject = await self._sessions.me(caller)
        await self._sessions.check_password(subject, current)
        # A user's email is sealed and not opened at login: asked for here, where the policy needs it.
        email = subject.email if subject.kind != USER else await self._store.user_email(subject.id)
        self._sessions.policy.check(new, identifiers=(subject.username, email))
        new_hash = await self._sessions.hasher.hash(new)
        n = await self._store.set_password(subject.kind, subject.id, new_hash, revoke_except=session.id)
        await self._audit.record(
            new_event(SERVICE, "auth.password.change", resource_type=subject.kind, resource_id=str(subject.id),
                      details={"sessions_revoked": str(n)})
        )
        return n
