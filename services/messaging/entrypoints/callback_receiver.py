"""The HTTPS receiver for carrier callbacks: delivery receipts and replies, HMAC-signed by the carrier.

`POST /carrier/callbacks` with headers `X-Carrier-Timestamp: <unix seconds>` and
`X-Carrier-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + raw body)>` and a JSON body
`{"receipts": [{"id": <our message id>, "ref": <carrier ref>, "status": "delivered"|"failed",
"error_code": <int>}], "inbound": [{"id": <carrier's id>, "from", "to", "body", "in_reply_to": <our id or
the carrier's ref of the message answered>}]}`.

The signature (constant-time, timestamp within 5 minutes) is checked before the body is parsed. The
answer is 200 only after everything is committed, so the carrier retries anything not acknowledged: a
receipt is never lost, and a repeated one changes nothing (state transitions are idempotent, replies
are deduplicated by the carrier's id). A receipt that names only a carrier reference we have not
recorded yet (it overtook the submit answer: Jasmin's DLR race) is answered 503 so the carrier sends it
again. A reply must reference a message we sent (our id or the carrier's reference); one that matches
nothing is counted and dropped. Nothing from a callback body is ever logged.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from typing import Any

from aiohttp import web

from services.messaging.domain.delivery import Receipt, verify_signature
from services.messaging.domain.receipts import InboundInput
from services.messaging.domain.statuses import MessageStatus
from services.messaging.service.delivery import DeliveryService

_LOG = logging.getLogger(__name__)
PATH = "/carrier/callbacks"
MAX_BODY = 1 << 20
_STATUS = {"delivered": MessageStatus.DELIVERED, "failed": MessageStatus.FAILED}


class CallbackReceiver:
    def __init__(self, delivery: DeliveryService, secret: bytes, *, carrier: str = "http",
                 clock: Any = time.time) -> None:
        if not secret:
            raise ValueError("the carrier callback secret must be set")
        self._delivery = delivery
        self._secret = secret
        self._carrier = carrier
        self._clock = clock
        self.app = web.Application(client_max_size=MAX_BODY)
        self.app.router.add_post(PATH, self.handle)
        self.accepted = 0
        self.rejected = 0
        self.deferred = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, listen: str, cert_file: str, key_file: str) -> int:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert_file, key_file)
        host, _, port = listen.rpartition(":")
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host or "0.0.0.0", int(port), ssl_context=ctx)  # noqa: S104
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def handle(self, request: web.Request) -> web.Response:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _answer(413, "too large")
        ts = request.headers.get("X-Carrier-Timestamp", "")
        sig = request.headers.get("X-Carrier-Signature", "")
        if not verify_signature(self._secret, ts, raw, sig, int(self._clock())):
            self.rejected += 1
            _LOG.warning("carrier callback with a bad or stale signature refused")
            return _answer(401, "bad signature")
        try:
            doc = json.loads(raw)
            receipts, inbound = _parse(doc, self._carrier)
        except (ValueError, TypeError, AttributeError, KeyError):
            return _answer(400, "malformed")
        try:
            applied, unresolved = await self._delivery.apply_carrier_receipts(receipts) if receipts else (0, 0)
            stored = await self._delivery.receive_inbound(inbound) if inbound else 0
        except Exception as exc:  # database or keys down: the carrier retries
            _LOG.warning("carrier callback not applied (%s); the carrier will retry", type(exc).__name__)
            return _answer(503, "try again")
        if unresolved:
            # A receipt for a reference we have not recorded yet: ask for it again (it is never dropped).
            self.deferred += 1
            return _answer(503, "unknown reference; retry")
        self.accepted += 1
        return web.json_response({"ok": True, "receipts": applied, "inbound": stored})


def _answer(status: int, text: str) -> web.Response:
    return web.json_response({"ok": False, "error": text}, status=status)


def _parse(doc: dict[str, Any], carrier: str) -> tuple[list[Receipt], list[InboundInput]]:
    receipts: list[Receipt] = []
    for r in doc.get("receipts") or []:
        status = _STATUS.get(str(r.get("status", "")).lower())
        if status is None:
            continue  # intermediate states ("accepted", "sent") change nothing here
        code = r.get("error_code")
        receipts.append(Receipt(
            message_id=str(r.get("id", "")).upper(), status=status,
            error_code=code if isinstance(code, int) and status is MessageStatus.FAILED else None,
            carrier_ref=str(r.get("ref", ""))[:128],
        ))
    inbound = [
        InboundInput(carrier=carrier, carrier_ref=str(m["id"])[:128], sender=str(m.get("from", "")),
                to=str(m.get("to", "")), body=str(m.get("body", ""))[:2000], in_reply_to=str(m.get("in_reply_to", "")))
        for m in doc.get("inbound") or []
    ]
    return receipts, inbound
