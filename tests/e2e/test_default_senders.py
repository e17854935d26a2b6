"""Default senders end to end (issue 21), through the HTTPS gateway and the official SDK (DefaultSendersApi: its
strict models validate every answer): a customer buys a dedicated number, makes it the default sender for AU,
lists, reads and changes it; a send with no `from` goes out from that number (its answer and the history say
so); a default naming a number the account does not hold is refused with 400; deleted, sends with no `from` go
out from the shared number again."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import clicksend
import pytest
from clicksend.exceptions import ApiException

from tests.e2e.api_client import Http, sdk_client
from tests.e2e.test_alert_notifications import live_account
from tests.support import CertBundle
from tools.numbers import load as load_inventory
from tools.numbers import ops_files, read_csv
from tools.suite import Suite


def _send(sms: clicksend.SmsApi) -> Any:
    out = sms.send_sms(send_sms_request={"messages": [{"to": "+61412345678", "body": "your order"}]}).data
    return out.messages[0]


def _strategy(number: str) -> dict[str, str]:
    return {"sender_type": "longcode", "sender_id": number, "sender_country_code": "AU"}


def test_default_sender_set_used_and_deleted(suite: Suite, certs: CertBundle) -> None:
    number = f"+6148{uuid.uuid4().int % 10000000:07d}"
    added, _ = asyncio.run(load_inventory(suite.addrs["messaging"], ops_files(certs.dir), read_csv(
        ["number,country,capabilities,price_setup,price_monthly", f"{number},AU,sms,0,20.71"])))
    assert added == 1
    owner = live_account(suite, certs)
    with sdk_client(owner.url, owner.username, owner.api_key, str(owner.ca)) as client:
        nums, sms = clicksend.NumbersApi(client), clicksend.SmsApi(client)
        defaults = clicksend.DefaultSendersApi(client)
        nums.purchase_dedicated_number(number, {"dedicated_number": number, "type": "sms"})
        first = _send(sms)
        assert (first.status, first.var_from) == ("SUCCESS", "")  # no default yet: the shared number

        # A number the account does not hold cannot be a default (400, ClickSend's BAD_REQUEST envelope).
        with pytest.raises(ApiException) as err:
            defaults.create_default_sender(create_default_sender_request={
                "country_code": "AU", "product_type": "SMS", "default_sender_strategies": [
                    _strategy("+61298765432")]})
        assert err.value.status == 400 and "not an active sender identity" in str(err.value.body)
        assert not defaults.get_default_senders_list().data.data

        made = defaults.create_default_sender(create_default_sender_request={
            "country_code": "AU", "product_type": "SMS", "default_sender_strategies": [_strategy(number)]})
        assert isinstance(made, clicksend.CreateDefaultSender) and made.response_code == "SUCCESS"
        d = made.data
        assert (d.country_code, d.product_type, d.status, d.subaccount_id) == ("AU", "SMS", "ENABLED", 0)
        assert [(s.sender_type, s.sender_id, s.priority, s.status) for s in d.default_sender_strategies] == [
            ("longcode", number, 1, "ENABLED")]

        listed = defaults.get_default_senders_list(per_page=10)
        assert isinstance(listed, clicksend.GetDefaultSendersList)
        assert [x.id for x in listed.data.data or []] == [d.id] and listed.data.per_page == 10
        got = defaults.get_default_sender_details(d.id)
        assert isinstance(got, clicksend.GetDefaultSenderDetails) and got.data.id == d.id
        changed = defaults.update_default_sender(d.id, update_default_sender_request={
            "default_sender_strategies": [{**_strategy(number), "note": "the shop's number"}]})
        assert isinstance(changed, clicksend.UpdateDefaultSender)
        assert changed.data.default_sender_strategies[0].note == "the shop's number"

        # A send with no `from` goes out from the default; the history says so.
        sent = _send(sms)
        assert (sent.status, sent.var_from) == ("SUCCESS", number) and sent.message_id
        history = {m.message_id: m.var_from for m in sms.view_sms_history(limit=100).data.data or []}
        assert history[sent.message_id] == number and history[first.message_id] == ""

        assert defaults.delete_default_sender(d.id) is None
        assert not defaults.get_default_senders_list().data.data
        with pytest.raises(ApiException) as err:
            defaults.get_default_sender_details(d.id)
        assert err.value.status == 404
        again = _send(sms)
        assert (again.status, again.var_from) == ("SUCCESS", "")

    # Another account never sees it (checked before deletion in the integration test); here: its list is empty.
    other = live_account(suite, certs)
    r = Http(other.url, str(other.ca)).call("GET", "/v3/senders/default-senders",
                                            auth=(other.username, other.api_key))
    assert r.status == 200 and r.json()["data"]["data"] == [], r.body
