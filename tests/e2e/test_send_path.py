"""One SMS through every service, as a customer sees it: the official ClickSend SDK over HTTPS."""

from __future__ import annotations

import time
import uuid

import asyncpg
import clicksend
import pytest

from tests.e2e.api_client import Http, sdk_client
from tests.e2e.conftest import Customer
from tools.suite import Suite

TEST_NUMBER = "+61411111111"


def _wait_history(api: clicksend.SmsApi, message_id: str, status_code: str, deadline_s: float = 30.0):  # type: ignore[no-untyped-def]
    """Poll history (observable state) until the message shows `status_code` or the deadline passes."""
    end = time.monotonic() + deadline_s
    while True:
        page = api.view_sms_history(limit=100)
        for item in page.data.data or []:
            if item.message_id == message_id and item.status_code == status_code:
                return item
        if time.monotonic() > end:
            pytest.fail(f"message {message_id} did not reach status_code {status_code}")
        time.sleep(0.2)


def test_sdk_send_history_and_account(customer: Customer) -> None:
    body = f"hello {uuid.uuid4().hex[:8]}"
    with sdk_client(customer.url, customer.username, customer.api_key, str(customer.ca)) as client:
        sms = clicksend.SmsApi(client)
        sent = sms.send_sms(send_sms_request={"messages": [{"to": TEST_NUMBER, "body": body, "source": "e2e"}]})
        assert sent.http_code == 200 and sent.response_code == "SUCCESS"
        assert sent.data.queued_count == 1 and sent.data.blocked_count == 0
        msg = sent.data.messages[0]
        assert msg.status == "SUCCESS" and msg.to == TEST_NUMBER and msg.body == body
        assert isinstance(msg.message_price, str) and msg.message_parts == 1
        delivered = _wait_history(sms, msg.message_id, "201")
        assert delivered.body == body and delivered.to == TEST_NUMBER
        assert delivered.status == "Sent"

        account = clicksend.ManagementApi(client).view_account_details()
        assert account.data.username == customer.username
        assert isinstance(account.data.balance, str)
        assert account.data.subaccount.api_key != customer.api_key


def test_stored_row_holds_no_plaintext(customer: Customer, suite: Suite) -> None:
    marker = f"secret-{uuid.uuid4().hex}"
    with sdk_client(customer.url, customer.username, customer.api_key, str(customer.ca)) as client:
        sent = clicksend.SmsApi(client).send_sms(
            send_sms_request={"messages": [{"to": TEST_NUMBER, "body": marker}]}
        )
        assert sent.data.queued_count == 1

    async def scan() -> bytes:
        conn = await asyncpg.connect(suite.config.database_url("messaging"))
        try:
            rows = await conn.fetch(
                "SELECT t.* FROM messages t"  # every column of every message row, as text
            )
            return b"".join(str(tuple(r.values())).encode() for r in rows)
        finally:
            await conn.close()

    import asyncio

    dump = asyncio.run(scan())
    assert marker.encode() not in dump
    assert TEST_NUMBER.encode() not in dump


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("wrong_key", 401, "UNAUTHORIZED"),
        ("malformed_json", 400, "BAD_REQUEST"),
        ("too_many", 400, "TOO_MANY_RECIPIENTS"),
        ("oversized", 413, None),
        ("empty", 400, "MISSING_REQUIRED_FIELDS"),
    ],
)
def test_whole_request_errors_get_envelope(customer: Customer, case: str, status: int, code: str | None) -> None:
    http = Http(customer.url, str(customer.ca))
    auth = (customer.username, customer.api_key)
    if case == "wrong_key":
        r = http.call("POST", "/v3/sms/send", auth=(customer.username, "ss_live_wrong"),
                      json_body={"messages": [{"to": TEST_NUMBER, "body": "x"}]})
    elif case == "malformed_json":
        r = http.call("POST", "/v3/sms/send", auth=auth, body=b'{"messages": [',
                      headers={"Content-Type": "application/json"})
    elif case == "too_many":
        r = http.call("POST", "/v3/sms/send", auth=auth,
                      json_body={"messages": [{"to": TEST_NUMBER, "body": "x"}] * 1001})
    elif case == "oversized":
        r = http.call("POST", "/v3/sms/send", auth=auth, body=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                      headers={"Content-Type": "application/json"})
    else:
        r = http.call("POST", "/v3/sms/send", auth=auth, json_body={"messages": []})
    assert r.status == status
    env = r.json()
    assert env["http_code"] == status and env["data"] is None and env["response_msg"]
    if code:
        assert env["response_code"] == code


def test_invalid_recipient_is_reported_and_not_stored(customer: Customer) -> None:
    with sdk_client(customer.url, customer.username, customer.api_key, str(customer.ca)) as client:
        sms = clicksend.SmsApi(client)
        before = sms.view_sms_history(limit=15).data.total
        sent = sms.send_sms(send_sms_request={"messages": [
            {"to": "+6100", "body": "nope"}, {"to": TEST_NUMBER, "body": "ok"}]})
        statuses = [m.status for m in sent.data.messages]
        assert statuses == ["INVALID_RECIPIENT", "SUCCESS"]
        assert sent.data.queued_count == 1 and sent.data.blocked_count == 1
        after = sms.view_sms_history(limit=15).data.total
        assert after == before + 1
