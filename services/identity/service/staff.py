"""Staff directory use cases, one method per RPC: create a staff member (ops), change a role, and the two
explicit ways staff reach a customer's data. Staff log in through `Sessions.login(STAFF, ...)`.

Access transparency: every staff access to a customer's data writes two events before the data is
returned or changed (fail closed): one in the customer's own feed (actor type "staff", the stated reason)
and one in the platform feed (the platform account's, which security staff read with `audit.read`)."""

from __future__ import annotations

from services.identity.domain import credentials
from services.identity.domain.accounts import Account, User, check_email, check_name, check_username
from services.identity.domain.caller import Caller
from services.identity.domain.closure import Closure
from services.identity.domain.credentials import TOTP_RECORD, Enrollment
from services.identity.domain.errors import (
    AccountNotFound,
    OwnRoleChange,
    RoleNotGrantable,
    StaffNotFound,
    StaffOnly,
    SubaccountNotFound,
)
from services.identity.domain.sessions import STAFF
from services.identity.domain.staff import GRANTABLE_ROLES, NewStaff, StaffMember, check_reason, check_role
from services.identity.service.closure import Closures
from services.identity.service.ports import Auditor, StaffStore
from services.identity.service.sessions import Sessions
from services.identity.service.signup import Opened, SignupInput, Signups
from svckit.audit import new_event
from svckit.envelope import aad_for

SERVICE = "identity"


class Staff:
    def __init__(self, store: StaffStore, audit: Auditor, sessions: Sessions, closures: Closures | None = None,
                 signups: Signups | None = None) -> None:
        self._store = store
        self._signups = signups
        self._audit = audit
        self._sessions = sessions
        self._closures = closures
        self._timeout = sessions.settings.audit_strict_timeout

    async def create(self, username: str, email: str, display_name: str, role: str, password: str) -> NewStaff:
        username = check_username(username)
        email = check_email(email)
        display_name = check_name(display_name, "display_name", required=False)
        role = check_role(role)
        self._sessions.policy.check(password, identifiers=(username, email))
        password_hash = await self._sessions.hasher.hash(password)
        secret = credentials.new_totp_secret()
        codes = credentials.new_recovery_codes()
        platform = self._sessions.platform_account_id
        sealer = self._sessions.sealer

        async def seal(staff_id: int) -> bytes:
            aad = aad_for(platform, TOTP_RECORD, f"{STAFF}:{staff_id}")
            return await sealer.encrypt(platform, aad, secret.encode("ascii"))

        async def evidence(member: StaffMember) -> None:
            await self._audit.record_strict(
                new_event(SERVICE, "staff.create", resource_type="staff", resource_id=str(member.id),
                          account_id=platform, details={"username": member.username, "role": member.role}),
                timeout=self._timeout,
            )

        member = await self._store.create_staff(
            username, email, display_name, role, password_hash, seal,
            [credentials.recovery_code_hash(c) for c in codes], platform, evidence,
        )
        uri = credentials.totp_uri(secret, member.username, self._sessions.settings.totp_issuer + " Staff")
        return NewStaff(member, Enrollment(uri, secret, credentials.qr_png(uri)), codes)

    async def _me(self, caller: Caller) -> StaffMember:
        if not caller.staff:
            raise StaffOnly("this is for SendSafe staff")
        member = await self._store.get_staff(caller.user_id)
        if member is None or not member.active:
            raise StaffOnly("this is for SendSafe staff")
        return member

    async def change_role(self, caller: Caller, staff_id: int, role: str, reason: str) -> StaffMember:
        me = await self._me(caller)
        role = check_role(role)
        reason = check_reason(reason)
        if staff_id == me.id:
            raise OwnRoleChange("nobody changes their own role")
        target = await self._store.get_staff(staff_id)
        if target is None:
            raise StaffNotFound("no such staff member")
        grantable = GRANTABLE_ROLES[me.role]
        if role not in grantable or target.role not in grantable:
            raise RoleNotGrantable(f"a {me.role} cannot move a {target.role} to {role}")

        async def evidence(member: StaffMember) -> None:
            await self._audit.record_strict(
                new_event(SERVICE, "staff.role.change", resource_type="staff", resource_id=str(member.id),
                          details={"from": target.role, "to": member.role, "reason": reason}),
                timeout=self._timeout,
            )

        changed = await self._store.set_staff_role(staff_id, role, evidence)
        if changed is None:
            raise StaffNotFound("no such staff member")
        return changed

    async def get_customer_account(
        self, caller: Caller, account_id: int, reason: str) -> tuple[Account, list[tuple[User, bool]]]:
        me = await self._me(caller)
        reason = check_reason(reason)
        account = await self._store.get_account(account_id) if account_id > 0 else None
        if account is None:
            raise AccountNotFound("no such customer account")
        await self._transparency(me, account.id, "GetCustomerAccount", reason, {})
        return account, await self._store.account_users(account.id)

    async def set_customer_user_status(
        self, caller: Caller, account_id: int, user_id: int, active: bool, reason: str
    ) -> tuple[User, bool]:
        """The user after the change and whether it has a confirmed second factor."""
        me = await self._me(caller)
        reason = check_reason(reason)
        found = await self._store.get_user(user_id) if user_id > 0 else None
        if found is None or found[1].account_id != account_id:
            raise SubaccountNotFound("no such user in that account")

        async def evidence(user: User) -> None:
            await self._transparency(
                me, account_id, "SetCustomerUserStatus", reason,
                {"user_id": str(user.id), "active": str(active).lower()},
            )

        changed = await self._store.set_user_active(user_id, active, evidence)
        if changed is None:
            raise SubaccountNotFound("no such user in that account")
        return changed

    async def cancel_customer_closure(self, caller: Caller, account_id: int, reason: str) -> Closure:
        """Cancel a customer's account closure during its window (both feeds, before the account reopens)."""
        me = await self._me(caller)
        reason = check_reason(reason)
        if self._closures is None or account_id <= 0:
            raise AccountNotFound("no such customer account")
        return await self._closures.cancel_for(
            account_id, f"staff:{me.id}",
            lambda: self._transparency(me, account_id, "CancelCustomerAccountClosure", reason, {}))

    async def create_customer_account(self, caller: Caller, req: SignupInput, reason: str) -> Opened:
        """Open an account for a customer (no password: the customer sets it with the emailed code). Both feeds
        get the staff event before the account commits; the account's own `account.create` event comes first."""
        me = await self._me(caller)
        reason = check_reason(reason)
        if self._signups is None:
            raise StaffOnly("opening accounts is not wired in this identity")

        async def transparency(account: Account, user: User) -> None:
            await self._transparency(me, account.id, "CreateCustomerAccount", reason, {"user_id": str(user.id)})

        return await self._signups.open_for_customer(req, transparency)

    async def _transparency(
        self, me: StaffMember, account_id: int, operation: str, reason: str, extra: dict[str, str]
    ) -> None:
        """One event in the customer's feed, one in the platform feed; both stored before we go on."""
        details = {"operation": operation, "reason": reason, "staff_username": me.username, "role": me.role, **extra}
        customer = new_event(SERVICE, "staff.customer_access", resource_type="account", resource_id=str(account_id),
                             account_id=account_id, details=details)
        platform = new_event(SERVICE, "staff.customer_access", resource_type="account", resource_id=str(account_id),
                             account_id=self._sessions.platform_account_id,
                             details={**details, "customer_account_id": str(account_id)})
        for ev in (customer, platform):
            ev.actor.type = "staff"
            ev.actor.id = str(me.id)
            await self._audit.record_strict(ev, timeout=self._timeout)
