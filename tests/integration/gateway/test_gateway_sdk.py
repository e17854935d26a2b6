"""The official ClickSend SDK (clicksend-client 6.0.2), unchanged, against the gateway.

The SDK validates every response through strict pydantic models (StrictInt/StrictStr/...), so these
calls fail if any JSON type on the /v3 surface is wrong. It is synchronous (urllib3), so it runs in a
thread while the gateway serves on the test's event loop.
"""

from __future__ import annotations

import asyncio

import clicksend
import pytest
from clicksend.exceptions import ApiException

from tests.integration.gateway.gw_support import ALICE_KEY, Backends, RunningGateway
from tests.support import CertBundle


def _config(gw: RunningGateway, certs: CertBundle, key: str = ALICE_KEY) -> clicksend.Configuration:
    return clicksend.Configuration(
        host=gw.url, username="alice", password=key, ssl_ca_cert=str(certs.public_ca), retries=False
    )


async def test_sdk_send_history_account(gw: RunningGateway, certs: CertBundle, gw_backends: Backends) -> None:
    def run() -> tuple:
        with clicksend.ApiClient(_config(gw, certs)) as api:
            sms = clicksend.SmsApi(api)
            sent = sms.send_sms(send_sms_request={
                "messages": [{"to": "+61411111111", "body": "hello from the SDK", "from": "SendSafe",
                              "schedule": 0, "custom_string": "c-1"},
                             {"to": "+61422222222", "body": "second"}]})
            history = sms.view_sms_history(page=1, limit=15, date_from=1_700_000_000)
            account = clicksend.ManagementApi(api).view_account_details()
            return sent, history, account

    sent, history, account = await asyncio.to_thread(run)
    assert sent.http_code == 200 and sent.response_code == "SUCCESS"
    assert sent.response_msg == "Messages queued for delivery."
    assert sent.data.total_count == 2 and sent.data.queued_count == 2
    assert sent.data.currency.currency_name_short == "AUD"
    first = sent.data.messages[0]
    assert first.var_from == "SendSafe" and first.message_price == "0.0770" and first.custom_string == "c-1"
    assert first.is_shared_system_number is False
    # What the SDK put on the wire reached messaging intact (its default source included).
    req = gw_backends.rec.last("SendSms").request
    assert req.messages[0].sender == "SendSafe" and req.messages[1].source == "sdk-python"

    assert history.response_code == "SUCCESS" and history.data.total == 2
    assert history.data.var_from == 1 and history.data.to == 2 and history.data.next_page_url is None
    assert history.data.data[0].error_code is None and history.data.data[0].api_username == "alice"
    hreq = gw_backends.rec.last("ListSmsHistory").request
    assert (hreq.page, hreq.limit, hreq.date_from) == (1, 15, 1_700_000_000)

    assert account.response_msg == "Here's your account"
    assert account.data.user_id == 7 and account.data.username == "alice" and account.data.balance == "12.500000"
    assert account.data.currency.min_recharge_amount == "20.00"
    assert account.data.subaccount.api_username == "alice" and account.data.subaccount.is_main == 1


async def test_sdk_sees_errors_as_api_exceptions(gw: RunningGateway, certs: CertBundle) -> None:
    def run(key: str) -> ApiException:
        with clicksend.ApiClient(_config(gw, certs, key)) as api:
            with pytest.raises(ApiException) as exc:
                clicksend.SmsApi(api).send_sms(send_sms_request={"messages": [{"to": "+61411111111", "body": "x"}]})
            return exc.value

    err = await asyncio.to_thread(run, "not-the-key")
    assert err.status == 401 and '"response_code":"UNAUTHORIZED"' in err.body


async def test_sdk_refuses_an_untrusted_gateway(gw: RunningGateway, certs: CertBundle) -> None:
    def run() -> ApiException:
        conf = clicksend.Configuration(host=gw.url, username="alice", password=ALICE_KEY, retries=False)
        with clicksend.ApiClient(conf) as api:  # system CAs only: our dev CA is not among them
            with pytest.raises(ApiException) as exc:
                clicksend.ManagementApi(api).view_account_details()
            return exc.value

    err = await asyncio.to_thread(run)
    assert err.status == 0 and "SSL" in str(err.reason)
