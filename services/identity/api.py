"""gRPC edge of the identity service: protobuf <-> domain, nothing else."""

from __future__ import annotations

import grpc
from google.protobuf import timestamp_pb2

from sendsafe.identity.v1 import account_pb2, identity_service_pb2, identity_service_pb2_grpc
from services.identity.domain import FLAG_NAMES, MASKED_API_KEY, Account, AccountDetails, PrincipalRequired, User
from services.identity.service import CreateAccountInput, Service
from svckit import context as callctx


def user_to_proto(account: Account, user: User) -> account_pb2.User:
    created = timestamp_pb2.Timestamp()
    created.FromDatetime(user.create_time)
    return account_pb2.User(
        user_id=user.id,
        account_id=user.account_id,
        api_username=user.api_username,
        active=user.enabled,
        is_main=user.is_main,
        test_mode=account.test_mode,
        permissions=sorted(user.permissions),
        create_time=created,
    )


def subaccount_to_proto(user: User) -> account_pb2.Subaccount:
    sub = account_pb2.Subaccount(
        subaccount_id=user.id,
        api_username=user.api_username,
        email=user.email,
        phone_number=user.phone_number,
        first_name=user.first_name,
        last_name=user.last_name,
        api_key=MASKED_API_KEY,
        is_main=int(user.is_main),
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
    def __init__(self, service: Service) -> None:
        self.service = service

    async def GetAccount(
        self, request: identity_service_pb2.GetAccountRequest, context: grpc.aio.ServicerContext
    ) -> identity_service_pb2.GetAccountResponse:
        principal = callctx.principal()
        if principal is None or not principal.account_id or not principal.user_id:
            raise PrincipalRequired("reading an account needs an authenticated user")
        return account_to_proto(await self.service.get_account(principal.account_id, principal.user_id))

    async def GetUser(
        self, request: identity_service_pb2.GetUserRequest, context: grpc.aio.ServicerContext
    ) -> identity_service_pb2.GetUserResponse:
        account, user = await self.service.get_user(request.user_id, request.api_username)
        return identity_service_pb2.GetUserResponse(user=user_to_proto(account, user))

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
            )
        )
        return identity_service_pb2.CreateAccountResponse(account_id=account.id, user=user_to_proto(account, user))
