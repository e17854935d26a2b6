"""gRPC edge of default senders (DefaultSenderService): protobuf <-> domain, nothing else. It lives here rather than
in api.py, which is near the 500-line limit; app.py registers it like the others."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

import grpc

from sendsafe.messaging.v1 import default_sender_service_pb2 as pb
from sendsafe.messaging.v1 import default_sender_service_pb2_grpc
from services.messaging.api import caller_from_context
from services.messaging.domain.default_senders import DefaultSender, Strategy, check_strategy
from services.messaging.service.default_senders import DEFAULT_PAGE, DefaultSenders
from svckit.errors import InvalidArgument

LIST_PATH = "/v3/senders/default-senders"


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def default_proto(d: DefaultSender) -> pb.DefaultSender:
    return pb.DefaultSender(
        id=d.id, user_id=d.user_id, subaccount_id=d.subaccount_id, country_code=d.country, product_type=d.product,
        default_sender_strategies=[
            pb.DefaultSenderStrategy(sender_type=s.sender_type.value, sender_id=s.sender_id,
                                     sender_country_code=s.sender_country, priority=n, status=s.status.value,
                                     note=s.note)
            for n, s in enumerate(d.strategies, start=1)],
        status="ENABLED" if d.enabled else "DISABLED",
        created_timestamp=_iso(d.create_time), updated_timestamp=_iso(d.update_time),
    )


def _strategies(items: list[pb.DefaultSenderStrategyInput]) -> list[Strategy]:
    return [check_strategy(s.sender_type, s.sender_id, s.sender_country_code, s.status, s.note) for s in items]


def _cursor(value: str) -> int:
    if not value:
        return 0
    if not value.isdigit():
        raise InvalidArgument("offset must be the cursor a previous page's next_page_url gave")
    return int(value)


def _link(per_page: int, offset: int) -> str:
    return f"{LIST_PATH}?{urlencode({'per_page': per_page, **({'offset': offset} if offset else {})})}"


class DefaultSenderServicer(default_sender_service_pb2_grpc.DefaultSenderServiceServicer):
    def __init__(self, defaults: DefaultSenders) -> None:
        self.defaults = defaults

    async def CreateDefaultSender(self, request: pb.CreateDefaultSenderRequest, context: grpc.aio.ServicerContext
                                  ) -> pb.CreateDefaultSenderResponse:
        d = await self.defaults.create(caller_from_context(), request.country_code, request.product_type,
                                       _strategies(list(request.default_sender_strategies)), request.subaccount_id)
        return pb.CreateDefaultSenderResponse(default_sender=default_proto(d))

    async def ListDefaultSenders(self, request: pb.ListDefaultSendersRequest, context: grpc.aio.ServicerContext
                                 ) -> pb.ListDefaultSendersResponse:
        size = request.per_page or DEFAULT_PAGE
        offset = _cursor(request.offset)
        page = await self.defaults.page(caller_from_context(), size, offset)
        return pb.ListDefaultSendersResponse(
            data=[default_proto(d) for d in page.items], per_page=size, self_page_url=_link(size, offset),
            next_page_url=_link(size, page.next_cursor) if page.next_cursor else "")

    async def GetDefaultSender(self, request: pb.GetDefaultSenderRequest, context: grpc.aio.ServicerContext
                               ) -> pb.GetDefaultSenderResponse:
        d = await self.defaults.get(caller_from_context(), request.default_sender_id)
        return pb.GetDefaultSenderResponse(default_sender=default_proto(d))

    async def UpdateDefaultSender(self, request: pb.UpdateDefaultSenderRequest, context: grpc.aio.ServicerContext
                                  ) -> pb.UpdateDefaultSenderResponse:
        d = await self.defaults.update(caller_from_context(), request.default_sender_id,
                                       _strategies(list(request.default_sender_strategies)))
        return pb.UpdateDefaultSenderResponse(default_sender=default_proto(d))

    async def DeleteDefaultSender(self, request: pb.DeleteDefaultSenderRequest, context: grpc.aio.ServicerContext
                                  ) -> pb.DeleteDefaultSenderResponse:
        await self.defaults.delete(caller_from_context(), request.default_sender_id)
        return pb.DeleteDefaultSenderResponse()
