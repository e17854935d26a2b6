"""Customer webhooks: events, jobs, the delivery log, backoff and the payloads they carry."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from services.messaging.domain.delivery import retry_delay
from services.messaging.domain.receipts import InboundView, ReceiptRecord
from services.messaging.domain.statuses import clicksend_receipt_view


class WebhookEvent(StrEnum):
    RECEIPT = "sms.receipt"
    INBOUND = "sms.inbound"


@dataclass(frozen=True, slots=True)
class WebhookJob:
    id: int
    account_id: int
    event: WebhookEvent
    ref: str  # receipt id or inbound message id
    attempts: int
    url: str  # "" = the account's current URL for the event
    traceparent: str = ""  # a receipt's: its message's send (the delivery's span links to it)


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    id: int
    event: str
    ref: str
    host: str
    attempt: int
    outcome: str  # DELIVERED | RETRYING | ABANDONED | REFUSED
    http_status: int
    error: str
    duration_ms: int
    time: int


WEBHOOK_MAX_ATTEMPTS: Final = 8


def webhook_backoff(attempt: int, base_seconds: float = 5.0, cap_seconds: float = 3600.0) -> float:
    """Delay before the next webhook attempt after `attempt` failures: 5 s, 10 s, 20 s ... capped."""
    return retry_delay(attempt, base_seconds, cap_seconds)


def receipt_payload(r: ReceiptRecord) -> dict[str, object]:
    """A receipt as /v3/sms/receipts shows it (and as its webhook carries it)."""
    view = clicksend_receipt_view(r.status, r.error_code)
    return {
        "timestamp_send": r.timestamp_send, "timestamp": r.timestamp, "message_id": r.message_id,
        "status_code": view.status_code, "status_text": view.status_text, "error_code": view.error_code,
        "error_text": view.error_text, "custom_string": r.custom_string, "subaccount_id": r.user_id,
        "message_type": "sms",
    }


def inbound_payload(v: InboundView) -> dict[str, object]:
    """A reply as /v3/sms/inbound shows it (and as its webhook carries it)."""
    r = v.record
    return {
        "timestamp": r.timestamp, "from": v.sender, "body": v.body, "original_body": v.original_body,
        "original_message_id": r.original_message_id, "to": r.to, "custom_string": r.custom_string,
        "message_id": r.id, "_keyword": v.keyword,
    }
