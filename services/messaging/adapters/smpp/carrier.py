"""`SmppCarrier`: the Carrier port over one SMPP 3.4 transceiver session.

Submit: every message goes as one submit_sm per part (GSM-7 as data_coding 0, else UCS-2; parts with a
UDH, as many as pricing charged: domain/smpp.py), messages side by side through the session's window,
the parts of one message in order. Only the LAST part asks for a delivery receipt (registered_delivery 1,
the others 0), so one DLR settles one message, and the carrier ref we store is that part's
submit_sm_resp message_id (`messages.carrier_ref`, indexed): a receipt finds its message after a worker
restart. A failure of an earlier part is not reported by the SMSC in this scheme (it answers only the
last part's fate); a refused part fails or retries the whole message.

command_status: ESME_RTHROTTLED / ESME_RMSGQFUL pause the session (1 s doubling, up to 5 tries) and send
the same part again; permanent refusals fail the message with a ClickSend error code (refunded: nothing
was taken); anything else is a temporary failure (retried, then dead-lettered). A part sent but not
answered (timeout, dropped connection) is a temporary failure: SMPP has no idempotency key, so the
retry may deliver a duplicate of what the SMSC took before the drop (at most the window's worth of
messages per drop). `CarrierDown` (a fallback route may take the batch) is raised only when the session
is not bound and nothing of the batch was sent.

deliver_sm: a receipt (esm_class DLR types) is matched by its receipted_message_id (or the text's id, in
hex or decimal) against refs answered in this process (the DLR may overtake our own write of the ref) and
then the stored refs; applied through `DeliveryService.settle_carrier_receipts` and acknowledged ROK once
stored. A receipt for a ref nobody knows is answered ESME_RX_T_APPN so the SMSC sends it again later.
An intermediate one (ENROUTE/ACCEPTD/UNKNOWN) changes nothing. An MO becomes a reply
(`DeliveryService.receive_inbound`, matched by the numbers; STOP/START change opt-outs), acknowledged after
it is stored. Receipts arriving together are stored together (svckit.groupcommit).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from services.messaging.adapters.carriers import CarrierDown
from services.messaging.adapters.smpp import pdu as p
from services.messaging.adapters.smpp.session import NotBound, OutcomeUnknown, Session, SessionConfig
from services.messaging.domain.delivery import Receipt, Submission, SubmitResult
from services.messaging.domain.receipts import InboundInput
from services.messaging.domain.smpp import (
    Outcome,
    decode_text,
    destination_address,
    is_receipt,
    parse_dlr,
    source_address,
    submit_outcome,
    wire_message,
)
from services.messaging.domain.statuses import TEMPORARY_FAILURE_ERROR
from services.messaging.service.ports import ReceiptHandler
from svckit.groupcommit import GroupCommit

_LOG = logging.getLogger(__name__)
SettleReceipts = Callable[[list[Receipt]], Awaitable[tuple[int, list[bool]]]]
StoreInbound = Callable[[list[InboundInput]], Awaitable[int]]
_RECENT_MAX = 200_000


class SmppCarrier:
    name = "smpp"

    def __init__(self, config: SessionConfig, *, bind_wait_s: float = 5.0, throttle_pause_s: float = 1.0,
                 throttle_tries: int = 5) -> None:
        self.session = Session(config, self._on_deliver, name="smpp carrier")
        self._bind_wait = bind_wait_s
        self._throttle_pause = throttle_pause_s
        self._throttle_tries = throttle_tries
        self._settle: SettleReceipts | None = None
        self._inbound: StoreInbound | None = None
        self._recent: OrderedDict[str, str] = OrderedDict()  # carrier ref -> our id, answered in this process
        self._dlrs: GroupCommit[tuple[tuple[str, ...], Receipt], int] = GroupCommit(self._apply_dlrs, max_batch=500)
        self.receipts_applied = self.receipts_deferred = self.receipts_ignored = self.inbound = 0

    def attach(self, settle: SettleReceipts, inbound: StoreInbound) -> None:
        """Where receipts and replies go (DeliveryService.settle_carrier_receipts / receive_inbound)."""
        self._settle, self._inbound = settle, inbound

    async def start(self, wait_s: float = 0.0) -> bool:
        """Connect and bind in the background; wait up to `wait_s` for the first bind (False: not yet)."""
        self.session.start()
        return await self.session.wait_bound(wait_s) if wait_s else self.session.bound.is_set()

    async def close(self) -> None:
        await self.session.stop()

    # -- submit ----------------------------------------------------------------------------------------
    async def submit(self, batch: Sequence[Submission]) -> list[SubmitResult]:
        if not batch:
            return []
        if not await self.session.wait_bound(self._bind_wait):
            raise CarrierDown("SMPP session not bound")
        answers = await asyncio.gather(*(self._submit_one(s) for s in batch))
        if all(a is None for a in answers):
            raise CarrierDown("SMPP session lost before anything was sent")
        return [a or SubmitResult(s.message_id, accepted=False, error_code=TEMPORARY_FAILURE_ERROR)
                for s, a in zip(batch, answers, strict=True)]

    async def _submit_one(self, sub: Submission) -> SubmitResult | None:
        """The message's result; None when none of its parts was sent (the session was not bound)."""
        wire = wire_message(sub.body, sub.message_id)
        parts = wire.parts or (b"",)
        src, dst = source_address(sub.sender), destination_address(sub.to)
        ref = ""
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            pdu = p.Pdu(p.SUBMIT_SM, params={
                "source_addr_ton": src.ton, "source_addr_npi": src.npi, "source_addr": src.addr,
                "dest_addr_ton": dst.ton, "dest_addr_npi": dst.npi, "destination_addr": dst.addr,
                "esm_class": wire.esm_class, "registered_delivery": 1 if last else 0,
                "data_coding": wire.data_coding, "short_message": part,
            })
            try:
                resp = await self._send_part(pdu)
            except NotBound:
                if i == 0:
                    return None
                return SubmitResult(sub.message_id, accepted=False, error_code=TEMPORARY_FAILURE_ERROR)
            except OutcomeUnknown:
                return SubmitResult(sub.message_id, accepted=False, error_code=TEMPORARY_FAILURE_ERROR)
            outcome, code = submit_outcome(resp.status)
            if resp.command_id == p.GENERIC_NACK:
                outcome, code = Outcome.TEMPORARY, TEMPORARY_FAILURE_ERROR
            if outcome is not Outcome.ACCEPTED:
                return SubmitResult(sub.message_id, accepted=False, error_code=code)
            if last:
                ref = resp.str_param("message_id")
        if ref:
            self._remember(ref, sub.message_id)
        return SubmitResult(sub.message_id, accepted=True, carrier_ref=ref[:128])

    async def _send_part(self, pdu: p.Pdu) -> p.Pdu:
        pause = self._throttle_pause
        for _ in range(self._throttle_tries):
            resp = await self.session.request(pdu, wait_bound=self._bind_wait)
            if submit_outcome(resp.status)[0] is not Outcome.BACKOFF:
                return resp
            self.session.pause(pause)
            pause = min(pause * 2, 5.0)
        return resp

    def _remember(self, ref: str, message_id: str) -> None:
        self._recent[ref] = message_id
        if len(self._recent) > _RECENT_MAX:
            self._recent.popitem(last=False)

    async def pump_receipts(self, handle: ReceiptHandler, limit: int) -> int:
        return 0  # receipts arrive as deliver_sm on the session and are stored as they come

    # -- deliver_sm ------------------------------------------------------------------------------------
    async def _on_deliver(self, pdu: p.Pdu) -> int:
        esm = pdu.int_param("esm_class")
        raw = pdu.bytes_param("short_message") or pdu.tlvs.get(p.TLV_MESSAGE_PAYLOAD, b"")
        if is_receipt(esm):
            dlr = parse_dlr(p.tlv_text(pdu, p.TLV_RECEIPTED_MESSAGE_ID), p.tlv_int(pdu, p.TLV_MESSAGE_STATE),
                            raw.decode("latin-1"))
            if dlr is None or dlr.status is None:
                self.receipts_ignored += 1  # intermediate, or no id at all: nothing can ever match it
                return p.ESME_ROK
            return await self._dlrs.submit((dlr.refs, Receipt("", dlr.status, dlr.error_code)))
        if self._inbound is None:
            return p.ESME_RX_T_APPN
        source = pdu.str_param("source_addr")
        sender = "+" + source if source.isdigit() and pdu.int_param("source_addr_ton") in (0, 1) else source
        text = decode_text(pdu.int_param("data_coding"), esm, raw)
        await self._inbound([InboundInput(carrier=self.name, carrier_ref="", sender=sender,
                                          to=pdu.str_param("destination_addr"), body=text, in_reply_to="")])
        self.inbound += 1
        return p.ESME_ROK

    async def _apply_dlrs(self, dlrs: list[tuple[tuple[str, ...], Receipt]]) -> list[int]:
        """Each DLR's deliver_sm_resp status: ROK once stored, ESME_RX_T_APPN for an unknown reference."""
        if self._settle is None:
            return [p.ESME_RX_T_APPN] * len(dlrs)
        # Refs answered in this process first (our own write of the ref may not have committed yet), then
        # the stored refs, trying the other spellings (hex/decimal) of those not found.
        first = [replace(r, message_id=next((self._recent[x] for x in refs if x in self._recent), ""),
                         carrier_ref=refs[0]) for refs, r in dlrs]
        _, found = await self._settle(first)
        done = list(found)
        for k in range(1, max(len(refs) for refs, _ in dlrs)):
            retry = [i for i, (refs, _) in enumerate(dlrs) if not done[i] and k < len(refs)]
            if not retry:
                break
            _, found = await self._settle([replace(dlrs[i][1], carrier_ref=dlrs[i][0][k]) for i in retry])
            for i, ok in zip(retry, found, strict=True):
                done[i] = ok
        self.receipts_applied += sum(done)
        self.receipts_deferred += len(done) - sum(done)
        if not all(done):
            _LOG.info("%d SMPP receipts name unknown references; the SMSC will send them again",
                      len(done) - sum(done))
        return [p.ESME_ROK if ok else p.ESME_RX_T_APPN for ok in done]
