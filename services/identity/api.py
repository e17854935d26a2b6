"""gRPC edge of the identity service: protobuf <-> domain, nothing else."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from sendsafe.context.v1 import principal_pb2
from sendsafe.identity.v1 import (
    account_pb2,
    account_policy_service_pb2,
    account_policy_service_pb2_grpc,
    auth_service_pb2,
    auth_service_pb2_grpc,
    closure_service_pb2,
    closure_service_pb2_grpc,
    identity_service_pb2,
    identity_service_pb2_grpc,
    staff_service_pb2,
    staff_service_pb2_grpc,
)
from services.identity.domain.account_policy import AccountPolicy
from services.identity.domain.accounts import MASKED_API_KEY, Account, AccountDetails, User
from services.identity.domain.caller import Caller
from services.identity.domain.closure import Closure
from services.identity.domain.errors import PrincipalRequired
from services.identity.domain.flags import FLAG_NAMES
from services.identity.domain.sessions import STAFF, USER, SessionRecord
from services.identity.domain.staff import StaffMember
from services.identity.service.account_policy import AccountPolicies
from services.identity.service.accounts import Accounts, CreateAccountInput, SubaccountInput
from services.identity.service.closure import Closures
from services.identity.service.factors import Factors
from services.identity.service.sessions import Sessions
from services.identity.service.staff import Staff
from svckit import context as callctx
from svckit.paging import clicksend_paging


def caller() -> Caller:
    """The end user (or staff member) behind this call, from the principal the gateway forwarded."""
    return caller_of(callctx.principal())


def caller_of(p: principal_pb2.Principal | None) -> Caller:
    """A principal as the use cases see it; no principal (or one without an identity: a login) is anonymous."""
    if p is None:
        return Caller()
    return Caller(
        account_id=p.account_id,
        user_id=p.user_id,
        staff=p.staff,
        session_id=p.session_id if p.auth_method == principal_pb2.AUTH_METHOD_SESSION else "",
        client_address=p.client_address,
        user_agent=p.user_agent,
    )


def user_to_proto(account: Account, user: User) -> account_pb2.User:
    return account_pb2.User(
        user_id=user.id, account_id=user.account_id, api_username=user.api_username, active=user.enabled,
        is_main=user.is_main, test_mode=account.test_mode, permissions=sorted(user.permissions),
        create_time=_ts(user.create_time), sms_deidentify_message=user.flags.sms_deidentify_message,
        allowed_senders=list(user.allowed_senders),
    )


def _ts(when: datetime) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(when)
    return t


def subaccount_to_proto(user: User) -> account_pb2.Subaccount:
    sub = account_pb2.Subaccount(
        subaccount_id=user.id, api_username=user.api_username, email=user.email, phone_number=user.phone_number,
        first_name=user.first_name, last_name=user.last_name, api_key=MASKED_API_KEY, is_main=int(user.is_main),
    )
    if user.notes is not None:
        sub.notes = user.notes
    for name in FLAG_NAMES:
        setattr(sub, name, int(getattr(user.flags, name)))
    return sub


def account_to_proto(d: AccountDetails) -> identity_service_pb2.GetAccountResponse:
    a, u, s, c = d.account, d.user, d.settings, d.currency
    return identity_service_pb2.GetAccountResponse(
        user_id=u.id,
        username=u.api_username,
        user_email=u.email,
        active=int(u.active),
        banned=int(u.banned),
        date_sign_up=int(a.create_time.timestamp()),
        balance=d.balance,
        user_phone=u.phone_number,
        user_first_name=u.first_name,
        user_last_name=u.last_name,
        account=a.id,
        account_name=a.name,
        country=a.country,
        default_country_sms=a.country,
        timezone=a.timezone,
        setting_unicode_sms=s.setting_unicode_sms,
        setting_fix_sender_id=s.setting_fix_sender_id,
        setting_sms_message_char_limit=s.setting_sms_message_char_limit,
        on_trial=s.on_trial,
        auto_recharge=s.auto_recharge,
        low_credit_amount=s.low_credit_amount,
        currency=account_pb2.Currency(
            currency_name_short=c.currency_name_short,
            currency_prefix_d=c.currency_prefix_d,
            currency_prefix_c=c.currency_prefix_c,
            currency_name_long=c.currency_name_long,
            min_recharge_amount=c.min_recharge_amount,
            max_recharge_amount=c.max_recharge_amount,
        ),
        subaccount=subaccount_to_proto(u),
    )


class IdentityServicer(identity_service_pb2_grpc.IdentityServiceServicer):
    def __init__(self, service: Accounts) -> None:
        self.service = service

    async def GetAccount(
        self, request: identity_service_pb2.GetAccountRequest, context: grpc.aio.ServicerContext
    ) -> identity_service_pb2.GetAccountResponse:
        me = caller()
        if not me.account_id or not me.user_id:
            raise PrincipalRequired("reading an account needs an authenticated user")
        return account_to_proto(await self.service.get_account(me.account_id, me.user_id))

    async def GetUser(
        self, request: identity_service_pb2.GetUserRequest, context: grpc.aio.ServicerContext
    ) -> identity_service_pb2.GetUserResponse:
        account, user = await self.service.get_user(request.user_id, request.api_username)
        return identity_service_pb2.GetUserResponse(user=user_to_proto(account, user))

    async def GetAccountOwners(
        self, request: identity_service_pb2.GetAccountOwnersRequest, context: grpc.aio.ServicerContext
    ) -> identity_service_pb2.GetAccountOwnersResponse:
        owners = await self.service.account_owners(request.account_id)
        return identity_service_pb2.GetAccountOwnersResponse(
            owners=[identity_service_pb2.AccountOwner(user_id=u.id, email=u.email) for u in owners])

    async def ListAccountUsers(
        self, request: identity_service_pb2.ListAccountUsersRequest, context: grpc.aio.ServicerContext
    ) -> identity_service_pb2.ListAccountUsersResponse:
        users, after = await self.service.users_after(request.account_id, request.after_user_id, request.page_size)
        return identity_service_pb2.ListAccountUsersResponse(
            users=[subaccount_to_proto(u) for u in users], next_after_user_id=after)

    async def CreateAccount(
        self, request: identity_service_pb2.CreateAccountRequest, context: grpc.aio.ServicerContext
    ) -> identity_service_pb2.CreateAccountResponse:
        account, user = await self.service.create_account(
            CreateAccountInput(
                account_name=request.account_name,
                api_username=request.api_username,
                email=request.email,
                phone_number=request.phone_number,
                first_name=request.first_name,
                last_name=request.last_name,
                country=request.country,
                test_mode=request.test_mode,
                password=request.password,
            )
        )
        return identity_service_pb2.CreateAccountResponse(account_id=account.id, user=user_to_proto(account, user))

    # -- sub-accounts ---------------------------------------------------------------------------------

    async def CreateSubaccount(
        self, request: identity_service_pb2.CreateSubaccountRequest, context: grpc.aio.ServicerContext
    ) -> identity_service_pb2.CreateSubaccountResponse:
        user, api_key = await self.service.create_subaccount(caller(), _subaccount_input(request, with_username=True))
        sub = subaccount_to_proto(user)
        sub.api_key = api_key  # the one answer that shows the key
        return identity_service_pb2.CreateSubaccountResponse(subaccount=sub)

    async def ListSubaccounts(
        self, request: identity_service_pb2.ListSubaccountsRequest, context: grpc.aio.ServicerContext
    ) -> identity_service_pb2.ListSubaccountsResponse:
        page = await self.service.list_subaccounts(caller(), request.page, request.limit)
        return identity_service_pb2.ListSubaccountsResponse(
            **clicksend_paging(page.window, page.total, len(page.users)),  # type: ignore[arg-type]
            data=[subaccount_to_proto(u) for u in page.users],
        )

    async def GetSubaccount(
        self, request: identity_service_pb2.GetSubaccountRequest, context: grpc.aio.ServicerContext
    ) -> identity_service_pb2.GetSubaccountResponse:
        user = await self.service.get_subaccount(caller(), request.subaccount_id)
        return identity_service_pb2.GetSubaccountResponse(subaccount=subaccount_to_proto(user))

    async def UpdateSubaccount(
        self, request: identity_service_pb2.UpdateSubaccountRequest, context: grpc.aio.ServicerContext
    ) -> identity_service_pb2.UpdateSubaccountResponse:
        user = await self.service.update_subaccount(caller(), request.subaccount_id, _subaccount_input(request))
        return identity_service_pb2.UpdateSubaccountResponse(subaccount=subaccount_to_proto(user))

    async def DeleteSubaccount(
        self, request: identity_service_pb2.DeleteSubaccountRequest, context: grpc.aio.ServicerContext
    ) -> identity_service_pb2.DeleteSubaccountResponse:
        await self.service.delete_subaccount(caller(), request.subaccount_id)
        return identity_service_pb2.DeleteSubaccountResponse(deleted=True)

    async def RegenerateSubaccountApiKey(
        self, request: identity_service_pb2.RegenerateSubaccountApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> identity_service_pb2.RegenerateSubaccountApiKeyResponse:
        # The body (access_sms, email, notes in the SDK's model) is ignored, as ClickSend does.
        api_key = await self.service.regenerate_api_key(caller(), request.subaccount_id)
        return identity_service_pb2.RegenerateSubaccountApiKeyResponse(api_key=api_key)


def _opt(msg: Any, name: str) -> Any:
    return getattr(msg, name) if msg.HasField(name) else None


def _subaccount_input(msg: Any, *, with_username: bool = False) -> SubaccountInput:
    fields = msg.DESCRIPTOR.fields_by_name
    flags = {n: getattr(msg, n) for n in FLAG_NAMES if n in fields and msg.HasField(n)}
    if with_username:  # create: plain strings, "" = not given
        return SubaccountInput(
            api_username=msg.api_username or None,
            password=msg.password or None,
            email=msg.email or None,
            phone_number=msg.phone_number or None,
            first_name=msg.first_name or None,
            last_name=msg.last_name or None,
            notes=_opt(msg, "notes"),
            flags=flags,
        )
    return SubaccountInput(
        password=_opt(msg, "password"),
        email=_opt(msg, "email"),
        phone_number=_opt(msg, "phone_number"),
        first_name=_opt(msg, "first_name"),
        last_name=_opt(msg, "last_name"),
        notes=_opt(msg, "notes"),
        flags=flags,
    )


# ---------------------------------------------------------------------------------------------------
# Sessions, MFA, step-up


def session_to_proto(s: SessionRecord, current_id: str = "") -> auth_service_pb2.Session:
    out = auth_service_pb2.Session(
        session_id=s.id, amr=list(s.amr), create_time=_ts(s.create_time), expire_time=_ts(s.expire_time),
        last_seen_time=_ts(s.last_seen_time), client_address=s.client_address, user_agent=s.user_agent,
        current=s.id == current_id,
    )
    if s.mfa_time is not None:
        out.mfa_time.CopyFrom(_ts(s.mfa_time))
    return out


class AuthServicer(auth_service_pb2_grpc.AuthServiceServicer):
    def __init__(self, sessions: Sessions, factors: Factors) -> None:
        self.sessions = sessions
        self.factors = factors

    async def Login(
        self, request: auth_service_pb2.LoginRequest, context: grpc.aio.ServicerContext
    ) -> auth_service_pb2.LoginResponse:
        token, session = await self.sessions.login(
            caller(), USER, request.username, request.password, request.totp_code, request.recovery_code
        )
        return auth_service_pb2.LoginResponse(session_token=token, session=session_to_proto(session, session.id),
                                              second_factor_enrolment_required=session.enrolment_only)

    async def ResolveSession(
        self, request: auth_service_pb2.ResolveSessionRequest, context: grpc.aio.ServicerContext
    ) -> auth_service_pb2.ResolveSessionResponse:
        session, subject = await self.sessions.resolve(request.session_token, request.client_address)
        out = auth_service_pb2.ResolveSessionResponse(
            session_id=session.id, account_id=subject.account_id, user_id=subject.id, username=subject.username,
            staff=subject.is_staff, permissions=sorted(subject.permissions), test_mode=subject.test_mode,
            expire_time=_ts(session.expire_time), sms_deidentify_message=subject.sms_deidentify_message,
            allowed_senders=list(subject.allowed_senders),
        )
        if session.mfa_time is not None:
            out.mfa_time.CopyFrom(_ts(session.mfa_time))
        return out

    async def Logout(
        self, request: auth_service_pb2.LogoutRequest, context: grpc.aio.ServicerContext
    ) -> auth_service_pb2.LogoutResponse:
        await self.sessions.logout(caller())
        return auth_service_pb2.LogoutResponse()

    async def ListSessions(
        self, request: auth_service_pb2.ListSessionsRequest, context: grpc.aio.ServicerContext
    ) -> auth_service_pb2.ListSessionsResponse:
        current, sessions = await self.sessions.list_sessions(caller())
        return auth_service_pb2.ListSessionsResponse(sessions=[session_to_proto(s, current) for s in sessions])

    async def RevokeSession(
        self, request: auth_service_pb2.RevokeSessionRequest, context: grpc.aio.ServicerContext
    ) -> auth_service_pb2.RevokeSessionResponse:
        await self.sessions.revoke_session(caller(), request.session_id)
        return auth_service_pb2.RevokeSessionResponse()

    async def RevokeOtherSessions(
        self, request: auth_service_pb2.RevokeOtherSessionsRequest, context: grpc.aio.ServicerContext
    ) -> auth_service_pb2.RevokeOtherSessionsResponse:
        n = await self.sessions.revoke_other_sessions(caller())
        return auth_service_pb2.RevokeOtherSessionsResponse(revoked_count=n)

    async def StepUp(
        self, request: auth_service_pb2.StepUpRequest, context: grpc.aio.ServicerContext
    ) -> auth_service_pb2.StepUpResponse:
        when = await self.sessions.step_up(caller(), request.totp_code, request.recovery_code)
        return auth_service_pb2.StepUpResponse(
            mfa_time=_ts(when), max_age_seconds=self.sessions.settings.step_up_max_age_seconds
        )

    async def StartTotpEnrollment(
        self, request: auth_service_pb2.StartTotpEnrollmentRequest, context: grpc.aio.ServicerContext
    ) -> auth_service_pb2.StartTotpEnrollmentResponse:
        e = await self.factors.start_totp(caller(), request.password)
        return auth_service_pb2.StartTotpEnrollmentResponse(otpauth_uri=e.otpauth_uri, secret=e.secret, qr_png=e.qr_png)

    async def ConfirmTotpEnrollment(
        self, request: auth_service_pb2.ConfirmTotpEnrollmentRequest, context: grpc.aio.ServicerContext
    ) -> auth_service_pb2.ConfirmTotpEnrollmentResponse:
        codes = await self.factors.confirm_totp(caller(), request.code)
        return auth_service_pb2.ConfirmTotpEnrollmentResponse(recovery_codes=codes)

    async def RemoveTotp(
        self, request: auth_service_pb2.RemoveTotpRequest, context: grpc.aio.ServicerContext
    ) -> auth_service_pb2.RemoveTotpResponse:
        await self.factors.remove_totp(caller())
        return auth_service_pb2.RemoveTotpResponse()

    async def RegenerateRecoveryCodes(
        self, request: auth_service_pb2.RegenerateRecoveryCodesRequest, context: grpc.aio.ServicerContext
    ) -> auth_service_pb2.RegenerateRecoveryCodesResponse:
        codes = await self.factors.regenerate_recovery_codes(caller())
        return auth_service_pb2.RegenerateRecoveryCodesResponse(recovery_codes=codes)

    async def ChangePassword(
        self, request: auth_service_pb2.ChangePasswordRequest, context: grpc.aio.ServicerContext
    ) -> auth_service_pb2.ChangePasswordResponse:
        n = await self.factors.change_password(caller(), request.current_password, request.new_password)
        return auth_service_pb2.ChangePasswordResponse(revoked_sessions=n)


def policy_to_proto(p: AccountPolicy) -> account_policy_service_pb2.AccountPolicy:
    return account_policy_service_pb2.AccountPolicy(
        require_second_factor=p.require_second_factor, allowed_networks=p.network_texts,
        session_lifetime_seconds=p.session_lifetime_seconds, update_time=_ts(p.update_time) if p.update_time else None)


class AccountPolicyServicer(account_policy_service_pb2_grpc.AccountPolicyServiceServicer):
    def __init__(self, policies: AccountPolicies) -> None:
        self.policies = policies

    async def GetAccountPolicy(
        self, request: account_policy_service_pb2.GetAccountPolicyRequest, context: grpc.aio.ServicerContext
    ) -> account_policy_service_pb2.GetAccountPolicyResponse:
        policy = await self.policies.get(caller())
        return account_policy_service_pb2.GetAccountPolicyResponse(policy=policy_to_proto(policy))

    async def UpdateAccountPolicy(
        self, request: account_policy_service_pb2.UpdateAccountPolicyRequest, context: grpc.aio.ServicerContext
    ) -> account_policy_service_pb2.UpdateAccountPolicyResponse:
        p = request.policy
        policy, revoked = await self.policies.update(
            caller(), p.require_second_factor, list(p.allowed_networks), p.session_lifetime_seconds)
        return account_policy_service_pb2.UpdateAccountPolicyResponse(
            policy=policy_to_proto(policy), revoked_sessions=revoked)


# ---------------------------------------------------------------------------------------------------
# Staff


_ROLE_NAMES = {
    staff_service_pb2.STAFF_ROLE_SUPPORT_READONLY: "support_readonly",
    staff_service_pb2.STAFF_ROLE_SUPPORT_AGENT: "support_agent",
    staff_service_pb2.STAFF_ROLE_SECURITY_ADMIN: "security_admin",
    staff_service_pb2.STAFF_ROLE_PLATFORM_ADMIN: "platform_admin",
}
_ROLE_VALUES = {v: k for k, v in _ROLE_NAMES.items()}


def staff_to_proto(m: StaffMember) -> staff_service_pb2.StaffUser:
    return staff_service_pb2.StaffUser(
        staff_id=m.id, username=m.username, email=m.email, display_name=m.display_name,
        role=_ROLE_VALUES[m.role], active=m.active, create_time=_ts(m.create_time),  # type: ignore[arg-type]
    )


def customer_user_to_proto(user: User, mfa: bool) -> staff_service_pb2.CustomerUser:
    return staff_service_pb2.CustomerUser(
        user_id=user.id, api_username=user.api_username, email=user.email, is_main=user.is_main, active=user.enabled,
        mfa_enabled=mfa, permissions=sorted(user.permissions), create_time=_ts(user.create_time),
    )


class StaffServicer(staff_service_pb2_grpc.StaffServiceServicer):
    def __init__(self, sessions: Sessions, staff: Staff) -> None:
        self.sessions = sessions
        self.staff = staff

    async def StaffLogin(
        self, request: staff_service_pb2.StaffLoginRequest, context: grpc.aio.ServicerContext
    ) -> staff_service_pb2.StaffLoginResponse:
        token, session = await self.sessions.login(
            caller(), STAFF, request.username, request.password, request.totp_code, request.recovery_code
        )
        return staff_service_pb2.StaffLoginResponse(session_token=token, session=session_to_proto(session, session.id))

    async def CreateStaffUser(
        self, request: staff_service_pb2.CreateStaffUserRequest, context: grpc.aio.ServicerContext
    ) -> staff_service_pb2.CreateStaffUserResponse:
        new = await self.staff.create(
            request.username, request.email, request.display_name, _ROLE_NAMES.get(request.role, ""), request.password
        )
        return staff_service_pb2.CreateStaffUserResponse(
            staff_user=staff_to_proto(new.member),
            otpauth_uri=new.enrollment.otpauth_uri,
            totp_secret=new.enrollment.secret,
            qr_png=new.enrollment.qr_png,
            recovery_codes=new.recovery_codes,
        )

    async def ChangeStaffRole(
        self, request: staff_service_pb2.ChangeStaffRoleRequest, context: grpc.aio.ServicerContext
    ) -> staff_service_pb2.ChangeStaffRoleResponse:
        member = await self.staff.change_role(
            caller(), request.staff_id, _ROLE_NAMES.get(request.role, ""), request.reason
        )
        return staff_service_pb2.ChangeStaffRoleResponse(staff_user=staff_to_proto(member))

    async def GetCustomerAccount(
        self, request: staff_service_pb2.GetCustomerAccountRequest, context: grpc.aio.ServicerContext
    ) -> staff_service_pb2.GetCustomerAccountResponse:
        account, users = await self.staff.get_customer_account(caller(), request.account_id, request.reason)
        return staff_service_pb2.GetCustomerAccountResponse(
            account_id=account.id,
            account_name=account.name,
            country=account.country,
            test_mode=account.test_mode,
            create_time=_ts(account.create_time),
            users=[customer_user_to_proto(u, mfa) for u, mfa in users],
        )

    async def SetCustomerUserStatus(
        self, request: staff_service_pb2.SetCustomerUserStatusRequest, context: grpc.aio.ServicerContext
    ) -> staff_service_pb2.SetCustomerUserStatusResponse:
        user, mfa = await self.staff.set_customer_user_status(
            caller(), request.account_id, request.user_id, request.active, request.reason
        )
        return staff_service_pb2.SetCustomerUserStatusResponse(user=customer_user_to_proto(user, mfa))

    async def CancelCustomerAccountClosure(
        self, request: staff_service_pb2.CancelCustomerAccountClosureRequest, context: grpc.aio.ServicerContext
    ) -> staff_service_pb2.CancelCustomerAccountClosureResponse:
        closure = await self.staff.cancel_customer_closure(caller(), request.account_id, request.reason)
        return staff_service_pb2.CancelCustomerAccountClosureResponse(closure=closure_to_proto(closure))


def closure_to_proto(c: Closure) -> closure_service_pb2.AccountClosure:
    state = closure_service_pb2.AccountClosureState.Value(f"ACCOUNT_CLOSURE_STATE_{c.state.upper()}")
    return closure_service_pb2.AccountClosure(account_id=c.account_id, steps_done=list(c.steps_done), state=state,
        request_time=_ts(c.request_time) if c.request_time else None,
        destroy_time=_ts(c.destroy_time) if c.destroy_time else None)


class ClosureServicer(closure_service_pb2_grpc.AccountClosureServiceServicer):
    def __init__(self, closures: Closures) -> None:
        self.closures = closures

    async def CloseAccount(self, request: closure_service_pb2.CloseAccountRequest, context: grpc.aio.ServicerContext
                           ) -> closure_service_pb2.CloseAccountResponse:
        closure = await self.closures.close(caller(), request.account_name)
        return closure_service_pb2.CloseAccountResponse(closure=closure_to_proto(closure))

    async def CancelAccountClosure(
        self, request: closure_service_pb2.CancelAccountClosureRequest, context: grpc.aio.ServicerContext
    ) -> closure_service_pb2.CancelAccountClosureResponse:
        closure = await self.closures.cancel(caller())
        return closure_service_pb2.CancelAccountClosureResponse(closure=closure_to_proto(closure))

    async def GetAccountClosure(
        self, request: closure_service_pb2.GetAccountClosureRequest, context: grpc.aio.ServicerContext
    ) -> closure_service_pb2.GetAccountClosureResponse:
        closure = await self.closures.get(caller())
        return closure_service_pb2.GetAccountClosureResponse(closure=closure_to_proto(closure))
