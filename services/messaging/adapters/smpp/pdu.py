"""SMPP 3.4 PDUs: framing by the length header, encoding and tolerant decoding of the PDUs SendSafe and
its SMSC simulator speak (bind_* (+resp), unbind (+resp), enquire_link (+resp), submit_sm (+resp),
deliver_sm (+resp), generic_nack), C-octet strings and TLVs.

Decoding never raises anything but `PduError` (a garbled body: the peer gets a generic_nack or an error
resp and the session continues) or `FramingError` (the length header itself is impossible: the byte
stream cannot be resynchronised, so the connection is closed). Unknown TLVs are kept, missing trailing
optional fields are tolerated, unknown command ids decode with an empty body (the caller nacks them).
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field
from typing import Final

HEADER: Final = struct.Struct(">IIII")
MAX_PDU: Final = 64 * 1024  # far above any real PDU; a bigger length is a garbled stream

# Command ids.
GENERIC_NACK: Final = 0x80000000
BIND_RECEIVER: Final = 0x00000001
BIND_TRANSMITTER: Final = 0x00000002
SUBMIT_SM: Final = 0x00000004
DELIVER_SM: Final = 0x00000005
UNBIND: Final = 0x00000006
BIND_TRANSCEIVER: Final = 0x00000009
ENQUIRE_LINK: Final = 0x00000015
RESP: Final = 0x80000000
BINDS: Final = frozenset({BIND_RECEIVER, BIND_TRANSMITTER, BIND_TRANSCEIVER})

# command_status values this package uses by name (the full outcome table is domain/smpp.py).
ESME_ROK: Final = 0x00
ESME_RINVMSGLEN: Final = 0x01
ESME_RINVCMDLEN: Final = 0x02
ESME_RINVCMDID: Final = 0x03
ESME_RINVBNDSTS: Final = 0x04
ESME_RALYBND: Final = 0x05
ESME_RSYSERR: Final = 0x08
ESME_RINVDSTADR: Final = 0x0B
ESME_RBINDFAIL: Final = 0x0D
ESME_RINVPASWD: Final = 0x0E
ESME_RMSGQFUL: Final = 0x14
ESME_RX_T_APPN: Final = 0x64  # "ESME receiver temporary app error": the SMSC should retry later
ESME_RTHROTTLED: Final = 0x58
ESME_RUNKNOWNERR: Final = 0xFF

# TLV tags.
TLV_RECEIPTED_MESSAGE_ID: Final = 0x001E
TLV_NETWORK_ERROR_CODE: Final = 0x0423
TLV_MESSAGE_PAYLOAD: Final = 0x0424
TLV_MESSAGE_STATE: Final = 0x0427
TLV_SC_INTERFACE_VERSION: Final = 0x0210

INTERFACE_VERSION: Final = 0x34


class PduError(ValueError):
    """A PDU whose body cannot be decoded. `sequence` and `command_id` are known (the header was read), so
    the peer can be answered with `status`."""

    def __init__(self, message: str, *, command_id: int = 0, sequence: int = 0,
                 status: int = ESME_RINVCMDLEN) -> None:
        super().__init__(message)
        self.command_id = command_id
        self.sequence = sequence
        self.status = status


class FramingError(ValueError):
    """The length header is impossible: the stream cannot be read further."""


@dataclass(slots=True)
class Pdu:
    command_id: int
    sequence: int = 0
    status: int = ESME_ROK
    params: dict[str, int | str | bytes] = field(default_factory=dict)
    tlvs: dict[int, bytes] = field(default_factory=dict)

    @property
    def is_resp(self) -> bool:
        return bool(self.command_id & RESP)

    def str_param(self, name: str) -> str:
        v = self.params.get(name, "")
        return v if isinstance(v, str) else ""

    def int_param(self, name: str) -> int:
        v = self.params.get(name, 0)
        return v if isinstance(v, int) else 0

    def bytes_param(self, name: str) -> bytes:
        v = self.params.get(name, b"")
        return v if isinstance(v, bytes) else b""


# Mandatory body layouts: (name, kind) where kind is "c<max octets incl. NUL>", "u8" or "sm" (sm_length +
# octets). Bodies of *_resp with a non-zero status may be empty: decoding stops at the end of the body.
_BIND: Final = (("system_id", "c16"), ("password", "c9"), ("system_type", "c13"), ("interface_version", "u8"),
                ("addr_ton", "u8"), ("addr_npi", "u8"), ("address_range", "c41"))
_SM: Final = (("service_type", "c6"), ("source_addr_ton", "u8"), ("source_addr_npi", "u8"),
              ("source_addr", "c21"), ("dest_addr_ton", "u8"), ("dest_addr_npi", "u8"),
              ("destination_addr", "c21"), ("esm_class", "u8"), ("protocol_id", "u8"), ("priority_flag", "u8"),
              ("schedule_delivery_time", "c17"), ("validity_period", "c17"), ("registered_delivery", "u8"),
              ("replace_if_present_flag", "u8"), ("data_coding", "u8"), ("sm_default_msg_id", "u8"),
              ("short_message", "sm"))
_LAYOUTS: Final[dict[int, tuple[tuple[str, str], ...]]] = {
    BIND_RECEIVER: _BIND, BIND_TRANSMITTER: _BIND, BIND_TRANSCEIVER: _BIND,
    BIND_RECEIVER | RESP: (("system_id", "c16"),), BIND_TRANSMITTER | RESP: (("system_id", "c16"),),
    BIND_TRANSCEIVER | RESP: (("system_id", "c16"),),
    SUBMIT_SM: _SM, DELIVER_SM: _SM,
    SUBMIT_SM | RESP: (("message_id", "c65"),), DELIVER_SM | RESP: (("message_id", "c65"),),
    UNBIND: (), UNBIND | RESP: (), ENQUIRE_LINK: (), ENQUIRE_LINK | RESP: (), GENERIC_NACK: (),
}
_TLV_ALLOWED: Final = frozenset({SUBMIT_SM, DELIVER_SM, BIND_RECEIVER | RESP, BIND_TRANSMITTER | RESP,
                                 BIND_TRANSCEIVER | RESP})


def known(command_id: int) -> bool:
    return command_id in _LAYOUTS


def encode(pdu: Pdu) -> bytes:
    """The PDU on the wire (header included). Raises ValueError for a field that does not fit."""
    layout = _LAYOUTS.get(pdu.command_id)
    if layout is None:
        raise ValueError(f"cannot encode command 0x{pdu.command_id:08x}")
    body = bytearray()
    # An error resp carries no body (SMPP 3.4 §4.1: "only returned if command_status is zero").
    if not (pdu.is_resp and pdu.status and pdu.command_id != GENERIC_NACK):
        for name, kind in layout:
            value = pdu.params.get(name)
            if kind == "u8":
                n = value if isinstance(value, int) else (INTERFACE_VERSION if name == "interface_version" else 0)
                if not 0 <= n <= 0xFF:
                    raise ValueError(f"{name} out of range")
                body.append(n)
            elif kind == "sm":
                raw = value if isinstance(value, bytes) else b""
                if len(raw) > 254:
                    raise ValueError("short_message longer than 254 octets")
                body.append(len(raw))
                body += raw
            else:
                text = (value if isinstance(value, str) else "").encode("latin-1")
                if len(text) + 1 > int(kind[1:]) or b"\0" in text:
                    raise ValueError(f"{name} too long or contains NUL")
                body += text + b"\0"
        for tag, val in pdu.tlvs.items():
            body += struct.pack(">HH", tag, len(val)) + val
    return HEADER.pack(HEADER.size + len(body), pdu.command_id, pdu.status, pdu.sequence) + bytes(body)


def decode(frame: bytes) -> Pdu:
    """One whole frame (as `read_frame` returns it) as a Pdu; raises PduError for a garbled body."""
    if len(frame) < HEADER.size:
        raise FramingError("frame shorter than the header")
    length, command_id, status, sequence = HEADER.unpack_from(frame)
    if length != len(frame):
        raise FramingError("frame length does not match its header")
    pdu = Pdu(command_id, sequence, status)
    layout = _LAYOUTS.get(command_id)
    if layout is None:
        return pdu  # the caller answers generic_nack ESME_RINVCMDID
    body = memoryview(frame)[HEADER.size:]
    pos = 0

    def fail(what: str, code: int = ESME_RINVCMDLEN) -> PduError:
        return PduError(f"garbled 0x{command_id:08x}: {what}", command_id=command_id, sequence=sequence, status=code)

    for name, kind in layout:
        if pos >= len(body):
            if pdu.is_resp:
                break  # error resps (and some ok ones) omit their body
            raise fail(f"body ends before {name}")
        if kind == "u8":
            pdu.params[name] = body[pos]
            pos += 1
        elif kind == "sm":
            n = body[pos]
            if pos + 1 + n > len(body):
                raise fail("sm_length runs past the body", ESME_RINVMSGLEN)
            pdu.params[name] = bytes(body[pos + 1:pos + 1 + n])
            pos += 1 + n
        else:
            end = bytes(body[pos:pos + int(kind[1:])]).find(b"\0")
            if end < 0:
                raise fail(f"{name} is not NUL-terminated within {kind[1:]} octets")
            pdu.params[name] = bytes(body[pos:pos + end]).decode("latin-1")
            pos += end + 1
    if pos < len(body):
        if command_id not in _TLV_ALLOWED:
            raise fail("trailing octets")
        while pos < len(body):
            if pos + 4 > len(body):
                raise fail("truncated TLV header")
            tag, n = struct.unpack_from(">HH", body, pos)
            if pos + 4 + n > len(body):
                raise fail(f"TLV 0x{tag:04x} runs past the body")
            pdu.tlvs[tag] = bytes(body[pos + 4:pos + 4 + n])
            pos += 4 + n
    return pdu


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """The next whole PDU frame (reads can coalesce or split PDUs). Raises asyncio.IncompleteReadError at
    EOF and FramingError for an impossible length."""
    head = await reader.readexactly(4)
    (length,) = struct.unpack(">I", head)
    if length < HEADER.size or length > MAX_PDU:
        raise FramingError(f"impossible PDU length {length}")
    return head + await reader.readexactly(length - 4)


def resp_for(req: Pdu, status: int = ESME_ROK, **params: int | str | bytes) -> Pdu:
    """The response to `req` (same sequence number)."""
    return Pdu(req.command_id | RESP, req.sequence, status, dict(params))


def nack(sequence: int, status: int) -> Pdu:
    return Pdu(GENERIC_NACK, sequence, status)


def tlv_text(pdu: Pdu, tag: int) -> str:
    """A C-string TLV's value without its NUL (tolerating a missing one)."""
    raw = pdu.tlvs.get(tag, b"")
    return raw.split(b"\0", 1)[0].decode("latin-1")


def tlv_int(pdu: Pdu, tag: int) -> int | None:
    raw = pdu.tlvs.get(tag)
    return int.from_bytes(raw, "big") if raw else None


def c_tlv(text: str) -> bytes:
    return text.encode("latin-1") + b"\0"
