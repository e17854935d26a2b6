"""SDK contract tests for the ClickSend SMS API beyond send: price, history search, receipts, replies,
cancelling, the test hooks, idempotency keys, per-key send limits (429 + Retry-After) and de-identified
sub-accounts. Every call goes through the gateway over HTTPS with the official SDK (`clicksend`), whose
strict pydantic models validate each response's JSON types; error cases assert the SDK exception, the
HTTP status and the envelope."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any, TypeVar

import clicksend
import pytest
from clicksend.exceptions import ApiException, BadRequestException, ForbiddenException, NotFoundException

from sendsafe.identity.v1 import identity_service_pb2, identity_service_pb2_grpc
from sendsafe.keys.v1 import keys_service_pb2, keys_service_pb2_grpc
from svckit.rpc import secure_channel
from svckit.tls import TlsFiles
from tests.e2e.api_client import Http, sdk_client, until
from tests.e2e.conftest import Customer, OtlpReceiver
from tests.support import CertBundle
from tools.suite import Suite

T = TypeVar("T")
REAL = "+61412345678"


def unique_number() -> str:
    return f"+6141{uuid.uuid4().int % 10**7:07d}"




@pytest.fixture(scope="module")
def tester(suite: Suite, certs: CertBundle) -> Customer:
    """A test-mode account (test hooks allowed, nothing charged), created as the ops identity."""
    tls = TlsFiles(certs.dir / "ops.crt", certs.dir / "ops.key", certs.dir / "internal-ca.crt")
    name = f"tester{uuid.uuid4().hex[:8]}"

    async def make() -> str:
        async with (
            secure_channel(suite.addrs["identity"], tls, server_name="identity") as ich,
            secure_channel(suite.addrs["keys"], tls, server_name="keys") as kch,
        ):
            made = await identity_service_pb2_grpc.IdentityServiceStub(ich).CreateAccount(
                identity_service_pb2.CreateAccountRequest(
                    account_name="Tester", api_username=name, email=f"{name}@example.com", first_name="T",
                    last_name="Mode", country="AU", test_mode=True))
            issued = await keys_service_pb2_grpc.KeysServiceStub(kch).IssueApiKey(keys_service_pb2.IssueApiKeyRequest(
                account_id=made.user.account_id, user_id=made.user.user_id, name="tests", test_mode=True))
            return str(issued.api_key)

    return Customer(suite.gateway_url, name, asyncio.run(make()), certs.public_ca)


def sms_api(c: Customer) -> Iterator[clicksend.SmsApi]:
    with sdk_client(c.url, c.username, c.api_key, str(c.ca)) as client:
        yield clicksend.SmsApi(client)


@pytest.fixture
def sms(customer: Customer) -> Iterator[clicksend.SmsApi]:
    yield from sms_api(customer)


@pytest.fixture
def test_sms(tester: Customer) -> Iterator[clicksend.SmsApi]:
    yield from sms_api(tester)


def envelope(err: ApiException) -> dict[str, Any]:
    body = json.loads(err.body)
    assert body["http_code"] == err.status and body["data"] is None and body["response_msg"]
    return body


# -- price --------------------------------------------------------------------------------------------------


def test_price_reports_like_a_send_and_stores_nothing(sms: clicksend.SmsApi) -> None:
    before = sms.view_sms_history(limit=15).data.total
    later = int(time.time()) + 3600
    priced = sms.calculate_sms_price(calculate_sms_price_request={"messages": [
        {"to": REAL, "body": "x" * 200, "schedule": later, "custom_string": "p1", "contact_id": "42"},
        {"to": "+6100", "body": "nope"},
        {"to": "+61411111111", "body": "test number"},
    ]})
    assert priced.http_code == 200 and priced.response_code == "SUCCESS"
    d = priced.data
    assert (d.total_count, d.queued_count, d.blocked_count) == (3, 2, 1)
    assert d.total_price == pytest.approx(0.154) and d.currency.currency_name_short == "AUD"
    first, bad, test = d.messages
    assert (first.status, first.message_parts, first.message_price) == ("SUCCESS", 2, "0.1540")
    assert first.custom_string == "p1"
    assert first.schedule == str(later) and first.var_date.isdigit() and first.contact_id == "42"
    assert (bad.status, test.message_price) == ("INVALID_RECIPIENT", "0.0000")
    assert sms.view_sms_history(limit=15).data.total == before


def test_price_whole_request_errors(customer: Customer) -> None:
    http = Http(customer.url, str(customer.ca))
    auth = (customer.username, customer.api_key)
    empty = http.call("POST", "/v3/sms/price", auth=auth, json_body={"messages": []})
    assert empty.status == 400 and empty.json()["response_code"] == "MISSING_REQUIRED_FIELDS"
    unknown = http.call("POST", "/v3/sms/price", auth=auth, json_body={"messages": [{"to": REAL, "body": "x",
                                                                                       "nonsense": 1}]})
    assert unknown.status == 400 and unknown.json()["response_code"] == "BAD_REQUEST"
    anonymous = http.call("POST", "/v3/sms/price", json_body={"messages": [{"to": REAL, "body": "x"}]})
    assert anonymous.status == 401 and anonymous.json()["response_code"] == "UNAUTHORIZED"


# -- history ------------------------------------------------------------------------------------------------


def test_history_search_sort_dates_and_paging(sms: clicksend.SmsApi) -> None:
    tag = uuid.uuid4().hex[:8]
    to = unique_number()
    sent = sms.send_sms(send_sms_request={"messages": [
        {"to": to, "body": f"Banana {tag}", "custom_string": tag},
        {"to": REAL, "body": f"apple {tag}", "custom_string": tag},
        {"to": REAL, "body": f"Cherry {tag}", "custom_string": tag},
    ]})
    assert sent.data.queued_count == 3
    now = int(time.time())
    mine = sms.view_sms_history(q=f"custom_string:{tag}", order_by="body:asc", limit=15)
    assert [m.body for m in mine.data.data] == [f"apple {tag}", f"Banana {tag}", f"Cherry {tag}"]
    assert mine.data.total == 3 and mine.data.var_from == 1 and mine.data.to == 3
    assert [m.body for m in sms.view_sms_history(q=f"to:{to}", limit=15).data.data] == [f"Banana {tag}"]
    body_hits = sms.view_sms_history(q=f"body:CHERRY {tag}", limit=15).data.data
    assert [m.custom_string for m in body_hits] == [tag]
    window = sms.view_sms_history(q=f"custom_string:{tag}", date_from=now - 120, date_to=now + 5, limit=15)
    assert window.data.total == 3
    assert sms.view_sms_history(q=f"custom_string:{tag}", date_to=now - 600, limit=15).data.total == 0
    newest_first = sms.view_sms_history(q=f"custom_string:{tag}", order_by="date:desc", limit=15, page=1)
    assert newest_first.data.data[0].body == f"Cherry {tag}"
    item = newest_first.data.data[0]
    assert isinstance(item.status_code, str) and isinstance(item.message_price, str)
    assert item.error_code is None and item.status in ("Queued", "Sent")

    with pytest.raises(BadRequestException) as bad_q:
        sms.view_sms_history(q="price:1", limit=15)
    assert envelope(bad_q.value)["response_code"] == "BAD_REQUEST"
    with pytest.raises(BadRequestException):
        sms.view_sms_history(order_by="price:asc", limit=15)
    with pytest.raises(ValueError):  # the SDK itself refuses limits outside 15-100
        sms.view_sms_history(limit=5)


# -- receipts -----------------------------------------------------------------------------------------------


def test_receipts_list_get_and_mark_read(test_sms: clicksend.SmsApi) -> None:
    sent = test_sms.send_sms(send_sms_request={"messages": [{"to": unique_number(), "body": "receipt me",
                                                             "custom_string": "rc"}]})
    mid = sent.data.messages[0].message_id
    one = until(lambda: _receipt(test_sms, mid), lambda r: r is not None, "the delivery receipt")
    assert one is not None
    assert (one.status_code, one.message_type, one.custom_string, one.error_code) == (201, "sms", "rc", None)
    assert one.status_text == "Success: Message received on handset."
    listed = test_sms.view_sms_receipts(page=1, limit=100)
    assert mid in [r.message_id for r in listed.data.data] and listed.response_code == "SUCCESS"
    marked = test_sms.mark_sms_receipt_as_read(mark_sms_receipt_as_read_request={"date_before": int(time.time()) + 5})
    assert marked.http_code == 200 and marked.data is None
    assert test_sms.view_sms_receipts(limit=15).data.total == 0
    assert test_sms.view_specific_sms_receipt(mid).data.message_id == mid  # still readable on its own
    with pytest.raises(NotFoundException) as missing:
        test_sms.view_specific_sms_receipt(str(uuid.uuid4()).upper())
    assert envelope(missing.value)["response_code"] == "NOT_FOUND"


def _receipt(api: clicksend.SmsApi, mid: str) -> Any:
    try:
        return api.view_specific_sms_receipt(mid).data
    except NotFoundException:
        return None


# -- replies, STOP, test hooks ------------------------------------------------------------------------------


def test_test_hooks_and_replies(test_sms: clicksend.SmsApi, tester: Customer) -> None:
    receipt = test_sms.create_test_sms_receipt(create_test_sms_receipt_request={"url": "poll"})
    assert receipt.response_code == "SUCCESS" and receipt.data.status_code == 201 and receipt.data.message_id
    hook = test_sms.create_test_inbound_sms(create_test_inbound_sms_request={"url": "poll", "webhook_type": "json"})
    assert hook.data.body == "This is a test inbound message." and hook.data.timestamp_send > 0

    to = unique_number()
    mid = test_sms.send_sms(send_sms_request={"messages": [{"to": to, "body": "Deal! Reply STOP to opt out",
                                                            "custom_string": "promo"}]}).data.messages[0].message_id
    # SendSafe's extension of the hook (raw HTTP: the SDK model drops unknown keys): a STOP reply.
    http = Http(tester.url, str(tester.ca))
    r = http.call("POST", "/v3/sms/inbound", auth=(tester.username, tester.api_key),
                  json_body={"url": "poll", "original_message_id": mid, "body": "STOP"})
    assert r.status == 200
    reply_id = r.json()["data"]["message_id"]

    got = test_sms.view_a_specific_inbound_sms_message(mid).data
    assert (got.var_from, got.body, got.original_body, got.original_message_id, got.custom_string, got.keyword) == (
        to, "STOP", "Deal! Reply STOP to opt out", mid, "promo", "STOP")
    inbox = test_sms.view_inbound_sms(page=1, limit=100).data
    assert reply_id in [m.message_id for m in inbox.data]
    assert test_sms.mark_specific_inbound_sms_message_as_read(reply_id).data == 1
    assert test_sms.mark_specific_inbound_sms_message_as_read(reply_id).data == 0
    cleared = test_sms.mark_inbound_sms_as_read(mark_sms_receipt_as_read_request={"date_before": int(time.time()) + 5})
    assert cleared.data is None and test_sms.view_inbound_sms(limit=15).data.total == 0

    blocked = test_sms.send_sms(send_sms_request={"messages": [{"to": to, "body": "more deals"}]}).data
    assert blocked.messages[0].status == "RECIPIENT_OPTED_OUT" and blocked.blocked_count == 1
    with pytest.raises(NotFoundException):
        test_sms.view_a_specific_inbound_sms_message(str(uuid.uuid4()).upper())


def test_test_hooks_refuse_live_accounts(sms: clicksend.SmsApi) -> None:
    with pytest.raises(ForbiddenException) as receipt:
        sms.create_test_sms_receipt(create_test_sms_receipt_request={"url": "poll"})
    assert envelope(receipt.value)["response_code"] == "FORBIDDEN"
    with pytest.raises(ForbiddenException):
        sms.create_test_inbound_sms(create_test_inbound_sms_request={"url": "poll"})


# -- cancelling ---------------------------------------------------------------------------------------------


def test_cancel_and_cancel_all(sms: clicksend.SmsApi, customer: Customer) -> None:
    tag = uuid.uuid4().hex[:8]
    later = int(time.time()) + 7200
    sent = sms.send_sms(send_sms_request={"messages": [
        {"to": REAL, "body": "a", "schedule": later, "custom_string": tag},
        {"to": REAL, "body": "b", "schedule": later, "custom_string": tag},
        {"to": REAL, "body": "c", "schedule": later, "custom_string": tag},
    ]})
    a, b, c = (m.message_id for m in sent.data.messages)
    assert sent.data.messages[0].schedule == later
    cancelled = sms.cancel_sms(a)
    assert cancelled.http_code == 200 and cancelled.response_code == "SUCCESS" and cancelled.data is None
    count = sms.cancel_all_sms(cancel_all_sms_request={"custom_string": tag})
    assert count.data.count == 2
    history = sms.view_sms_history(q=f"custom_string:{tag}", limit=15).data.data
    assert {(m.status, m.status_code) for m in history} == {("Cancelled", "301")}
    assert {m.message_id for m in history} == {a, b, c}
    assert sms.cancel_all_sms(cancel_all_sms_request={"custom_string": tag}).data.count == 0

    with pytest.raises(NotFoundException) as missing:
        sms.cancel_sms(str(uuid.uuid4()).upper())
    assert envelope(missing.value)["response_code"] == "NOT_FOUND"
    with pytest.raises(NotFoundException):
        sms.cancel_sms("not-a-message-id")
    now = sms.send_sms(send_sms_request={"messages": [{"to": REAL, "body": "now"}]}).data.messages[0].message_id
    until(lambda: sms.view_sms_history(q=f"message_id:{now}", limit=15).data.data[0].status,
          lambda s: s == "Sent", "the message to be sent")
    with pytest.raises(BadRequestException) as late:
        sms.cancel_sms(now)
    assert envelope(late.value)["response_code"] == "BAD_REQUEST"


# -- idempotency keys, send limits, de-identified sub-accounts ----------------------------------------------


def test_a_client_retry_with_an_idempotency_key_neither_sends_nor_charges_twice(customer: Customer) -> None:
    with sdk_client(customer.url, customer.username, customer.api_key, str(customer.ca)) as client:
        api, account = clicksend.SmsApi(client), clicksend.ManagementApi(client)
        key = {"Idempotency-Key": str(uuid.uuid4())}
        body = {"messages": [{"to": REAL, "body": f"once {uuid.uuid4().hex[:6]}"}]}
        before = float(account.view_account_details().data.balance)
        first = api.send_sms(send_sms_request=body, _headers=key)
        retry = api.send_sms(send_sms_request=body, _headers=key)
        assert retry.data.messages[0].message_id == first.data.messages[0].message_id
        assert float(account.view_account_details().data.balance) == pytest.approx(before - 0.077)
        with pytest.raises(BadRequestException) as reused:
            api.send_sms(send_sms_request={"messages": [{"to": REAL, "body": "different"}]}, _headers=key)
        assert "Idempotency-Key" in envelope(reused.value)["response_msg"]


def test_an_api_keys_send_limits_answer_429_with_retry_after(customer: Customer) -> None:
    http = Http(customer.url, str(customer.ca))
    made = http.call("POST", "/v1/api-keys", auth=(customer.username, customer.api_key), json_body={
        "name": "limited", "scopes": ["*"], "send_limits": {"messages_per_minute": 2, "allowed_countries": ["AU"]}})
    assert made.status == 200, made.body
    secret = made.json()["secret"]
    with sdk_client(customer.url, customer.username, secret, str(customer.ca)) as client:
        api = clicksend.SmsApi(client)
        r = api.send_sms(send_sms_request={"messages": [{"to": REAL, "body": "1"}, {"to": "+14155550123",
                                                                                   "body": "us"}]})
        assert [m.status for m in r.data.messages] == ["SUCCESS", "COUNTRY_NOT_ALLOWED"]
        api.send_sms(send_sms_request={"messages": [{"to": REAL, "body": "2"}]})
        with pytest.raises(ApiException) as limited:
            api.send_sms(send_sms_request={"messages": [{"to": REAL, "body": "3"}]})
    err = limited.value
    assert err.status == 429 and envelope(err)["response_code"] == "TOO_MANY_REQUESTS"
    assert 1 <= int(err.headers["Retry-After"]) <= 60


def test_a_deidentified_subaccount_sees_no_content(customer: Customer) -> None:
    name = f"deid{uuid.uuid4().hex[:8]}"
    with sdk_client(customer.url, customer.username, customer.api_key, str(customer.ca)) as client:
        sub = clicksend.SubaccountsApi(client).create_subaccount(create_subaccount_request={
            "api_username": name, "password": "Violet-staple-orbit-7", "email": f"{name}@example.com",
            "phone_number": "+61412000111", "first_name": "De", "last_name": "Identified",
            "access_reporting": 1, "sms_deidentify_message": 1})
        secret = sub.data.api_key
        clicksend.SmsApi(client).send_sms(send_sms_request={"messages": [{"to": REAL, "body": "private"}]})
    with sdk_client(customer.url, name, secret, str(customer.ca)) as client:
        api = clicksend.SmsApi(client)
        page = api.view_sms_history(limit=15).data.data
        assert page and {m.body for m in page} == {""} and all("*" in m.to for m in page)
        with pytest.raises(ForbiddenException) as search:
            api.view_sms_history(q=f"to:{REAL}", limit=15)
        assert envelope(search.value)["response_code"] == "FORBIDDEN"
    # The same person logged in with their password (a session, not an API key) is masked the same way.
    http = Http(customer.url, str(customer.ca))
    login = http.call("POST", "/v1/auth/login", json_body={"username": name, "password": "Violet-staple-orbit-7"})
    assert login.status == 200, login.body
    session = {"Authorization": f"Bearer {login.json()['session_token']}"}
    history = http.call("GET", "/v3/sms/history?limit=15", headers=session)
    assert history.status == 200, history.body
    rows = history.json()["data"]["data"]
    assert rows and {m["body"] for m in rows} == {""} and all("*" in m["to"] for m in rows)
    assert REAL not in history.body.decode() and "private" not in history.body.decode()
    refused = http.call("GET", f"/v3/sms/history?limit=15&q=to:{REAL.replace('+', '%2B')}", headers=session)
    assert refused.status == 403, refused.body


# -- nothing of the content in any log or span of the whole suite -------------------------------------------


def test_no_body_or_number_in_any_suite_log_or_span(tester: Customer, suite: Suite,
                                                   otlp: tuple[OtlpReceiver, int]) -> None:
    """Send, search, deliver, receipt, reply and history with a unique body and number, then scan every
    process's log file and every span exported to the OTLP receiver."""
    receiver, _ = otlp
    body, reply = f"confidential {uuid.uuid4().hex}", f"answer {uuid.uuid4().hex}"
    number = unique_number()
    with sdk_client(tester.url, tester.username, tester.api_key, str(tester.ca)) as client:
        api = clicksend.SmsApi(client)
        mid = api.send_sms(send_sms_request={"messages": [{"to": number, "body": body}]},
                           _headers={"Idempotency-Key": uuid.uuid4().hex}).data.messages[0].message_id
        api.calculate_sms_price(calculate_sms_price_request={"messages": [{"to": number, "body": body}]})
        api.view_sms_history(q=f"to:{number},body:{body[:20]}", limit=15)
        until(lambda: _receipt(api, mid), lambda r: r is not None, "the receipt")
        r = Http(tester.url, str(tester.ca)).call("POST", "/v3/sms/inbound", auth=(tester.username, tester.api_key),
                                                    json_body={"url": "poll", "original_message_id": mid,
                                                               "body": reply})
        assert r.status == 200
        api.view_inbound_sms(limit=15)

    def settled(spans: list[Any]) -> bool:
        return any(s.service == "messaging" and "ListInboundSms" in s.name for s in spans)

    spans = receiver.wait_for(settled)
    assert settled(spans), "the calls' spans never arrived: the scan would prove nothing"
    needles = (body, reply, number, number[3:])
    for s in spans:
        text = f"{s.name} {s.attributes!r}"
        assert not any(n in text for n in needles), f"content in a {s.service} span: {s.name}"
    logs = sorted(suite.config.workdir.glob("*.log"))
    assert {p.stem for p in logs} >= {"messaging", "gateway", "messaging-worker0"}
    for path in logs:
        content = path.read_text(errors="replace")
        assert not any(n in content for n in needles), f"content in {path.name}"
