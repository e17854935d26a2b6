"""Idempotency keys: a client retry of the same send gets the first answer, nothing is sent or charged
twice."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Final

from services.messaging.domain.errors import MessageStatusCode
from services.messaging.domain.pricing import currency_for
from services.messaging.domain.records import OutboundInput, SendItem, SendResult
from svckit.errors import FailedPrecondition, InvalidArgument

IDEMPOTENCY_RECORD: Final = "sms.idempotency"
IDEMPOTENCY_TTL_S: Final = 24 * 3600
_IDEMPOTENCY_KEY_SHAPE: Final = re.compile(r"[\x21-\x7e]{1,255}")


class InvalidIdempotencyKey(InvalidArgument):
    reason = "INVALID_IDEMPOTENCY_KEY"


class IdempotencyKeyReused(FailedPrecondition):
    reason = "IDEMPOTENCY_KEY_REUSED"


def check_idempotency_key(key: str) -> str:
    """1-255 visible ASCII characters (a UUID is the usual choice)."""
    if not _IDEMPOTENCY_KEY_SHAPE.fullmatch(key):
        raise InvalidIdempotencyKey("Idempotency-Key must be 1 to 255 visible ASCII characters.")
    return key


def idempotency_key_hash(key: str) -> bytes:
    return hashlib.sha256(b"sendsafe.idempotency.v1\x00" + key.encode("ascii")).digest()


def request_fingerprint(index_key: bytes, inputs: Sequence[OutboundInput]) -> bytes:
    """A keyed digest of a send request: the same key with a different request is refused. Keyed, so the
    stored digest cannot be used to guess bodies or numbers."""
    canonical = json.dumps([dataclasses.astuple(m) for m in inputs], separators=(",", ":"), ensure_ascii=False)
    return hmac.new(index_key, b"sendsafe.sms.request.v1\x00" + canonical.encode("utf-8", "surrogatepass"),
                    hashlib.sha256).digest()


def encode_send_result(result: SendResult) -> bytes:
    """The answer to a send, to be encrypted and replayed for a retry with the same idempotency key."""
    items = [
        {
            "input": dataclasses.asdict(i.input), "status": i.status.value, "message_id": i.message_id, "to": i.to,
            "country": i.country, "sender": i.sender, "parts": i.parts, "price": str(i.price), "schedule": i.schedule,
        }
        for i in result.items
    ]
    doc = {"v": 1, "date": result.date, "currency": result.currency.currency_name_short, "items": items}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


def decode_send_result(raw: bytes) -> SendResult:
    doc = json.loads(raw.decode("utf-8", "surrogatepass"))
    if doc.get("v") != 1:
        raise ValueError("unknown stored send result version")
    items = [
        SendItem(
            input=OutboundInput(**i["input"]), status=MessageStatusCode(i["status"]), message_id=i["message_id"],
            to=i["to"], country=i["country"], sender=i["sender"], parts=int(i["parts"]), price=Decimal(i["price"]),
            schedule=int(i["schedule"]),
        )
        for i in doc["items"]
    ]
    return SendResult(date=int(doc["date"]), items=items, currency=currency_for(doc["currency"]))
