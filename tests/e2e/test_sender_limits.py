"""Sender limits end to end (issue 21), through the HTTPS gateway and the official SDK: the account holds two sender
identities (alpha tags approved by a staff member), an API key limited to one of them sends from it and gets
INVALID_SENDER_ID from the other (nothing stored or charged), keeps the limit when rolled, and cannot make a key that
widens it; a sub-account limited to one sender is held the same way, the users it creates inherit the limit, and it
can neither lift nor widen it; ClickSend's /v3 sub-account shapes stay what the SDK validates."""

from __future__ import annotations

import time
import uuid
from typing import Any

import clicksend
import pyotp

from sendsafe.identity.v1 import staff_service_pb2
from tests.e2e.api_client import Http, sdk_client, until
from tests.e2e.conftest import Customer
from tests.e2e.identity_support import PASSWORD, bearer, reason, unique, wait_feed
from tests.e2e.test_identity_staff import _create_staff, _staff_login
from tests.support import CertBundle
from tools.suite import Suite

REAL = "+61412345678"


def _send(username: str, secret: str, customer: Customer, sender: str) -> str:
    with sdk_client(customer.url, username, secret, str(customer.ca)) as client:
        message = {"to": REAL, "body": "order ready", **({"from": sender} if sender else {})}
        out = clicksend.SmsApi(client).send_sms(send_sms_request={"messages": [message]}).data
    return str(out.messages[0].status)


