"""Sign-up through the HTTPS gateway (issue 15): a person opens an account, gets the code on the suite's real SMTP
server, sends in test mode (free, never delivered) until they enter it, and for real after; staff open an account
for a customer, who sets their password with the emailed code; both feeds record it. Throttling per network and the
code's limits are shown over mTLS in tests/integration/identity/test_signup.py (here every client is 127.0.0.1)."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pyotp

from sendsafe.identity.v1 import staff_service_pb2
from tests.e2e.api_client import Http
from tests.e2e.conftest import Customer
from tests.e2e.identity_support import PASSWORD, bearer, login, reason, unique, wait_feed
from tests.e2e.test_identity_staff import STAFF_PASSWORD, _create_staff
from tests.integration.messaging.smtp_server import Inbox, Received
from tests.support import CertBundle
from tools.suite import Suite

REAL = "+61491570156"  # a real (not test) Australian mobile number: priced when the account is live


def wait_mail(inbox: Inbox, to: str, count: int = 1, deadline_s: float = 20.0) -> Received:
    """The `count`th sign-up code email to `to` (security notices about the account go there too)."""
    end = time.monotonic() + deadline_s
    while True:
        mails = [m for m in list(inbox.received)
                 if m.rcpt_tos == [to] and m.message["Subject"] == "SendSafe sign-up code"]
        if len(mails) >= count:
            return mails[count - 1]
        assert time.monotonic() < end, f"no sign-up email reached {to}"
        time.sleep(0.1)


def code_of(mail: Received) -> str:
    found = re.search(r"^\s+(\d{8})\s*$", mail.message.get_content(), re.M)
    assert found, mail.message.get_content()
    return found.group(1)


def send_one(http: Http, token: str) -> dict[str, Any]:
    r = http.call("POST", "/v3/sms/send", headers=bearer(token),
                  json_body={"messages": [{"to": REAL, "body": "hello from a new account", "source": "e2e"}]})
    assert r.status == 200, r.body
    return dict(r.json()["data"])


def test_sign_up_verify_by_email_then_send_for_real(customer: Customer, smtp_inbox: Inbox) -> None:
    http = Http(customer.url, str(customer.ca))
    username = unique("signup")
    email = f"{username}@people.example"
    made = http.call("POST", "/v1/signup", json_body={
        "name": "Grace Hopper", "username": username, "email": email, "password": PASSWORD, "country": "AU",
        "timezone": "Australia/Sydney"})
    assert made.status == 200, made.body
    body = made.json()
    assert body["username"] == username and body["test_mode"] is True and body["email_verification_pending"] is True
    assert body["verification_email_sent"] is True and int(body["account_id"]) > 0
    assert PASSWORD.encode() not in made.body
    # The same username again: a clear conflict.
    again = http.call("POST", "/v1/signup", json_body={
        "name": "Someone Else", "username": username.upper(), "email": f"x{email}", "password": PASSWORD + " x",
        "country": "AU"})
    assert again.status == 409 and reason(again) == "ALREADY_EXISTS"

    mail = wait_mail(smtp_inbox, email)
    assert mail.message["Subject"] == "SendSafe sign-up code" and mail.tls in ("TLSv1.2", "TLSv1.3")
    code = code_of(mail)

    # Before verification: test mode, so a send is free and never delivered.
    token = login(http, username).json()["session_token"]
    before = send_one(http, token)
    assert before["messages"][0]["status"] == "SUCCESS" and before["total_price"] == 0, before

    wrong = http.call("POST", "/v1/signup/verify", json_body={"username": username, "code": "00000000"})
    assert wrong.status == 400 and reason(wrong) == "SIGNUP_CODE_INVALID"
    done = http.call("POST", "/v1/signup/verify", json_body={"username": username, "code": code})
    assert done.status == 200, done.body
    assert done.json()["test_mode"] is False and done.json()["account_id"] == body["account_id"]
    used = http.call("POST", "/v1/signup/verify", json_body={"username": username, "code": code})
    assert used.status == 400 and reason(used) == "SIGNUP_CODE_INVALID"

    # After: a new session is live, and the same send is priced (and goes to the carrier).
    live = login(http, username).json()["session_token"]
    after = send_one(http, live)
    assert after["messages"][0]["status"] == "SUCCESS" and after["total_price"] > 0, after

    # The account's own feed tells the story with ids and the network, never the address, the name or the code.
    steps = {"account.create", "identity.signup", "identity.signup.code_sent", "identity.signup.verify"}
    events = wait_feed(http, lambda evs: steps <= {e["action"] for e in evs}, headers=bearer(live))
    text = json.dumps(events)
    for secret in (email, "Grace", "Hopper", code, PASSWORD):
        assert secret not in text, secret
    verified = [e for e in events if e["action"] == "identity.signup.verify" and e["outcome"] == "OUTCOME_SUCCESS"]
    assert verified and verified[0]["details"]["network"] == "127.0.0.0/24"


def test_staff_open_an_account_and_the_customer_sets_the_password_with_the_emailed_code(
    suite: Suite, customer: Customer, certs: CertBundle, smtp_inbox: Inbox,
) -> None:
    http = Http(customer.url, str(customer.ca))
    created = _create_staff(suite, certs, staff_service_pb2.STAFF_ROLE_PLATFORM_ADMIN)
    totp = pyotp.parse_uri(created.otpauth_uri)
    assert isinstance(totp, pyotp.TOTP)
    r = login(http, created.staff_user.username, STAFF_PASSWORD, staff=True, totp_code=totp.now())
    assert r.status == 200, r.body
    staff = bearer(r.json()["session_token"])
    username = unique("opened")
    email = f"{username}@customer.example"
    request = {"name": "Katherine Johnson", "username": username, "email": email, "country": "US"}
    assert http.call("POST", "/v1/staff/accounts", headers=staff, json_body=request).status == 400  # no reason
    why = "ticket SUP-77: customer asked for an account by phone"
    opened = http.call("POST", "/v1/staff/accounts", headers=staff, json_body={**request, "reason": why})
    assert opened.status == 200, opened.body
    account_id = opened.json()["account_id"]
    assert opened.json()["test_mode"] is True and opened.json()["email_verification_pending"] is True

    mail = wait_mail(smtp_inbox, email)
    assert "password" in mail.message.get_content()
    code = code_of(mail)
    # No password yet: nobody (staff included) can log in until the customer chooses one with the code.
    assert login(http, username, PASSWORD).status == 401
    needs = http.call("POST", "/v1/signup/verify", json_body={"username": username, "code": code})
    assert needs.status == 400 and reason(needs) == "PASSWORD_REQUIRED"
    done = http.call("POST", "/v1/signup/verify", json_body={"username": username, "code": code, "password": PASSWORD})
    assert done.status == 200 and done.json()["test_mode"] is False, done.body
    token = login(http, username, PASSWORD).json()["session_token"]

    def opened_by_staff(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in events if e["details"].get("operation") == "CreateCustomerAccount"
                and e["resource"]["id"] == str(account_id)]

    theirs = opened_by_staff(wait_feed(http, opened_by_staff, headers=bearer(token), action="staff.customer_access"))
    assert theirs[0]["actor"]["type"] == "staff" and theirs[0]["details"]["reason"] == why
    ours = opened_by_staff(wait_feed(http, opened_by_staff, headers=staff, action="staff.customer_access"))
    assert ours[0]["details"]["customer_account_id"] == str(account_id)
    assert email not in json.dumps(theirs + ours)


def test_signup_routes_are_public_and_answer_anyone_alike(customer: Customer) -> None:
    http = Http(customer.url, str(customer.ca))
    anonymous = http.call("POST", "/v1/signup/resend", json_body={"username": unique("nobody")})
    assert anonymous.status == 200 and anonymous.json() == {}
    with_key = http.call("POST", "/v1/signup/resend", auth=(customer.username, customer.api_key),
                         json_body={"username": unique("nobody")})
    assert with_key.status == 200 and with_key.json() == {}
