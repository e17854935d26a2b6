"""gRPC edge of the messaging service: protobuf <-> domain, nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.api import httpbody_pb2
from google.protobuf import timestamp_pb2

from sendsafe.context.v1 import principal_pb2
from sendsafe.messaging.v1 import (
    export_service_pb2,
    export_service_pb2_grpc,
    messaging_service_pb2_grpc,
    notification_service_pb2,
    notification_service_pb2_grpc,
    sms_pb2,
)
from sendsafe.messaging.v1 import messaging_service_pb2 as pb
from services.messaging.domain.destinations import Destination
from services.messaging.domain.exports import CONTENT_TYPE as EXPORT_CONTENT_TYPE
from services.messaging.domain.exports import ExportRecord
from services.messaging.domain.history import (
    HistoryItem,
    HistoryPage,
    HistoryQuery,
    parse_history_filter,
    parse_history_sort,
)
from services.messaging.domain.limits import SendLimits
from services.messaging.domain.pricing import Currency, format_balance, format_price
from services.messaging.domain.receipts import InboundView, ReceiptRecord
from services.messaging.domain.records import Caller, OutboundInput, SendItem, SendResult
from services.messaging.domain.settings import MessagingSettings, SettingsUpdate
from services.messaging.domain.statuses import clicksend_receipt_view
from services.messaging.domain.webhooks import WebhookDelivery
from services.messaging.service.exports import Exports
from services.messaging.service.list_sends import for_caller
from services.messaging.service.messaging import MessagingService
from services.messaging.service.notifications import Notifications
from svckit import context as callctx
from svckit.errors import PermissionDenied
from svckit.paging import clicksend_paging, page_window
from svckit.senders import forms
from svckit.times import optional_unix_seconds

IDEMPOTENCY_METADATA_KEY = "idempotency-key"


def _limits(s: principal_pb2.SendLimits) -> SendLimits:
    return SendLimits(per_minute=max(0, s.messages_per_minute), per_day=max(0, s.messages_per_day),
                      countries=frozenset(c.strip().upper() for c in s.allowed_countries if c.strip()),
                      bucket=s.bucket_key_id, senders=forms(s.allowed_senders) if s.senders_limited else None)


def caller_from_context() -> Caller:
    p = callctx.principal()
    if p is None or p.account_id <= 0:
        raise PermissionDenied("this call needs an account principal")
    limits = _limits(p.send_limits) if p.HasField("send_limits") else SendLimits()
    return Caller(account_id=p.account_id, user_id=p.user_id, api_username=p.api_username, test_mode=p.test_mode,
                  api_key_id=p.api_key_id, limits=limits, deidentified=p.sms_deidentify_message, staff=p.staff)


def idempotency_key(context: grpc.aio.ServicerContext) -> str:
    """The client's Idempotency-Key header, which the gateway forwards as metadata."""
    for key, value in context.invocation_metadata() or ():
        if key == IDEMPOTENCY_METADATA_KEY:
            return value if isinstance(value, str) else value.decode("ascii", "replace")
    return ""