def _approved_tags(suite: Suite, customer: Customer, certs: CertBundle, http: Http, *names: str) -> None:
    """The account's sender identities: alpha tags it requests and a support agent approves."""
    with sdk_client(customer.url, customer.username, customer.api_key, str(customer.ca)) as client:
        tags = clicksend.AlphaTagsApi(client)
        ids = [tags.request_alpha_tag(request_alpha_tag_request={"alpha_tag": n, "reason": "our shops"}).id
               for n in names]
    agent = _create_staff(suite, certs, staff_service_pb2.STAFF_ROLE_SUPPORT_AGENT)
    staff = bearer(_staff_login(http, agent, pyotp.TOTP(agent.totp_secret).at(int(time.time()) // 30 * 30))[
        "session_token"])
    for tag_id in ids:
        approved = http.call("POST", f"/v1/staff/alpha-tags/{tag_id}/approve", headers=staff,
                             json_body={"reason": "matches the business register"})
        assert approved.status == 200, approved.body


def _subaccount(http: Http, auth: tuple[str, str], **flags: int) -> tuple[str, dict[str, Any]]:
    """A sub-account created by `auth` (raw JSON: the SDK's create request has no access_sms)."""
    name = unique("lim")
    made = http.call("POST", "/v3/subaccounts", auth=auth, json_body={
        "api_username": name, "password": PASSWORD, "email": f"{name}@example.com", **flags})
    assert made.status == 200, made.body
    return name, made.json()["data"]


def _history_and_balance(http: Http, main: tuple[str, str]) -> tuple[int, str]:
    history = http.call("GET", "/v3/sms/history?limit=100", auth=main).json()["data"]["total"]
    return int(history), http.call("GET", "/v3/account", auth=main).json()["data"]["balance"]


def test_an_api_key_limited_to_a_sender(suite: Suite, customer: Customer, certs: CertBundle) -> None:
    http = Http(customer.url, str(customer.ca))
    main = (customer.username, customer.api_key)
    sfx = uuid.uuid4().hex[:4].upper()
    brand, other = f"Brand {sfx}", f"Other {sfx}"
    _approved_tags(suite, customer, certs, http, brand, other)
    assert _send(*main, customer, other) == "SUCCESS"  # the account may use both

    bad = http.call("POST", "/v1/api-keys", auth=main, json_body={
        "name": "bad", "scopes": ["*"], "send_limits": {"allowed_senders": ["Bank&Co"]}})
    assert bad.status == 400 and reason(bad) == "ALLOWED_SENDERS_INVALID", bad.body
    made = http.call("POST", "/v1/api-keys", auth=main, json_body={
        "name": "brand only", "scopes": ["*"], "send_limits": {"allowed_senders": [brand.lower()]}})
    assert made.status == 200, made.body
    key, meta = made.json()["secret"], made.json()["api_key"]
    assert meta["send_limits"]["allowed_senders"] == [brand.lower()]
    listed = http.call("GET", "/v1/api-keys", auth=main).json()["api_keys"]
    assert [k["send_limits"]["allowed_senders"] for k in listed if k["key_id"] == meta["key_id"]] == [[brand.lower()]]

    assert _send(customer.username, key, customer, brand) == "SUCCESS"
    before = _history_and_balance(http, main)
    assert _send(customer.username, key, customer, other) == "INVALID_SENDER_ID"
    assert _send(customer.username, key, customer, "") == "INVALID_SENDER_ID"  # no fallback to the shared number
    assert _history_and_balance(http, main) == before  # nothing stored, nothing charged

    # A rolled key keeps the limit; a key made with it cannot widen it.
    rolled = http.call("POST", f"/v1/api-keys/{meta['key_id']}/roll", auth=main, json_body={"overlap_seconds": 0})
    assert rolled.status == 200, rolled.body
    new_key = rolled.json()["secret"]
    assert rolled.json()["api_key"]["send_limits"]["allowed_senders"] == [brand.lower()]
    assert _send(customer.username, new_key, customer, other) == "INVALID_SENDER_ID"
    assert _send(customer.username, new_key, customer, brand) == "SUCCESS"
    wider = http.call("POST", "/v1/api-keys", auth=(customer.username, new_key), json_body={
        "name": "wider", "scopes": ["sms.send"], "send_limits": {"allowed_senders": [brand, other]}})
    assert wider.status == 403 and reason(wider) == "EXCEEDS_CALLING_KEY", wider.body
    child = http.call("POST", "/v1/api-keys", auth=(customer.username, new_key), json_body={
        "name": "child", "scopes": ["sms.send"]})
    assert child.status == 200 and child.json()["api_key"]["send_limits"]["allowed_senders"] == [brand.lower()]
    assert _send(customer.username, child.json()["secret"], customer, other) == "INVALID_SENDER_ID"

    # The key's audit event names the limit.
    events = wait_feed(http, lambda evs: [e for e in evs if e["resource"]["id"] == meta["key_id"]], auth=main,
                       action="keys.api_key.created")
    assert [e["details"]["allowed_senders"] for e in events if e["resource"]["id"] == meta["key_id"]] == [
        brand.lower()]


def test_a_subaccount_limited_to_a_sender(suite: Suite, customer: Customer, certs: CertBundle) -> None:
    http = Http(customer.url, str(customer.ca))
    main = (customer.username, customer.api_key)
    sfx = uuid.uuid4().hex[:4].upper()
    brand, other = f"Shop {sfx}", f"Deli {sfx}"
    _approved_tags(suite, customer, certs, http, brand, other)
    name, sub = _subaccount(http, main, access_sms=1, access_users=1, access_settings=1)
    path = f"/v1/subaccounts/{sub['subaccount_id']}/sender-limits"
    assert http.call("GET", path, auth=main).json()["sender_limits"]["allowed_senders"] == []
    bad = http.call("PUT", path, auth=main, json_body={"allowed_senders": ["+0412"]})
    assert bad.status == 400 and reason(bad) == "ALLOWED_SENDERS_INVALID", bad.body
    limited = http.call("PUT", path, auth=main, json_body={"allowed_senders": [brand]})
    assert limited.status == 200 and limited.json()["sender_limits"]["allowed_senders"] == [brand], limited.body

    me = (name, sub["api_key"])
    assert _send(*me, customer, brand) == "SUCCESS"
    before = _history_and_balance(http, main)
    assert _send(*me, customer, other) == "INVALID_SENDER_ID"
    assert _history_and_balance(http, main) == before
    # Its own API key cannot widen what its user may do: the principal holds the intersection.
    both = http.call("POST", "/v1/api-keys", auth=me, json_body={
        "name": "both", "scopes": ["*"], "send_limits": {"allowed_senders": [brand, other]}})
    assert both.status == 200, both.body
    assert _send(name, both.json()["secret"], customer, other) == "INVALID_SENDER_ID"

    # A user it creates inherits the limit; it can neither widen nor lift it, nor its own.
    child, kid = _subaccount(http, me, access_sms=1)
    with sdk_client(customer.url, name, me[1], str(customer.ca)) as client:
        # The /v3 shapes carry no sender limit: the SDK's strict models validate these answers.
        seen = clicksend.SubaccountsApi(client).view_specific_subaccount(str(kid["subaccount_id"])).data
        assert seen.api_username == child and "allowed_senders" not in seen.to_dict()
        listed = clicksend.SubaccountsApi(client).view_subaccounts().data.data
        assert listed and all("allowed_senders" not in s.to_dict() for s in listed)
    kid_path = f"/v1/subaccounts/{kid['subaccount_id']}/sender-limits"
    assert http.call("GET", kid_path, auth=me).json()["sender_limits"]["allowed_senders"] == [brand]
    assert _send(child, kid["api_key"], customer, other) == "INVALID_SENDER_ID"
    assert _send(child, kid["api_key"], customer, brand) == "SUCCESS"
    wider = http.call("PUT", kid_path, auth=me, json_body={"allowed_senders": [brand, other]})
    assert wider.status == 403 and reason(wider) == "DELEGATION_EXCEEDS_ACTOR", wider.body
    lifted = http.call("PUT", kid_path, auth=me, json_body={"allowed_senders": []})
    assert lifted.status == 403 and reason(lifted) == "RESTRICTION_NOT_LIFTABLE", lifted.body
    own = http.call("PUT", path, auth=me, json_body={"allowed_senders": []})
    assert own.status == 403, own.body
    assert http.call("GET", kid_path, auth=main).json()["sender_limits"]["allowed_senders"] == [brand]

    # The main user lifts it; each change is in the sub-account's audit event (tags only, numbers counted).
    assert http.call("PUT", path, auth=main, json_body={"allowed_senders": []}).status == 200

    def changes(evs: list[dict[str, Any]]) -> list[str]:
        return [e["details"]["allowed_senders"] for e in evs
                if e["resource"]["id"] == str(sub["subaccount_id"]) and e["details"].get("fields") == "allowed_senders"]

    events = wait_feed(http, lambda evs: len(changes(evs)) >= 2, auth=main, action="subaccount.update")
    assert changes(events) == [brand, "any"]
    until(lambda: _send(*me, customer, other), lambda status: status == "SUCCESS", "the lifted limit")
