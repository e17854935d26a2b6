"""gRPC edge of sub-accounts' sender limits (issue 21): /v1/subaccounts/{id}/sender-limits, protobuf <-> the
use cases, nothing else. Beside api.py, which has no room left under the 500-line limit: IdentityService is served
by `SenderLimitsIdentityServicer`, api.IdentityServicer with these two RPCs added."""

from __future__ import annotations

import grpc

from sendsafe.identity.v1 import identity_service_pb2 as pb
from services.identity.api import IdentityServicer, caller
from services.identity.domain.accounts import User


def sender_limits_to_proto(user: User) -> pb.SubaccountSenderLimits:
    return pb.SubaccountSenderLimits(subaccount_id=user.id, allowed_senders=list(user.allowed_senders))


class SenderLimitsIdentityServicer(IdentityServicer):
    async def GetSubaccountSenderLimits(
        self, request: pb.GetSubaccountSenderLimitsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSubaccountSenderLimitsResponse:
        user = await self.service.get_subaccount(caller(), request.subaccount_id)
        return pb.GetSubaccountSenderLimitsResponse(sender_limits=sender_limits_to_proto(user))

    async def UpdateSubaccountSenderLimits(
        self, request: pb.UpdateSubaccountSenderLimitsRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateSubaccountSenderLimitsResponse:
        user = await self.service.update_sender_limits(caller(), request.subaccount_id, list(request.allowed_senders))
        return pb.UpdateSubaccountSenderLimitsResponse(sender_limits=sender_limits_to_proto(user))
