"""gRPC edge of sign-up (SignupService, and staff's CreateCustomerAccount): protobuf <-> the sign-up use cases,
nothing else. Beside api.py, which holds identity's other services and has no room left under the 500-line limit:
StaffService is served by `StaffSignupServicer`, api.StaffServicer with CreateCustomerAccount added."""

from __future__ import annotations

from datetime import datetime

import grpc
from google.protobuf import timestamp_pb2

from sendsafe.identity.v1 import signup_service_pb2, signup_service_pb2_grpc, staff_service_pb2
from services.identity.api import StaffServicer, caller
from services.identity.service.signup import Opened, SignupInput, Signups


def _ts(when: datetime) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(when)
    return t


def signup_input(r: signup_service_pb2.SignupRequest) -> SignupInput:
    return SignupInput(name=r.name, username=r.username, email=r.email, password=r.password, country=r.country,
                       timezone=r.timezone)


def opened_to_proto(o: Opened) -> signup_service_pb2.SignupResponse:
    """What the person needs next: ids, the username, that verification is pending; never a secret."""
    return signup_service_pb2.SignupResponse(
        account_id=o.account.id, user_id=o.user.id, username=o.user.api_username, test_mode=o.account.test_mode,
        email_verification_pending=True, verification_email_sent=o.email_sent,
        code_expire_time=_ts(o.code_expire_time),
    )


class SignupServicer(signup_service_pb2_grpc.SignupServiceServicer):
    def __init__(self, signups: Signups) -> None:
        self.signups = signups

    async def Signup(
        self, request: signup_service_pb2.SignupRequest, context: grpc.aio.ServicerContext
    ) -> signup_service_pb2.SignupResponse:
        return opened_to_proto(await self.signups.signup(caller(), signup_input(request)))

    async def VerifySignup(
        self, request: signup_service_pb2.VerifySignupRequest, context: grpc.aio.ServicerContext
    ) -> signup_service_pb2.VerifySignupResponse:
        v, when = await self.signups.verify(caller(), request.username, request.code, request.password)
        return signup_service_pb2.VerifySignupResponse(account_id=v.account_id, username=v.username, test_mode=False,
                                                       verify_time=_ts(when))

    async def ResendSignupCode(
        self, request: signup_service_pb2.ResendSignupCodeRequest, context: grpc.aio.ServicerContext
    ) -> signup_service_pb2.ResendSignupCodeResponse:
        await self.signups.resend(caller(), request.username)
        return signup_service_pb2.ResendSignupCodeResponse()


class StaffSignupServicer(StaffServicer):
    async def CreateCustomerAccount(
        self, request: staff_service_pb2.CreateCustomerAccountRequest, context: grpc.aio.ServicerContext
    ) -> staff_service_pb2.CreateCustomerAccountResponse:
        o = await self.staff.create_customer_account(caller(), SignupInput(
            name=request.name, username=request.username, email=request.email, password="", country=request.country,
            timezone=request.timezone,
        ), request.reason)
        return staff_service_pb2.CreateCustomerAccountResponse(
            account_id=o.account.id, user_id=o.user.id, username=o.user.api_username, test_mode=o.account.test_mode,
            email_verification_pending=True, verification_email_sent=o.email_sent,
            code_expire_time=_ts(o.code_expire_time),
        )