def to_input(m: sms_pb2.OutboundSms | sms_pb2.PriceSmsInput) -> OutboundInput:
    return OutboundInput(
        body=m.body, to=m.to, country=m.country, sender=m.sender, schedule=m.schedule,
        custom_string=m.custom_string, source=m.source, list_id=m.list_id,
        from_email=m.from_email if isinstance(m, sms_pb2.OutboundSms) else "",
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


def priced_proto(item: SendItem, date: int) -> sms_pb2.PricedSms:
    return sms_pb2.PricedSms(
        date=str(date), to=item.to, body=item.input.body, sender=item.sender,
        schedule=str(item.schedule) if item.schedule else "", message_id=item.message_id,
        message_parts=item.parts, message_price=format_price(item.price), custom_string=item.input.custom_string,
        contact_id=item.input.contact_id, is_shared_system_number=not item.sender, country=item.country,
        status=item.status.value,
    )


def price_response(result: SendResult) -> pb.PriceSmsResponse:
    return pb.PriceSmsResponse(
        total_price=float(result.total_price), total_count=len(result.items), queued_count=result.queued_count,
        blocked_count=result.blocked_count, currency=currency_proto(result.currency),
        messages=[priced_proto(i, result.date) for i in result.items],
    )


def history_proto(item: HistoryItem, caller: Caller | None) -> sms_pb2.HistorySms:
    m, st = item.message, item.status
    out = sms_pb2.HistorySms(
        direction="out", date=m.date, to=item.to, body=item.body, sender=m.sender,
        schedule=str(m.schedule) if m.schedule else "", status=st.status, status_code=st.status_code,
        status_text=st.status_text, message_id=m.id, message_parts=m.parts, message_price=format_price(m.price),
        from_email=m.from_email, list_id=m.list_id, custom_string=m.custom_string, contact_id=m.contact_id,
        user_id=m.account_id, subaccount_id=m.user_id, country=m.country, carrier=m.carrier,
        api_username=caller.api_username if caller is not None and m.user_id == caller.user_id else m.api_username,
    )
    if st.error_code is not None:
        out.error_code = st.error_code
    if st.error_text is not None:
        out.error_text = st.error_text
    return out


def history_response(page: HistoryPage, caller: Caller) -> pb.ListSmsHistoryResponse:
    return pb.ListSmsHistoryResponse(
        data=[history_proto(i, caller) for i in page.items],
        **clicksend_paging(page.window, page.total, len(page.items)),  # type: ignore[arg-type]
    )


def receipt_proto(r: ReceiptRecord) -> sms_pb2.SmsReceipt:
    view = clicksend_receipt_view(r.status, r.error_code)
    out = sms_pb2.SmsReceipt(
        timestamp_send=r.timestamp_send, timestamp=r.timestamp, message_id=r.message_id,
        status_code=view.status_code, status_text=view.status_text, custom_string=r.custom_string,
        subaccount_id=r.user_id, message_type="sms",
    )
    if view.error_code is not None:
        out.error_code = view.error_code
    if view.error_text is not None:
        out.error_text = view.error_text
    return out


def inbound_proto(v: InboundView) -> sms_pb2.InboundSms:
    r = v.record
    return sms_pb2.InboundSms(
        timestamp=r.timestamp, sender=v.sender, body=v.body, original_body=v.original_body,
        original_message_id=r.original_message_id, to=r.to, custom_string=r.custom_string, message_id=r.id,
        keyword=v.keyword,
    )


def inbound_test_proto(v: InboundView) -> sms_pb2.InboundSmsTest:
    r = v.record
    return sms_pb2.InboundSmsTest(
        timestamp_send=r.timestamp, sender=v.sender, body=v.body, original_body=v.original_body,
        original_message_id=r.original_message_id, to=r.to, custom_string=r.custom_string, message_id=r.id,
        keyword=v.keyword,
    )


def _time(unix: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=unix)


def settings_proto(s: MessagingSettings) -> sms_pb2.MessagingSettings:
    return sms_pb2.MessagingSettings(
        receipt_webhook_url=s.receipt_webhook_url, inbound_webhook_url=s.inbound_webhook_url,
        body_retention_days=s.body_retention_days, staff_content_access=s.staff_content_access,
        webhook_secret_set=s.has_webhook_secret, update_time=_time(s.update_time) if s.update_time else None,
    )


def delivery_proto(d: WebhookDelivery) -> sms_pb2.WebhookDelivery:
    return sms_pb2.WebhookDelivery(
        id=d.id, event=d.event, ref=d.ref, host=d.host, attempt=d.attempt, outcome=d.outcome,
        http_status=d.http_status, error=d.error, duration_ms=d.duration_ms, create_time=_time(d.time),
    )


class MessagingServicer(messaging_service_pb2_grpc.MessagingServiceServicer):
    def __init__(self, service: MessagingService) -> None:
        self.service = service

    async def SendSms(self, request: pb.SendSmsRequest, context: grpc.aio.ServicerContext) -> pb.SendSmsResponse:
        caller = caller_from_context()
        result = await self.service.send_sms(caller, [to_input(m) for m in request.messages], idempotency_key(context))
        return send_response(for_caller(caller, result), caller)

    async def PriceSms(self, request: pb.PriceSmsRequest, context: grpc.aio.ServicerContext) -> pb.PriceSmsResponse:
        caller = caller_from_context()
        result = await self.service.price_sms(caller, [to_input(m) for m in request.messages])
        return price_response(for_caller(caller, result))

    async def ListSmsHistory(
        self, request: pb.ListSmsHistoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSmsHistoryResponse:
        caller = caller_from_context()
        query = HistoryQuery(
            window=page_window(request.page, request.limit),
            date_from=optional_unix_seconds(request.date_from, "date_from"),
            date_to=optional_unix_seconds(request.date_to, "date_to"), filter=parse_history_filter(request.q),
            sort=parse_history_sort(request.order_by),
        )
        return history_response(await self.service.list_history(caller, query), caller)

    async def ListSmsReceipts(
        self, request: pb.ListSmsReceiptsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSmsReceiptsResponse:
        page = await self.service.list_receipts(caller_from_context(), page_window(request.page, request.limit))
        return pb.ListSmsReceiptsResponse(
            data=[receipt_proto(r) for r in page.items],
            **clicksend_paging(page.window, page.total, len(page.items)),  # type: ignore[arg-type]
        )

    async def GetSmsReceipt(
        self, request: pb.GetSmsReceiptRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSmsReceiptResponse:
        r = await self.service.get_receipt(caller_from_context(), request.message_id)
        return pb.GetSmsReceiptResponse(receipt=receipt_proto(r))

    async def MarkSmsReceiptsRead(
        self, request: pb.MarkSmsReceiptsReadRequest, context: grpc.aio.ServicerContext
    ) -> pb.MarkSmsReceiptsReadResponse:
        await self.service.mark_receipts_read(caller_from_context(), request.date_before)
        return pb.MarkSmsReceiptsReadResponse()

    async def CreateTestSmsReceipt(
        self, request: pb.CreateTestSmsReceiptRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateTestSmsReceiptResponse:
        r = await self.service.create_test_receipt(caller_from_context(), request.url)
        return pb.CreateTestSmsReceiptResponse(receipt=receipt_proto(r))

    async def ListInboundSms(
        self, request: pb.ListInboundSmsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListInboundSmsResponse:
        page = await self.service.list_inbound(caller_from_context(), page_window(request.page, request.limit))
        return pb.ListInboundSmsResponse(
            data=[inbound_proto(v) for v in page.items],
            **clicksend_paging(page.window, page.total, len(page.items)),  # type: ignore[arg-type]
        )

    async def GetInboundSms(
        self, request: pb.GetInboundSmsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetInboundSmsResponse:
        v = await self.service.get_inbound(caller_from_context(), request.original_message_id)
        return pb.GetInboundSmsResponse(inbound=inbound_proto(v))

    async def MarkInboundSmsRead(
        self, request: pb.MarkInboundSmsReadRequest, context: grpc.aio.ServicerContext
    ) -> pb.MarkInboundSmsReadResponse:
        await self.service.mark_inbound_read(caller_from_context(), request.date_before)
        return pb.MarkInboundSmsReadResponse()

    async def MarkInboundSmsReadById(
        self, request: pb.MarkInboundSmsReadByIdRequest, context: grpc.aio.ServicerContext
    ) -> pb.MarkInboundSmsReadByIdResponse:
        count = await self.service.mark_inbound_read_by_id(caller_from_context(), request.message_id)
        return pb.MarkInboundSmsReadByIdResponse(count=count)

    async def CreateTestInboundSms(
        self, request: pb.CreateTestInboundSmsRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateTestInboundSmsResponse:
        v = await self.service.create_test_inbound(
            caller_from_context(), request.url, request.original_message_id, request.body)
        return pb.CreateTestInboundSmsResponse(inbound=inbound_test_proto(v))

    async def CancelSms(self, request: pb.CancelSmsRequest, context: grpc.aio.ServicerContext) -> pb.CancelSmsResponse:
        await self.service.cancel_sms(caller_from_context(), request.message_id)
        return pb.CancelSmsResponse()

    async def CancelAllSms(
        self, request: pb.CancelAllSmsRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelAllSmsResponse:
        count = await self.service.cancel_all(caller_from_context(), request.custom_string)
        return pb.CancelAllSmsResponse(count=count)

    async def GetMessagingSettings(
        self, request: pb.GetMessagingSettingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetMessagingSettingsResponse:
        return pb.GetMessagingSettingsResponse(
            settings=settings_proto(await self.service.get_settings(caller_from_context())))

    async def UpdateMessagingSettings(
        self, request: pb.UpdateMessagingSettingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateMessagingSettingsResponse:
        update = SettingsUpdate(
            receipt_webhook_url=request.receipt_webhook_url if request.HasField("receipt_webhook_url") else None,
            inbound_webhook_url=request.inbound_webhook_url if request.HasField("inbound_webhook_url") else None,
            body_retention_days=request.body_retention_days if request.HasField("body_retention_days") else None,
            staff_content_access=request.staff_content_access if request.HasField("staff_content_access") else None,
        )
        saved, secret = await self.service.update_settings(caller_from_context(), update)
        return pb.UpdateMessagingSettingsResponse(settings=settings_proto(saved), webhook_secret=secret)

    async def RotateWebhookSecret(
        self, request: pb.RotateWebhookSecretRequest, context: grpc.aio.ServicerContext
    ) -> pb.RotateWebhookSecretResponse:
        return pb.RotateWebhookSecretResponse(
            webhook_secret=await self.service.rotate_webhook_secret(caller_from_context()))

    async def ListWebhookDeliveries(
        self, request: pb.ListWebhookDeliveriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListWebhookDeliveriesResponse:
        rows = await self.service.webhook_deliveries(caller_from_context(), request.limit, request.before_id)
        limit = max(1, min(request.limit or 50, 100))
        return pb.ListWebhookDeliveriesResponse(
            deliveries=[delivery_proto(d) for d in rows],
            next_before_id=rows[-1].id if len(rows) == limit else 0,
        )

    async def StaffListSmsHistory(
        self, request: pb.StaffListSmsHistoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.StaffListSmsHistoryResponse:
        caller = caller_from_context()
        page, visible = await self.service.staff_history(
            caller, request.account_id, page_window(request.page, request.limit),
            optional_unix_seconds(request.date_from, "date_from"), optional_unix_seconds(request.date_to, "date_to"))
        return pb.StaffListSmsHistoryResponse(
            total=page.total, content_visible=visible, messages=[history_proto(i, None) for i in page.items])

    async def GetBalance(
        self, request: pb.GetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetBalanceResponse:
        balance = await self.service.get_balance(request.account_id)
        return pb.GetBalanceResponse(balance=format_balance(balance), currency=currency_proto(self.service.currency))

    async def StopAccountSends(self, request: pb.StopAccountSendsRequest, context: grpc.aio.ServicerContext
                               ) -> pb.StopAccountSendsResponse:
        return pb.StopAccountSendsResponse(cancelled=await self.service.closures.stop_sends(request.account_id))

    async def ResumeAccountSends(self, request: pb.ResumeAccountSendsRequest, context: grpc.aio.ServicerContext
                                 ) -> pb.ResumeAccountSendsResponse:
        await self.service.closures.resume_sends(request.account_id)
        return pb.ResumeAccountSendsResponse()

    async def PurgeAccountData(self, request: pb.PurgeAccountDataRequest, context: grpc.aio.ServicerContext
                               ) -> pb.PurgeAccountDataResponse:
        return pb.PurgeAccountDataResponse(deleted_rows=await self.service.closures.purge(request.account_id))


class NotificationServicer(notification_service_pb2_grpc.NotificationServiceServicer):
    def __init__(self, notifications: Notifications) -> None:
        self.notifications = notifications

    async def SendNotification(
        self, request: notification_service_pb2.SendNotificationRequest, context: grpc.aio.ServicerContext
    ) -> notification_service_pb2.SendNotificationResponse:
        owner = None
        if request.HasField("owner"):
            o = request.owner
            owner = Caller(request.account_id, o.user_id, o.api_username, api_key_id=o.api_key_id,
                           limits=_limits(o.send_limits) if o.HasField("send_limits") else SendLimits())
        message_id = await self.notifications.send(
            request.account_id, int(request.channel), request.to, request.body, owner, subject=request.subject,
            notification_id=request.notification_id, account_owners=request.account_owners)
        return notification_service_pb2.SendNotificationResponse(message_id=message_id)

    async def SendClosureReceipt(
        self, request: notification_service_pb2.SendClosureReceiptRequest, context: grpc.aio.ServicerContext
    ) -> notification_service_pb2.SendClosureReceiptResponse:
        message_id = await self.notifications.send_closure_receipt(
            request.account_id, request.to, request.receipt, request.signature, request.signing_key_id)
        return notification_service_pb2.SendClosureReceiptResponse(message_id=message_id)

    async def CheckDestination(
        self, request: notification_service_pb2.CheckDestinationRequest, context: grpc.aio.ServicerContext
    ) -> notification_service_pb2.CheckDestinationResponse:
        verified = await self.notifications.check(request.account_id, int(request.channel), request.to)
        return notification_service_pb2.CheckDestinationResponse(verified=verified)

    async def StartDestinationVerification(
        self, request: notification_service_pb2.StartDestinationVerificationRequest,
        context: grpc.aio.ServicerContext,
    ) -> notification_service_pb2.StartDestinationVerificationResponse:
        dest, expires = await self.notifications.start_verification(
            caller_from_context(), int(request.channel), request.to)
        return notification_service_pb2.StartDestinationVerificationResponse(
            destination=destination_proto(dest), expire_time=_timestamp(expires))

    async def VerifyDestination(
        self, request: notification_service_pb2.VerifyDestinationRequest, context: grpc.aio.ServicerContext
    ) -> notification_service_pb2.VerifyDestinationResponse:
        dest = await self.notifications.verify(caller_from_context(), request.destination_id, request.code)
        return notification_service_pb2.VerifyDestinationResponse(destination=destination_proto(dest))

    async def ListDestinations(
        self, request: notification_service_pb2.ListDestinationsRequest, context: grpc.aio.ServicerContext
    ) -> notification_service_pb2.ListDestinationsResponse:
        found = await self.notifications.list(caller_from_context())
        return notification_service_pb2.ListDestinationsResponse(destinations=[destination_proto(d) for d in found])


def _timestamp(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


def destination_proto(d: Destination) -> notification_service_pb2.NotificationDestination:
    return notification_service_pb2.NotificationDestination(
        destination_id=d.destination_id, channel=d.channel,  # type: ignore[arg-type]
        to=d.to_masked, verified=d.verified, create_time=_timestamp(d.create_time),
        verify_time=None if d.verify_time is None else _timestamp(d.verify_time),
    )


def _optional_time(unix: int | None) -> timestamp_pb2.Timestamp | None:
    return None if unix is None else _time(unix)


def export_proto(e: ExportRecord) -> export_service_pb2.AccountExport:
    return export_service_pb2.AccountExport(
        export_id=e.id, state=export_service_pb2.AccountExportState.Value(f"ACCOUNT_EXPORT_STATE_{e.state.value}"),
        counts=dict(e.counts), bytes=e.total_bytes, chunks=e.chunks, create_time=_time(e.create_time),
        complete_time=_optional_time(e.complete_time), expire_time=_optional_time(e.expire_time),
        download_time=_optional_time(e.download_time), user_id=e.user_id, failure_reason=e.failure_reason,
    )


class AccountExportServicer(export_service_pb2_grpc.AccountExportServiceServicer):
    def __init__(self, exports: Exports) -> None:
        self.exports = exports

    async def CreateAccountExport(
        self, request: export_service_pb2.CreateAccountExportRequest, context: grpc.aio.ServicerContext
    ) -> export_service_pb2.CreateAccountExportResponse:
        return export_service_pb2.CreateAccountExportResponse(
            export=export_proto(await self.exports.create(caller_from_context())))

    async def GetAccountExport(
        self, request: export_service_pb2.GetAccountExportRequest, context: grpc.aio.ServicerContext
    ) -> export_service_pb2.GetAccountExportResponse:
        return export_service_pb2.GetAccountExportResponse(
            export=export_proto(await self.exports.get(caller_from_context(), request.export_id)))

    async def ListAccountExports(
        self, request: export_service_pb2.ListAccountExportsRequest, context: grpc.aio.ServicerContext
    ) -> export_service_pb2.ListAccountExportsResponse:
        found = await self.exports.list(caller_from_context(), request.limit)
        return export_service_pb2.ListAccountExportsResponse(exports=[export_proto(e) for e in found])

    async def DownloadAccountExport(  # type: ignore[override]
        self, request: export_service_pb2.DownloadAccountExportRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        chunks = await self.exports.download(caller_from_context(), request.export_id)
        async for data in chunks:
            yield httpbody_pb2.HttpBody(content_type=EXPORT_CONTENT_TYPE, data=data)
