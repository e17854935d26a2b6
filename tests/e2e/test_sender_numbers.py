"""Sender numbers end to end (issue 21, Must show), through the HTTPS gateway and the official SDK (NumbersApi,
OwnNumbersApi: their strict models validate every answer). The operator loads numbers (python -m tools.numbers'
loader, as the ops identity); a customer lists those for sale and buys one, sends from it (SUCCESS) and from an
unknown number or an alpha tag it never got approved (INVALID_SENDER_ID: nothing stored, nothing charged -
balance and history say so); verifies a number of its own with the code the simulator carrier delivered to the
handset; a second account cannot verify that number while the first holds it; the owners' feed shows the steps."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import clicksend
import pytest
from clicksend.exceptions import ApiException

from sendsafe.keys.v1 import keys_service_pb2_grpc
from services.messaging.domain.records import BODY_RECORD
from svckit.envelope import Envelope, KeysStubSource, aad_for
from svckit.rpc import secure_channel
from tests.e2e.api_client import Http, sdk_client, until
from tests.e2e.test_alert_notifications import live_account
from tests.support import CertBundle
from tools.numbers import load as load_inventory
from tools.numbers import ops_files, read_csv
from tools.suite import Suite


def _handset_code(suite: Suite, certs: CertBundle, account_id: int) -> str:
    """The code the handset got: the carrier's copy of the account's newest verification SMS (its ciphertext,
    opened with messaging's own certificate; the API never shows it)."""

    async def read() -> str:
        conn = await asyncpg.connect(suite.config.database_url("messaging"))
        try:
            row = await conn.fetchrow(
                "SELECT m.id, m.body_ct FROM messages m JOIN carrier_sim_submissions s ON s.message_id = m.id"
                " WHERE m.account_id = $1 AND m.cause = 'destination_verification' ORDER BY m.create_time DESC"
                " LIMIT 1", account_id)
        finally:
            await conn.close()
        assert row is not None, "the simulator carrier has not taken the code's SMS yet"
        async with secure_channel(suite.addrs["keys"], certs.tls("messaging"), server_name="keys") as ch:
            envelope = Envelope(KeysStubSource(keys_service_pb2_grpc.KeysServiceStub(ch)))
            body = await envelope.decrypt(account_id, aad_for(account_id, BODY_RECORD, str(row["id"]).upper()),
                                          bytes(row["body_ct"]))
        return body.decode()

    text = until(lambda: _try(read), lambda t: bool(t), "the verification SMS at the simulator carrier")
    assert text.startswith("SendSafe verification code: ")
    return text[-6:]


def _try(read: Any) -> str:
    try:
        return str(asyncio.run(read()))
    except AssertionError:
        return ""


def _send(sms: clicksend.SmsApi, sender: str) -> Any:
    return sms.send_sms(send_sms_request={"messages": [{"to": "+61412345678", "body": "your order", "from": sender}]})


def _balance(http: Http, auth: tuple[str, str]) -> float:
    return float(http.call("GET", "/v3/account", auth=auth).json()["data"]["balance"])


def test_buy_send_from_and_verify_numbers(suite: Suite, certs: CertBundle) -> None:
    stem = f"{uuid.uuid4().int % 10000:04d}"
    numbers = [f"+6148{stem}{k:03d}" for k in range(1, 4)]
    csv_lines = ["number,country,capabilities,price_setup,price_monthly"] + [f"{n},AU,sms,0,20.71" for n in numbers]
    added, _ = asyncio.run(load_inventory(suite.addrs["messaging"], ops_files(certs.dir), read_csv(csv_lines)))
    assert added == 3

    owner, other = live_account(suite, certs), live_account(suite, certs)
    http = Http(owner.url, str(owner.ca))
    main = (owner.username, owner.api_key)
    account_id = int(http.call("GET", "/v3/account", auth=main).json()["data"]["account"])
    own = f"+614125{stem}{uuid.uuid4().int % 10:01d}"
    with sdk_client(owner.url, owner.username, owner.api_key, str(owner.ca)) as client:
        nums, owned, sms = clicksend.NumbersApi(client), clicksend.OwnNumbersApi(client), clicksend.SmsApi(client)
        # Numbers for sale, bought, listed.
        sale = nums.view_available_numbers("AU")
        assert isinstance(sale, clicksend.ViewAvailableNumbers) and sale.data is not None
        for_sale = {n.dedicated_number: n for n in sale.data.data or []}
        assert numbers[0] in for_sale and for_sale[numbers[0]].price_monthly == "20.7100"
        bought = nums.purchase_dedicated_number(numbers[0], {"dedicated_number": numbers[0], "type": "sms"})
        assert isinstance(bought, clicksend.PurchaseDedicatedNumber) and bought.data is not None
        assert (bought.data.dedicated_number, bought.response_code) == (numbers[0], "SUCCESS")
        mine = nums.view_your_numbers()
        assert isinstance(mine, clicksend.ViewYourNumbers) and mine.data is not None
        assert [n.dedicated_number for n in mine.data.data or []] == [numbers[0]]
        assert numbers[0] not in {n.dedicated_number for n in nums.view_available_numbers("AU").data.data or []}

        # Sends: from the number it bought, SUCCESS (charged); from anything else, INVALID_SENDER_ID (free).
        before = _balance(http, main)
        ok = _send(sms, numbers[0]).data.messages[0]
        assert (ok.status, ok.var_from) == ("SUCCESS", numbers[0]) and ok.message_id
        charged = _balance(http, main)
        assert charged < before
        for sender in (numbers[1], "MyBank", "+61298765432"):
            refused = _send(sms, sender).data
            assert refused.messages[0].status == "INVALID_SENDER_ID" and not refused.messages[0].message_id
            assert refused.total_price == 0
        assert _balance(http, main) == pytest.approx(charged)
        history = sms.view_sms_history(limit=100).data
        assert history.total == 1 and [m.message_id for m in history.data] == [ok.message_id]

        # An own number: a code to the handset (a send of the owner's), entered back.
        started = owned.request_own_number_verification_otp(request_own_number_verification_otp_request={
            "phone_number": own, "country": "AU", "label": "reception"})
        assert isinstance(started, clicksend.RequestOwnNumberVerificationOtp)
        assert started.status == "PENDING" and started.remaining_attempts == 5 and started.own_number_id
        code = _handset_code(suite, certs, account_id)
        assert _send(sms, own).data.messages[0].status == "INVALID_SENDER_ID"  # not before the code is back
        with pytest.raises(ApiException):
            owned.verify_own_number_otp(started.id, verify_own_number_otp_request={
                "code": "000000" if code != "000000" else "111111", "phone_number": own})
        done = owned.verify_own_number_otp(started.id, verify_own_number_otp_request={"code": code,
                                                                                       "phone_number": own})
        assert isinstance(done, clicksend.VerifyOwnNumberOtp) and done.status == "APPROVED"
        listed = owned.list_own_numbers()
        assert isinstance(listed, clicksend.ListOwnNumbers)
        assert [(n.status, n.label, n.phone_number) for n in listed.own_numbers or []] == [
            ("APPROVED", "reception", own[:3] + "*" * (len(own) - 6) + own[-3:])]
        assert _send(sms, own).data.messages[0].status == "SUCCESS"
        # The code never shows in history (whoever reads it could otherwise verify a number they do not hold).
        bodies = [m.body or "" for m in sms.view_sms_history(limit=100).data.data or []]
        assert not any(code in b for b in bodies)

    # A second account cannot verify the number while the first holds it (no code is even sent).
    theirs = Http(other.url, str(other.ca))
    r = theirs.call("POST", "/v3/own-numbers/verifications", auth=(other.username, other.api_key),
                    json_body={"phone_number": own, "country": "AU"})
    assert r.status == 400 and "another account holds this number" in r.json()["response_msg"], r.body
    r = theirs.call("POST", f"/v3/numbers/buy/{numbers[0]}", auth=(other.username, other.api_key),
                    json_body={"dedicated_number": numbers[0], "type": "sms"})
    assert r.status == 400 and "not for sale" in r.json()["response_msg"], r.body
    with sdk_client(other.url, other.username, other.api_key, str(other.ca)) as client:
        assert _send(clicksend.SmsApi(client), numbers[0]).data.messages[0].status == "INVALID_SENDER_ID"

    # The owner's feed: every step, and the new senders (the owners' security notice is about these).
    def feed() -> list[str]:
        got = http.call("GET", "/v1/audit/events?page_size=500", auth=main).json()
        return [e["action"] for e in got.get("events", []) if e["action"].startswith("messaging.sender.")]

    acts = until(feed, lambda a: a.count("messaging.sender.activated") == 2, "the sender events in the feed")
    assert {"messaging.sender.number_bought", "messaging.sender.code_sent", "messaging.sender.verified"} <= set(acts)
