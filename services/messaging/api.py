"""gRPC edge of the messaging service: protobuf <-> domain, nothing else."""

from __future__ import annotations

import grpc

from sendsafe.messaging.v1 import messaging_service_pb2 as pb
from sendsafe.messaging.v1 import (
    messaging_service_pb2_grpc,
    notification_service_pb2,
    notification_service_pb2_grpc,
    sms_pb2,
)
from services.messaging.domain import (
    Caller,
    Currency,
    HistoryItem,
    HistoryPage,
    HistoryQuery,
    OutboundInput,
    SendItem,
    SendResult,
    format_balance,
    format_price,
    page_window,
)
from services.messaging.notifications import Notifications
from services.messaging.service import MessagingService
from svckit import context as callctx
from svckit.errors import PermissionDenied


def caller_from_context() -> Caller:
    p = callctx.principal()
    if p is None or p.account_id <= 0:
        raise PermissionDenied("this call needs an account principal")
    return Caller(account_id=p.account_id, user_id=p.user_id, api_username=p.api_username, test_mode=p.test_mode)


def to_input(m: sms_pb2.OutboundSms) -> OutboundInput:
    return OutboundInput(
        body=m.body, to=m.to, country=m.country, sender=m.sender, schedule=m.schedule,
        custom_string=m.custom_string, source=m.source, from_email=m.from_email, list_id=m.list_id,
        contact_id=str(m.contact_id) if m.contact_id else "",
    )


def currency_proto(c: Currency) -> sms_pb2.Currency:
    return sms_pb2.Currency(
        currency_name_short=c.currency_name_short, currency_prefix_d=c.currency_prefix_d,
        currency_prefix_c=c.currency_prefix_c, currency_name_long=c.currency_name_long,
    )


def sent_proto(item: SendItem, caller: Caller, date: int) -> sms_pb2.SentSms:
    return sms_pb2.SentSms(
        direction="out", date=date, to=item.to, body=item.input.body, sender=item.sender,
        schedule=item.schedule, message_id=item.message_id, message_parts=item.parts,
        message_price=format_price(item.price), from_email=item.input.from_email, list_id=item.input.list_id,
        custom_string=item.input.custom_string, contact_id=item.input.contact_id, user_id=caller.account_id,
        subaccount_id=caller.user_id, is_shared_system_number=not item.sender, country=item.country,
        carrier="", status=item.status.value,
    )


def send_response(result: SendResult, caller: Caller) -> pb.SendSmsResponse:
    return pb.SendSmsResponse(
        total_price=float(result.total_price), total_count=len(result.items), queued_count=result.queued_count,
        blocked_count=result.blocked_count, currency=currency_proto(result.currency),
        messages=[sent_proto(i, caller, result.date) for i in result.items],
    )


def history_proto(item: HistoryItem, caller: Caller) -> sms_pb2.HistorySms:
    m, st = item.message, item.status
    out = sms_pb2.HistorySms(
        direction="out", date=m.date, to=item.to, body=item.body, sender=m.sender,
        schedule=str(m.schedule) if m.schedule else "", status=st.status, status_code=st.status_code,
        status_text=st.status_text, message_id=m.id, message_parts=m.parts, message_price=format_price(m.price),
        from_email=m.from_email, list_id=m.list_id, custom_string=m.custom_string, contact_id=m.contact_id,
        user_id=m.account_id, subaccount_id=m.user_id, country=m.country, carrier=m.carrier,
        api_username=caller.api_username if m.user_id == caller.user_id else m.api_username,
    )
    if st.error_code is not None:
        out.error_code = st.error_code
    if st.error_text is not None:
        out.error_text = st.error_text
    return out


def history_response(page: HistoryPage, caller: Caller) -> pb.ListSmsHistoryResponse:
    w = page.window
    last = w.last_page(page.total)
    first_index, last_index = w.bounds(page.total, len(page.items))
    resp = pb.ListSmsHistoryResponse(
        total=page.total, per_page=w.limit, current_page=w.page, last_page=last,
        data=[history_proto(i, caller) for i in page.items],
    )
    if w.page < last:
        resp.next_page_url = f"/?page={w.page + 1}"
    if w.page > 1:
        resp.prev_page_url = f"/?page={w.page - 1}"
    if first_index is not None and last_index is not None:
        resp.first_index = first_index
        resp.last_index = last_index
    return resp


class MessagingServicer(messaging_service_pb2_grpc.MessagingServiceServicer):
    def __init__(self, service: MessagingService) -> None:
        self.service = service

    async def SendSms(self, request: pb.SendSmsRequest, context: grpc.aio.ServicerContext) -> pb.SendSmsResponse:
        caller = caller_from_context()
        result = await self.service.send_sms(caller, [to_input(m) for m in request.messages])
        return send_response(result, caller)

    async def ListSmsHistory(
        self, request: pb.ListSmsHistoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSmsHistoryResponse:
        caller = caller_from_context()
        # `q` and `order_by` are accepted and not applied yet (newest first always).
        query = HistoryQuery(
            window=page_window(request.page, request.limit),
            date_from=request.date_from or None,
            date_to=request.date_to or None,
        )
        page = await self.service.list_history(caller, query)
        return history_response(page, caller)

    async def GetBalance(
        self, request: pb.GetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetBalanceResponse:
        balance = await self.service.get_balance(request.account_id)
        return pb.GetBalanceResponse(balance=format_balance(balance), currency=currency_proto(self.service.currency))


class NotificationServicer(notification_service_pb2_grpc.NotificationServiceServicer):
    def __init__(self, notifications: Notifications) -> None:
        self.notifications = notifications

    async def SendNotification(
        self, request: notification_service_pb2.SendNotificationRequest, context: grpc.aio.ServicerContext
    ) -> notification_service_pb2.SendNotificationResponse:
        message_id = await self.notifications.send(request.account_id, int(request.channel), request.to, request.body)
        return notification_service_pb2.SendNotificationResponse(message_id=message_id)
