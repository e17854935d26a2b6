"""SMPP 3.4 rules that need no socket: what a submit_sm_resp command_status means for the message, how a
delivery receipt reads (TLVs or the `id:… stat:… err:…` text), how a message goes on the wire (source
TON/NPI, data_coding, concatenated parts with a UDH whose count equals what pricing charged), and how an
MO body is decoded."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Final

from services.messaging.domain.encoding import Encoding, count_parts, gsm7_octets, gsm7_text, split_parts
from services.messaging.domain.statuses import TEMPORARY_FAILURE_ERROR, UNKNOWN_FAILURE_ERROR, MessageStatus


class Outcome(Enum):
    ACCEPTED = "accepted"
    BACKOFF = "backoff"  # the SMSC is saturated: slow down, then send the same PDU again
    TEMPORARY = "temporary"  # retry the message later (then dead-letter after max attempts)
    PERMANENT = "permanent"  # fail the message (refunded: no carrier took it)


THROTTLED: Final = 0x58
MSGQFUL: Final = 0x14
# Permanent refusals -> the ClickSend error code the message fails with (domain/statuses.py).
_PERMANENT: Final[dict[int, int]] = {
    0x01: UNKNOWN_FAILURE_ERROR,  # RINVMSGLEN
    0x0A: 10,  # RINVSRCADR: the sender id is refused
    0x0B: 8,  # RINVDSTADR
    0x43: UNKNOWN_FAILURE_ERROR,  # RINVESMCLASS
    0x48: 18, 0x49: 18, 0x50: 18, 0x51: 18,  # bad source/destination TON or NPI
    0x61: UNKNOWN_FAILURE_ERROR, 0x62: UNKNOWN_FAILURE_ERROR,  # bad schedule / expiry
    0x66: 15,  # ESME_RX_R_APPN: rejected by the recipient side
}


def submit_outcome(command_status: int) -> tuple[Outcome, int | None]:
    """(outcome, ClickSend error code when not accepted). Unknown and vendor codes (0x400-0x4FF) are
    temporary: the message is retried, then dead-lettered by the max-attempts rule."""
    if command_status == 0:
        return Outcome.ACCEPTED, None
    if command_status in (THROTTLED, MSGQFUL):
        return Outcome.BACKOFF, TEMPORARY_FAILURE_ERROR
    if command_status in _PERMANENT:
        return Outcome.PERMANENT, _PERMANENT[command_status]
    return Outcome.TEMPORARY, TEMPORARY_FAILURE_ERROR


# -- delivery receipts ---------------------------------------------------------------------------------
ESM_TYPE_MASK: Final = 0x3C
ESM_RECEIPTS: Final = frozenset({0x04, 0x08, 0x10, 0x20})  # SMSC DLR, SME ack, manual ack, intermediate
ESM_UDHI: Final = 0x40

# message_state TLV (0x0427) and the text's stat: -> our final state (None: not final, changes nothing).
_STATE: Final[dict[int, MessageStatus | None]] = {
    1: None, 2: MessageStatus.DELIVERED, 3: MessageStatus.FAILED, 4: MessageStatus.FAILED,
    5: MessageStatus.FAILED, 6: None, 7: None, 8: MessageStatus.FAILED,
}
_STAT: Final[dict[str, int]] = {
    "ENROUTE": 1, "DELIVRD": 2, "DELIVERED": 2, "EXPIRED": 3, "DELETED": 4, "UNDELIV": 5, "UNDELIVERABLE": 5,
    "ACCEPTD": 6, "ACCEPTED": 6, "UNKNOWN": 7, "REJECTD": 8, "REJECTED": 8,
}
# Final failure states -> ClickSend error code.
_STATE_ERROR: Final[dict[int, int]] = {3: 17, 4: UNKNOWN_FAILURE_ERROR, 5: UNKNOWN_FAILURE_ERROR, 8: 15}
_FIELD: Final = re.compile(r"(?i)(?:^|\s)(id|stat|err)\s*:\s*(\S*)")


@dataclass(frozen=True, slots=True)
class Dlr:
    refs: tuple[str, ...]  # the SMSC's message id, then other spellings of it (hex <-> decimal) to try
    state: int  # SMPP message_state (7 UNKNOWN when neither the TLV nor the text says)
    status: MessageStatus | None  # None: intermediate, the message stays as it is
    error_code: int | None  # ClickSend error code when FAILED


def is_receipt(esm_class: int) -> bool:
    return (esm_class & ESM_TYPE_MASK) in ESM_RECEIPTS


def parse_dlr(receipted_id: str, message_state: int | None, text: str) -> Dlr | None:
    """A receipt from its TLVs (preferred) or its text. None when it names no message id at all.

    Tolerant: fields may be missing or in any case, `sub:`/`dlvrd:`/`text:` are ignored (Jasmin leaves
    them out), and because some SMSCs give the id in hex in one place and in decimal in the other, the
    other spelling is offered as a second reference to look up."""
    fields = {m.group(1).lower(): m.group(2) for m in _FIELD.finditer(text)}
    ref = receipted_id.strip() or fields.get("id", "").strip()
    if not ref:
        return None
    state = message_state if message_state in _STATE else _STAT.get(fields.get("stat", "").upper(), 7)
    status = _STATE[state]
    error = _STATE_ERROR.get(state, UNKNOWN_FAILURE_ERROR) if status is MessageStatus.FAILED else None
    return Dlr(refs=_spellings(ref, fields.get("id", "")), state=state, status=status, error_code=error)


def _spellings(ref: str, text_id: str) -> tuple[str, ...]:
    out = [ref]
    if text_id and text_id != ref:
        out.append(text_id)
    for r in list(out):
        if r.isdigit() and len(r) < 20:
            out += [format(int(r), "X"), format(int(r), "x")]
        elif re.fullmatch(r"[0-9A-Fa-f]{1,16}", r):
            out.append(str(int(r, 16)))
    return tuple(dict.fromkeys(x for x in out if x))


# -- submit_sm: addresses, coding, parts ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Address:
    ton: int
    npi: int
    addr: str


def source_address(sender: str) -> Address:
    """International number (`+61…` or a long digit string): TON 1 NPI 1, digits without `+`; a short
    code (up to 8 digits): TON 3 NPI 0; alphanumeric: TON 5 NPI 0; empty (shared number): 0/0 and ``
    (the SMSC fills in the account's number)."""
    s = sender.strip()
    if not s:
        return Address(0, 0, "")
    digits = s.lstrip("+")
    if digits.isdigit():
        if s.startswith("+") or len(digits) > 8:
            return Address(1, 1, digits)
        return Address(3, 0, digits)
    return Address(5, 0, s[:11])


def destination_address(e164: str) -> Address:
    return Address(1, 1, e164.strip().lstrip("+"))


@dataclass(frozen=True, slots=True)
class WireMessage:
    data_coding: int
    esm_class: int
    parts: tuple[bytes, ...]  # each part's short_message (UDH included when concatenated)


def udh_ref(message_id: str) -> int:
    """The 8-bit concatenation reference: from our message id, so a resubmission reuses it."""
    return int(message_id.replace("-", "")[-2:], 16)


def wire_message(body: str, message_id: str) -> WireMessage:
    """GSM-7 (unpacked septets) as data_coding 0, anything else UCS-2 (UTF-16BE) as 8; a body of more
    than one part is split exactly as encoding.py counts and prices it, each part prefixed with the UDH
    `05 00 03 <ref> <total> <seq>` and esm_class 0x40."""
    encoding = count_parts(body).encoding
    chunks = split_parts(body)
    if encoding is Encoding.GSM7:
        coding, raw = 0, [gsm7_octets(c) for c in chunks]
    else:
        coding, raw = 8, [c.encode("utf-16-be") for c in chunks]
    if len(raw) <= 1:
        return WireMessage(coding, 0, tuple(raw))
    if len(raw) > 255:
        raise ValueError("too many parts")
    ref = udh_ref(message_id)
    parts = tuple(bytes([0x05, 0x00, 0x03, ref, len(raw), i]) + r for i, r in enumerate(raw, start=1))
    return WireMessage(coding, ESM_UDHI, parts)


def decode_text(data_coding: int, esm_class: int, short_message: bytes) -> str:
    """An MO body as text (the UDH of a concatenated part is dropped; each part arrives as its own
    reply). data_coding 0 is read as GSM 03.38, 8 as UCS-2, 3 as Latin-1; anything else as Latin-1."""
    raw = short_message
    if esm_class & ESM_UDHI and raw:
        raw = raw[1 + raw[0]:]
    if data_coding == 8:
        return raw.decode("utf-16-be", "replace")
    if data_coding == 0:
        return gsm7_text(raw)
    if data_coding == 1:
        return raw.decode("ascii", "replace")
    return raw.decode("latin-1")
