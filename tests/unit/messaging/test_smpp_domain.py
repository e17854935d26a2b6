"""domain/smpp.py: command_status outcomes, DLR parsing (TLVs, the Appendix B text, Jasmin's shorter form,
hex vs decimal ids), source/destination TON/NPI, data_coding and UDH parts that match encoding.py's
count (so the parts sent are the parts charged), and MO body decoding."""

from __future__ import annotations

import pytest

from services.messaging.domain.encoding import count_parts, gsm7_octets, gsm7_text
from services.messaging.domain.smpp import (
    Address,
    Outcome,
    decode_text,
    destination_address,
    is_receipt,
    parse_dlr,
    source_address,
    submit_outcome,
    wire_message,
)
from services.messaging.domain.statuses import TEMPORARY_FAILURE_ERROR, MessageStatus

MID = "0F8E2C4A-1B2D-4E5F-8A9B-0C1D2E3F4A5B"


@pytest.mark.parametrize("status,outcome,code", [
    (0x00, Outcome.ACCEPTED, None),
    (0x58, Outcome.BACKOFF, TEMPORARY_FAILURE_ERROR),  # ESME_RTHROTTLED
    (0x14, Outcome.BACKOFF, TEMPORARY_FAILURE_ERROR),  # ESME_RMSGQFUL
    (0x0B, Outcome.PERMANENT, 8),  # ESME_RINVDSTADR
    (0x0A, Outcome.PERMANENT, 10),  # ESME_RINVSRCADR
    (0x50, Outcome.PERMANENT, 18),  # bad destination TON
    (0x01, Outcome.PERMANENT, 7),
    (0x08, Outcome.TEMPORARY, TEMPORARY_FAILURE_ERROR),  # RSYSERR: retry with the attempts limit
    (0x45, Outcome.TEMPORARY, TEMPORARY_FAILURE_ERROR),  # RSUBMITFAIL
    (0x0433, Outcome.TEMPORARY, TEMPORARY_FAILURE_ERROR),  # vendor code: unknown -> temporary
    (0xDEAD, Outcome.TEMPORARY, TEMPORARY_FAILURE_ERROR),
])
def test_submit_outcomes(status: int, outcome: Outcome, code: int | None) -> None:
    assert submit_outcome(status) == (outcome, code)


def test_permanent_errors_fail_and_refund_through_plan_results() -> None:
    from services.messaging.domain.delivery import ClaimedMessage, SubmitResult, plan_results

    claimed = [ClaimedMessage(i, 1, b"", b"", "", 1, False) for i in ("a", "b", "c")]
    _, code_a = submit_outcome(0x0B)
    _, code_b = submit_outcome(0x58)
    results = [SubmitResult("a", accepted=False, error_code=code_a),
               SubmitResult("b", accepted=False, error_code=code_b),
               SubmitResult("c", accepted=True, carrier_ref="X")]
    sent, retry, failed = plan_results(claimed, results, max_attempts=5)
    assert [r.message_id for r in sent] == ["c"] and retry == [("b", 1)] and failed == [("a", 8)]


APPENDIX_B = ("id:0123456789 sub:001 dlvrd:001 submit date:2612041200 done date:2612041201 stat:DELIVRD err:000 "
              "Text:hello there")
JASMIN = ("id:5b1a2f6e-7c3d-4e8f-9a0b-1c2d3e4f5a6b submit date:2612041200 done date:2612041201 stat:UNDELIV "
          "err:001")


@pytest.mark.parametrize("tlv_id,state,text,ref,status", [
    ("A1B2", 2, "", "A1B2", MessageStatus.DELIVERED),  # TLVs only
    ("", None, APPENDIX_B, "0123456789", MessageStatus.DELIVERED),  # text only
    ("", None, JASMIN, "5b1a2f6e-7c3d-4e8f-9a0b-1c2d3e4f5a6b", MessageStatus.FAILED),  # Jasmin: no sub/dlvrd/text
    ("5b1a", 5, JASMIN, "5b1a", MessageStatus.FAILED),  # TLV wins over the text's id
    ("", None, "ID:77 STAT:expired ERR:0", "77", MessageStatus.FAILED),  # case-insensitive, expired
    ("", None, "id:77 stat:REJECTD", "77", MessageStatus.FAILED),  # no err at all
    ("", None, "id:77 stat:ENROUTE err:0", "77", None),  # intermediate: no change
    ("", None, "id:77 stat:ACCEPTD err:0", "77", None),
    ("", None, "id:77 stat:UNKNOWN err:0", "77", None),  # not final: the message stays SENT
    ("", None, "id:77", "77", None),  # no stat at all
    ("77", 6, "", "77", None),  # message_state ACCEPTED
    ("77", 99, "id:77 stat:DELIVRD", "77", MessageStatus.DELIVERED),  # unknown state TLV: the text decides
])
def test_dlr_variants(tlv_id: str, state: int | None, text: str, ref: str, status: MessageStatus | None) -> None:
    dlr = parse_dlr(tlv_id, state, text)
    assert dlr is not None and dlr.refs[0] == ref and dlr.status is status
    assert (dlr.error_code is not None) == (status is MessageStatus.FAILED)


