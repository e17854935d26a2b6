"""SMPP PDU encoding/decoding: round trips of every PDU SendSafe speaks, and garbled input that must give
a clear PduError/FramingError (never another exception)."""

from __future__ import annotations

import asyncio
import random
import struct

import pytest

from services.messaging.adapters.smpp import pdu as p

SM_PARAMS: dict[str, int | str | bytes] = {
    "service_type": "", "source_addr_ton": 5, "source_addr_npi": 0, "source_addr": "SendSafe",
    "dest_addr_ton": 1, "dest_addr_npi": 1, "destination_addr": "61412345678", "esm_class": 0x40,
    "protocol_id": 0, "priority_flag": 0, "schedule_delivery_time": "", "validity_period": "",
    "registered_delivery": 1, "replace_if_present_flag": 0, "data_coding": 8, "sm_default_msg_id": 0,
    "short_message": b"\x05\x00\x03\x2a\x02\x01" + "héllo".encode("utf-16-be"),
}


@pytest.mark.parametrize("pdu", [
    p.Pdu(p.BIND_TRANSCEIVER, 1, params={"system_id": "ss", "password": "pw", "system_type": "SMS",
                                         "interface_version": 0x34, "addr_ton": 0, "addr_npi": 0, "address_range": ""}),
    p.Pdu(p.BIND_TRANSCEIVER | p.RESP, 1, params={"system_id": "smsc"},
          tlvs={p.TLV_SC_INTERFACE_VERSION: b"\x34"}),
    p.Pdu(p.SUBMIT_SM, 7, params=SM_PARAMS, tlvs={0x0424: b"x" * 300}),
    p.Pdu(p.SUBMIT_SM | p.RESP, 7, params={"message_id": "0A1B2C"}),
    p.Pdu(p.DELIVER_SM, 0x7FFFFFFF, params=SM_PARAMS,
          tlvs={p.TLV_RECEIPTED_MESSAGE_ID: b"abc\0", p.TLV_MESSAGE_STATE: b"\x02",
                p.TLV_NETWORK_ERROR_CODE: b"\x03\x00\x01"}),
    p.Pdu(p.DELIVER_SM | p.RESP, 2, params={"message_id": ""}),
    p.Pdu(p.UNBIND, 3), p.Pdu(p.UNBIND | p.RESP, 3), p.Pdu(p.ENQUIRE_LINK, 4), p.Pdu(p.ENQUIRE_LINK | p.RESP, 4),
    p.Pdu(p.GENERIC_NACK, 9, status=p.ESME_RINVCMDID),
])
def test_round_trip(pdu: p.Pdu) -> None:
    wire = p.encode(pdu)
    assert struct.unpack(">I", wire[:4])[0] == len(wire)
    back = p.decode(wire)
    assert (back.command_id, back.sequence, back.status, back.tlvs) == (pdu.command_id, pdu.sequence, pdu.status,
                                                                        pdu.tlvs)
    for k, v in pdu.params.items():
        assert back.params[k] == v


def test_error_resp_has_no_body_and_decodes() -> None:
    wire = p.encode(p.Pdu(p.SUBMIT_SM | p.RESP, 5, p.ESME_RTHROTTLED, {"message_id": "ignored"}))
    assert len(wire) == 16
    back = p.decode(wire)
    assert back.status == p.ESME_RTHROTTLED and back.str_param("message_id") == ""


def test_unknown_command_decodes_empty_for_a_nack() -> None:
    back = p.decode(struct.pack(">IIII", 20, 0x00000103, 0, 8) + b"abcd")
    assert back.command_id == 0x103 and not p.known(back.command_id) and back.sequence == 8


@pytest.mark.parametrize("mutate,what", [
    (lambda b: b[:-3] + bytes([200]) + b[-2:], "sm_length"),  # sm_length runs past the body
    (lambda b: b[:16] + b"x" * 8, "NUL"),  # a C-string with no terminator
    (lambda b: b[:16] + b"\0" * 3, "body ends"),  # body stops mid-PDU
    (lambda b: b + b"\x04\x27\x00", "TLV"),  # truncated TLV header
    (lambda b: b + b"\x04\x27\x00\x05\x01", "TLV"),  # TLV longer than the body
])
def test_garbled_deliver_sm_is_a_clear_error(mutate: object, what: str) -> None:
    good = p.encode(p.Pdu(p.DELIVER_SM, 42, params={"source_addr": "614", "short_message": b"hi"}))
    body = mutate(good)  # type: ignore[operator]
    frame = struct.pack(">I", len(body)) + body[4:]
    with pytest.raises(p.PduError, match=what) as err:
        p.decode(frame)
    assert err.value.sequence == 42 and err.value.command_id == p.DELIVER_SM and err.value.status


def test_random_garbage_never_raises_anything_else() -> None:
    rng = random.Random(7)
    good = p.encode(p.Pdu(p.DELIVER_SM, 1, params=SM_PARAMS, tlvs={p.TLV_MESSAGE_STATE: b"\x02"}))
    for _ in range(3000):
        b = bytearray(good[:rng.randrange(17, len(good) + 1)])
        for _ in range(rng.randrange(1, 6)):
            b[rng.randrange(16, len(b))] = rng.randrange(256)
        frame = struct.pack(">I", len(b)) + bytes(b[4:])
        try:
            p.decode(frame)
        except p.PduError:
            pass


def test_encode_refuses_what_does_not_fit() -> None:
    with pytest.raises(ValueError):
        p.encode(p.Pdu(p.SUBMIT_SM, 1, params={"destination_addr": "1" * 21}))
    with pytest.raises(ValueError):
        p.encode(p.Pdu(p.SUBMIT_SM, 1, params={"short_message": b"x" * 255}))


async def test_read_frame_splits_coalesced_pdus_and_refuses_impossible_lengths() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(p.encode(p.Pdu(p.ENQUIRE_LINK, 1)) + p.encode(p.Pdu(p.UNBIND, 2))[:10])
    reader.feed_data(p.encode(p.Pdu(p.UNBIND, 2))[10:] + struct.pack(">I", 3))
    reader.feed_eof()
    assert p.decode(await p.read_frame(reader)).command_id == p.ENQUIRE_LINK
    assert p.decode(await p.read_frame(reader)).sequence == 2
    with pytest.raises(p.FramingError):
        await p.read_frame(reader)
