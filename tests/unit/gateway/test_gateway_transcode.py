"""JSON <-> proto rules on the real generated messages (types the ClickSend SDK validates strictly)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import clicksend
import pytest
from google.protobuf import timestamp_pb2

from gateway.surface import Surface
from gateway.transcode.body import parse_json
from gateway.transcode.fields import TranscodeError
from gateway.transcode.request import build_request
from gateway.transcode.response import message_to_json
from sendsafe.audit.v1 import audit_service_pb2, event_pb2
from sendsafe.identity.v1 import account_pb2, identity_service_pb2
from sendsafe.messaging.v1 import messaging_service_pb2, sms_pb2

V3 = Surface.CLICKSEND
V1 = Surface.V1


def _send_response() -> messaging_service_pb2.SendSmsResponse:
    return messaging_service_pb2.SendSmsResponse(
        total_price=0.154,
        total_count=2,
        queued_count=2,
        blocked_count=0,
        currency=sms_pb2.Currency(currency_name_short="AUD", currency_prefix_d="$"),
        messages=[
            sms_pb2.SentSms(
                direction="out", date=1_764_000_000, to="+61411111111", body="hello", sender="SendSafe",
                message_id="B7E7F7E2-0000-4000-8000-000000000001", message_parts=1, message_price="0.0770",
                contact_id="", user_id=7, subaccount_id=7, is_shared_system_number=True, status="SUCCESS",
                schedule=0, country="AU",
            ),
            sms_pb2.SentSms(to="+61422222222", user_id=2**62, status="INVALID_RECIPIENT"),
        ],
    )


def test_send_response_json_types() -> None:
    out = message_to_json(_send_response(), V3)
    assert out["total_price"] == 0.154 and isinstance(out["total_price"], float)
    assert out["total_count"] == 2 and type(out["total_count"]) is int
    assert out["blocked_count"] == 0  # default scalar present
    assert out["_currency"]["currency_name_short"] == "AUD"  # wire_name, nested object
    assert out["_currency"]["currency_name_long"] == ""  # defaults inside nested messages too
    first, second = out["messages"]
    assert "from" in first and "sender" not in first and first["from"] == "SendSafe"
    assert first["message_price"] == "0.0770"  # string price
    assert first["contact_id"] == ""  # string in responses
    assert first["is_shared_system_number"] is True
    assert type(first["date"]) is int and type(first["schedule"]) is int
    assert second["user_id"] == 2**62 and type(second["user_id"]) is int  # int64 stays a JSON integer
    assert second["is_shared_system_number"] is False
    assert '"user_id":4611686018427387904' in json.dumps(out, separators=(",", ":"))


def test_send_response_validates_through_sdk_model() -> None:
    envelope = {
        "http_code": 200, "response_code": "SUCCESS", "response_msg": "Messages queued for delivery.",
        "data": message_to_json(_send_response(), V3),
    }
    model = clicksend.models.SendSms.from_json(json.dumps(envelope))
    assert model is not None and model.data is not None and model.data.messages is not None
    assert model.data.messages[0].message_price == "0.0770"
    assert model.data.currency is not None and model.data.currency.currency_name_short == "AUD"


def test_history_optional_fields_are_null_until_set() -> None:
    page = messaging_service_pb2.ListSmsHistoryResponse(
        total=1, per_page=15, current_page=1, last_page=1, first_index=1,
        data=[sms_pb2.HistorySms(message_id="M1", status="Sent", status_code="200", schedule="", error_code="")],
    )
    out = message_to_json(page, V3)
    assert out["next_page_url"] is None and out["prev_page_url"] is None
    assert out["from"] == 1 and out["to"] is None  # optional int32 with wire names
    item = out["data"][0]
    assert item["error_code"] == ""  # set (to the empty string): present
    assert item["error_text"] is None  # optional, unset: null
    assert item["status_code"] == "200" and item["schedule"] == ""
    assert item["_api_username"] == ""
    model = clicksend.models.ViewSmsHistory.from_json(json.dumps({"http_code": 200, "data": out}))
    assert model is not None and model.data is not None and model.data.var_from == 1


def test_account_with_currency_and_subaccount() -> None:
    acc = identity_service_pb2.GetAccountResponse(
        user_id=7, username="alice", active=1, balance="12.500000", account=3, date_sign_up=1_700_000_000,
        currency=account_pb2.Currency(currency_name_short="AUD", min_recharge_amount="20.00"),
        subaccount=account_pb2.Subaccount(subaccount_id=7, api_username="alice", is_main=1, access_sms=1),
    )
    out = message_to_json(acc, V3)
    assert out["_currency"]["min_recharge_amount"] == "20.00"
    assert out["_subaccount"]["api_username"] == "alice"
    assert out["_subaccount"]["notes"] is None  # optional string
    assert out["_subaccount"]["access_billing"] == 0
    assert "currency" not in out and "subaccount" not in out
    unset = message_to_json(identity_service_pb2.GetAccountResponse(), V3)
    assert unset["_currency"] is None and unset["_subaccount"] is None  # unset message -> null
    model = clicksend.models.ViewAccountDetails.from_json(json.dumps({"http_code": 200, "data": out}))
    assert model is not None and model.data is not None


def test_v1_timestamp_enum_map() -> None:
    ev = event_pb2.Event(action="gateway.SendSms", outcome=event_pb2.OUTCOME_DENIED, details={"http_status": "403"})
    ev.event_time.FromJsonString("2026-11-29T10:00:00.250Z")
    out = message_to_json(audit_service_pb2.ListEventsResponse(events=[ev], next_page_token="abc"), V1)
    got = out["events"][0]
    assert got["event_time"] == "2026-11-29T10:00:00.250Z"
    assert got["outcome"] == "OUTCOME_DENIED"
    assert got["details"] == {"http_status": "403"}
    assert got["actor"] is None and got["sequence"] == 0
    # The same Timestamp on the ClickSend surface is unix seconds.
    assert message_to_json(ev, V3)["event_time"] == 1_795_946_400


def test_send_request_from_body() -> None:
    body = {
        "messages": [
            {"to": "+61411111111", "body": "hi", "from": "SendSafe", "schedule": 0, "contact_id": 5,
             "source": "sdk-python", "exclude_no_sender_id_recipients": False},
            {"to": "+61422222222", "body": "yo", "custom_string": None},
        ],
        "shorten_urls": True,
    }
    msg = build_request(messaging_service_pb2.SendSmsRequest.DESCRIPTOR, V3, body=body, body_field="*")
    assert isinstance(msg, messaging_service_pb2.SendSmsRequest)
    assert msg.messages[0].sender == "SendSafe" and msg.messages[0].contact_id == 5
    assert msg.shorten_urls is True and len(msg.messages) == 2
    # Round trip: the proto converted back gives the same values under the same keys.
    back = message_to_json(msg, V3)
    assert back["messages"][0]["from"] == "SendSafe" and back["messages"][1]["custom_string"] == ""


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({"messages": [{"body": "x", "schedule": "5"}]}, "messages[0].schedule", "INVALID_FIELD_VALUE"),
        ({"messages": [{"body": "x", "contact_id": True}]}, "messages[0].contact_id", "INVALID_FIELD_VALUE"),
        ({"messages": [{"body": "x", "contact_id": 1.5}]}, "messages[0].contact_id", "INVALID_FIELD_VALUE"),
        ({"messages": [{"body": 5}]}, "messages[0].body", "INVALID_FIELD_VALUE"),
        ({"shorten_urls": 1}, "shorten_urls", "INVALID_FIELD_VALUE"),
        ({"messages": {"body": "x"}}, "messages", "INVALID_FIELD_VALUE"),
        ({"messages": [None]}, "messages[0]", "INVALID_FIELD_VALUE"),
        ({"messages": [{"body": "x", "sender": "me"}]}, "messages[0].sender", "UNKNOWN_FIELD"),  # wire name only
        ({"mesages": []}, "mesages", "UNKNOWN_FIELD"),
        ({"messages": [{"body": "x", "schedule": 2**63}]}, "messages[0].schedule", "PARAMETER_OUT_OF_RANGE"),
        ({"messages": [{"body": "x", "schedule": -1}]}, "messages[0].schedule", "PARAMETER_OUT_OF_RANGE"),
        ({"messages": [{"body": "x", "contact_id": -(2**63) - 1}]}, "messages[0].contact_id", "PARAMETER_OUT_OF_RANGE"),
    ],
)
def test_send_request_strict_errors(body: dict, field: str, reason: str) -> None:
    with pytest.raises(TranscodeError) as exc:
        build_request(messaging_service_pb2.SendSmsRequest.DESCRIPTOR, V3, body=body, body_field="*")
    assert exc.value.status == 400
    assert exc.value.reason == reason
    assert exc.value.field == field
    assert f"'{field}'" in exc.value.message


def test_body_must_be_an_object() -> None:
    with pytest.raises(TranscodeError) as exc:
        build_request(messaging_service_pb2.SendSmsRequest.DESCRIPTOR, V3, body=[1], body_field="*")
    assert exc.value.status == 400


@pytest.mark.parametrize("raw", [b'{"messages": [', b"not json", b'{"a":1,"a":2}', b'{"a": NaN}', b"\xff\xfe"])
def test_malformed_json(raw: bytes) -> None:
    with pytest.raises(TranscodeError) as exc:
        parse_json(raw)
    assert exc.value.reason == "MALFORMED_JSON" and exc.value.status == 400


def test_history_query_parsing() -> None:
    q = [("page", "2"), ("limit", "15"), ("q", "status:Sent"), ("date_from", "1700000000")]
    msg = build_request(messaging_service_pb2.ListSmsHistoryRequest.DESCRIPTOR, V3, query=q)
    assert isinstance(msg, messaging_service_pb2.ListSmsHistoryRequest)
    assert (msg.page, msg.limit, msg.q, msg.date_from) == (2, 15, "status:Sent", 1_700_000_000)


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ([("page", "two")], "INVALID_FIELD_VALUE"),
        ([("page", "1.5")], "INVALID_FIELD_VALUE"),
        ([("page", "99999999999")], "PARAMETER_OUT_OF_RANGE"),
        ([("page", "-1")], "PARAMETER_OUT_OF_RANGE"),
        ([("limit", "101")], "PARAMETER_OUT_OF_RANGE"),
        ([("date_from", "253402300800")], "PARAMETER_OUT_OF_RANGE"),
        ([("date_to", "-5")], "PARAMETER_OUT_OF_RANGE"),
        ([("date_to", str(2**63))], "PARAMETER_OUT_OF_RANGE"),
        ([("page", "1"), ("page", "2")], "INVALID_FIELD_VALUE"),
        ([("pagee", "1")], "UNKNOWN_FIELD"),
    ],
)
def test_history_query_errors(query: list[tuple[str, str]], reason: str) -> None:
    with pytest.raises(TranscodeError) as exc:
        build_request(messaging_service_pb2.ListSmsHistoryRequest.DESCRIPTOR, V3, query=query)
    assert exc.value.status == 400 and exc.value.reason == reason


def test_v1_query_timestamp_and_paging() -> None:
    q = [("start_time", "2026-01-01T00:00:00Z"), ("page_size", "50"), ("action", "gateway.SendSms")]
    msg = build_request(audit_service_pb2.ListEventsRequest.DESCRIPTOR, V1, query=q)
    assert isinstance(msg, audit_service_pb2.ListEventsRequest)
    assert msg.start_time == timestamp_pb2.Timestamp(seconds=1_767_225_600)
    assert msg.page_size == 50 and msg.action == "gateway.SendSms"
    with pytest.raises(TranscodeError, match="RFC 3339"):
        build_request(audit_service_pb2.ListEventsRequest.DESCRIPTOR, V1, query=[("start_time", "yesterday")])


def test_query_not_accepted_when_body_is_star() -> None:
    with pytest.raises(TranscodeError) as exc:
        build_request(
            messaging_service_pb2.SendSmsRequest.DESCRIPTOR, V3, body={}, body_field="*",
            query=[("shorten_urls", "true")],
        )
    assert exc.value.reason == "UNKNOWN_FIELD"


def test_path_params_parse_or_404() -> None:
    msg = build_request(identity_service_pb2.GetUserRequest.DESCRIPTOR, V3, path_params={"user_id": "7"})
    assert isinstance(msg, identity_service_pb2.GetUserRequest) and msg.user_id == 7
    with pytest.raises(TranscodeError) as exc:
        build_request(identity_service_pb2.GetUserRequest.DESCRIPTOR, V3, path_params={"user_id": "seven"})
    assert exc.value.status == 404 and exc.value.reason == "NOT_FOUND"


def test_bytes_are_base64_both_ways() -> None:
    from sendsafe.keys.v1 import keys_service_pb2

    out = message_to_json(keys_service_pb2.GenerateDataKeyResponse(wrapped_key=b"\x00\x01\xfe", key_version=2), V1)
    assert out == {"plaintext": "", "wrapped_key": "AAH+", "key_version": 2}
    msg = build_request(
        keys_service_pb2.DecryptDataKeyRequest.DESCRIPTOR, V1, body={"account_id": 1, "wrapped_key": "AAH+"},
        body_field="*",
    )
    assert isinstance(msg, keys_service_pb2.DecryptDataKeyRequest) and msg.wrapped_key == b"\x00\x01\xfe"
    with pytest.raises(TranscodeError, match="base64"):
        build_request(keys_service_pb2.DecryptDataKeyRequest.DESCRIPTOR, V1, body={"wrapped_key": "***"},
                      body_field="*")


def test_declared_ranges_bound_query_values() -> None:
    """page_size declares min 0: -3 is refused naming the parameter and its bounds; the ends are accepted."""
    desc = audit_service_pb2.ListEventsRequest.DESCRIPTOR
    with pytest.raises(TranscodeError) as exc:
        build_request(desc, V1, query=[("page_size", "-3")])
    assert (exc.value.status, exc.value.reason, exc.value.field) == (400, "PARAMETER_OUT_OF_RANGE", "page_size")
    assert "'page_size' must be between 0 and 2147483647" in exc.value.message
    assert build_request(desc, V1, query=[("page_size", "0")]).page_size == 0  # type: ignore[attr-defined]
    history = messaging_service_pb2.ListSmsHistoryRequest.DESCRIPTOR
    ok = build_request(history, V3, query=[("date_from", "253402300799"), ("limit", "100")])
    assert ok.date_from == 253402300799  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("desc", "query", "field"),
    [
        (identity_service_pb2.ListSubaccountsRequest.DESCRIPTOR, [("page", "-1")], "page"),
        (messaging_service_pb2.ListSmsReceiptsRequest.DESCRIPTOR, [("limit", "-15")], "limit"),
        (audit_service_pb2.ListAlertsRequest.DESCRIPTOR, [("page_size", "-1")], "page_size"),
        (audit_service_pb2.GetCheckpointRequest.DESCRIPTOR, [("tree_size", "-1")], "tree_size"),
    ],
)
def test_declared_ranges_other_routes(desc: object, query: list[tuple[str, str]], field: str) -> None:
    with pytest.raises(TranscodeError) as exc:
        build_request(desc, V3, query=query)  # type: ignore[arg-type]
    assert (exc.value.reason, exc.value.field) == ("PARAMETER_OUT_OF_RANGE", field)


def test_declared_ranges_bound_body_values() -> None:
    desc = messaging_service_pb2.MarkSmsReceiptsReadRequest.DESCRIPTOR
    with pytest.raises(TranscodeError) as exc:
        build_request(desc, V3, body={"date_before": 10**15}, body_field="*")
    assert (exc.value.reason, exc.value.field) == ("PARAMETER_OUT_OF_RANGE", "date_before")


def test_every_declared_range_is_an_integer_field_and_sane() -> None:
    """A range on a non-integer field, or one wider than its type or empty, is a mistake in the protos."""
    from gateway.routes import discover_routes
    from gateway.transcode.fields import INT_RANGES as _INT_RANGES
    from gateway.transcode.fields import int_bounds
    from sendsafe.options.v1 import options_pb2

    def walk(messages: Any) -> Iterator[Any]:
        for m in messages:
            yield m
            yield from walk(m.nested_types)

    files = {r.input_desc.file for r in discover_routes()}
    checked = 0
    for f in files:
        for msg in walk(f.message_types_by_name.values()):
            for field in msg.fields:
                if not field.GetOptions().HasExtension(options_pb2.range):
                    continue
                checked += 1
                assert field.type in _INT_RANGES, field.full_name
                declared = field.GetOptions().Extensions[options_pb2.range]
                tlo, thi = _INT_RANGES[field.type]
                assert tlo <= declared.min and (not declared.HasField("max") or declared.max <= thi), field.full_name
                lo, hi = int_bounds(field)
                assert lo <= hi, field.full_name
    assert checked >= 20