def test_dlr_without_any_id_is_none() -> None:
    assert parse_dlr("", 2, "stat:DELIVRD err:000 text:id-less") is None
    assert parse_dlr("", None, "") is None


def test_hex_and_decimal_spellings_are_both_offered() -> None:
    # The TLV in hex, the text in decimal (Jasmin's dlr_msgid quirk): both, plus the other base of each.
    dlr = parse_dlr("1F4", 2, "id:500 stat:DELIVRD err:000")
    assert dlr is not None and dlr.refs[0] == "1F4"
    assert {"500", "1F4"} <= set(dlr.refs)
    decimal_only = parse_dlr("", None, "id:4096 stat:DELIVRD")
    assert decimal_only is not None and decimal_only.refs[:2] == ("4096", "1000")
    uuid_like = parse_dlr("", None, JASMIN)
    assert uuid_like is not None and len(uuid_like.refs) == 1  # not a number in either base


def test_receipt_esm_classes() -> None:
    assert is_receipt(0x04) and is_receipt(0x08) and is_receipt(0x20) and is_receipt(0x44)
    assert not is_receipt(0x00) and not is_receipt(0x40)


@pytest.mark.parametrize("sender,addr", [
    ("SendSafe", Address(5, 0, "SendSafe")),
    ("My Shop", Address(5, 0, "My Shop")),
    ("+61412345678", Address(1, 1, "61412345678")),
    ("61412345678", Address(1, 1, "61412345678")),
    ("2525", Address(3, 0, "2525")),
    ("", Address(0, 0, "")),
])
def test_source_addresses(sender: str, addr: Address) -> None:
    assert source_address(sender) == addr


def test_destination_is_international_digits() -> None:
    assert destination_address("+61412345678") == Address(1, 1, "61412345678")


@pytest.mark.parametrize("body", [
    "hello",
    "x" * 160,  # exactly one GSM-7 part
    "x" * 161,  # two parts
    "€" * 80,  # escapes: 160 septets in one part
    "a" + "€" * 80,  # 161 septets: never split an escape pair
    "x" * 1224,  # eight parts
    "héllo wörld ünïcode ✓" * 10,  # UCS-2
    "😀" * 35,  # 70 UTF-16 units: one part
    "😀" * 36,  # surrogate pairs never split
    "y" * 500 + "✓",
])
def test_parts_sent_equal_parts_priced(body: str) -> None:
    priced = count_parts(body)
    wire = wire_message(body, MID)
    assert len(wire.parts) == priced.parts
    if priced.parts == 1:
        assert wire.esm_class == 0 and wire.parts[0][:1] != b"\x05"
    else:
        assert wire.esm_class == 0x40
        ref = wire.parts[0][3]
        for seq, part in enumerate(wire.parts, start=1):
            assert part[:6] == bytes([0x05, 0x00, 0x03, ref, priced.parts, seq])
            assert len(part) <= 140 if wire.data_coding == 8 else len(part) - 6 <= 153
    if wire.data_coding == 0:
        text = "".join(gsm7_text(pt[6:] if wire.esm_class else pt) for pt in wire.parts)
    else:
        assert wire.data_coding == 8
        text = "".join((pt[6:] if wire.esm_class else pt).decode("utf-16-be") for pt in wire.parts)
    assert text == body


def test_resubmission_reuses_the_concatenation_reference() -> None:
    assert wire_message("z" * 400, MID).parts[0][3] == wire_message("z" * 400, MID).parts[0][3] == 0x5B


def test_gsm7_round_trip_and_refusal() -> None:
    body = "@£$¥ Hello {world} [x] ~|^ € \\ ÄÖÑÜ§¿"
    assert gsm7_text(gsm7_octets(body)) == body
    assert gsm7_octets("€") == b"\x1b\x65"
    with pytest.raises(ValueError):
        gsm7_octets("✓")


@pytest.mark.parametrize("coding,esm,raw,text", [
    (0, 0, gsm7_octets("STOP"), "STOP"),
    (0, 0, gsm7_octets("Hi €5"), "Hi €5"),
    (8, 0, "stop ✓".encode("utf-16-be"), "stop ✓"),
    (3, 0, "café".encode("latin-1"), "café"),
    (1, 0, b"START", "START"),
    (0, 0x40, b"\x05\x00\x03\x01\x02\x01" + gsm7_octets("part one"), "part one"),
])
def test_mo_bodies(coding: int, esm: int, raw: bytes, text: str) -> None:
    assert decode_text(coding, esm, raw) == text
