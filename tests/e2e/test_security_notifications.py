"""Security notifications to the account's owners, over HTTPS only (issue 14): creating an API key through the
gateway leaves a notice in GET /v1/audit/security-notifications, about that key's audit event, naming the
key's id and never its secret, with its delivery state, and the email reaches the owner's address on the
suite's SMTP server (aiosmtpd, STARTTLS); so do a user's two-factor and password changes, as
identity really records them, and a second sign-in from a known address does not."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pyotp
import pytest

from tests.e2e.api_client import Http
from tests.e2e.conftest import Customer
from tests.e2e.identity_support import PASSWORD, bearer, login, unique, wait_feed
from tests.integration.messaging.smtp_server import Inbox


@pytest.fixture
def http(customer: Customer) -> Http:
    return Http(customer.url, str(customer.ca))


def _until(check: Any, what: str, deadline_s: float = 20.0) -> Any:
    end = time.monotonic() + deadline_s
    while not (found := check()):
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)
    return found


def test_a_new_api_key_is_emailed_to_the_owners_without_its_secret(http: Http, customer: Customer,
                                                                   smtp_inbox: Inbox) -> None:
    main = (customer.username, customer.api_key)
    made = http.call("POST", "/v1/api-keys", auth=main,
                     json_body={"name": f"notice {uuid.uuid4().hex[:6]}", "scopes": ["account.read"]})
    assert made.status == 200, made.body
    key_id, secret = made.json()["api_key"]["key_id"], made.json()["secret"]

    def created_event() -> list[dict[str, Any]]:
        events = http.call("GET", "/v1/audit/events?action=keys.api_key.created&page_size=500", auth=main).json()
        return [e for e in events["events"] if e["resource"]["id"] == key_id]

    (event,) = _until(created_event, "the key's audit event")

    def settled() -> list[dict[str, Any]]:
        r = http.call("GET", "/v1/audit/security-notifications?page_size=200", auth=main)
        assert r.status == 200, r.body
        got = [n for n in r.json()["notifications"] if n["event_id"] == event["event_id"]]
        return got if got and got[0]["status"] != "SECURITY_NOTIFICATION_STATUS_PENDING" else []

    (notice,) = _until(settled, "the notice to settle")
    assert notice["kind"] == "api_key_created" and notice["subject"] == "SendSafe security notice: a new API key"
    assert f"API key id: {key_id}." in notice["body"] and secret not in str(notice)
    assert notice["status"] == "SECURITY_NOTIFICATION_STATUS_SENT", notice
    assert notice["last_error"] == "" and notice["attempts"] == 1
    # The email, as the owner's mail server got it: to the main user's address, the notice's subject and text.
    mails = [m for m in list(smtp_inbox.received) if f"API key id: {key_id}." in m.message.get_content()]
    assert len(mails) == 1, [m.rcpt_tos for m in smtp_inbox.received]
    (mail,) = mails
    assert mail.rcpt_tos == ["demo@example.com"] and mail.tls in ("TLSv1.2", "TLSv1.3")
    assert mail.message["Subject"] == notice["subject"]
    assert mail.message.get_content().replace("\r\n", "\n").rstrip("\n") == notice["body"]
    assert secret.encode() not in mail.data
    # Listing it needs audit.read: a key scoped to account.read only is refused.
    r = http.call("GET", "/v1/audit/security-notifications", auth=(customer.username, secret))
    assert r.status == 403, r.body


def test_sign_ins_mfa_and_password_changes_of_a_user_are_noticed(http: Http, customer: Customer) -> None:
    """What identity really emits: two sign-ins from the same address (the first is the baseline: no notice),
    two-factor authentication turned on then off, a password change; none of the secrets reaches a notice."""
    main = (customer.username, customer.api_key)
    name = unique("noticed")
    made = http.call("POST", "/v3/subaccounts", auth=main,
                     json_body={"api_username": name, "password": PASSWORD, "email": f"{name}@example.com"})
    assert made.status == 200, made.body
    user_id = str(made.json()["data"]["subaccount_id"])
    assert login(http, name).status == 200
    token = login(http, name).json()["session_token"]
    enrol = http.call("POST", "/v1/auth/mfa/totp", headers=bearer(token), json_body={"password": PASSWORD}).json()
    totp = pyotp.parse_uri(enrol["otpauth_uri"])
    step = int(time.time()) // 30
    confirmed = http.call("POST", "/v1/auth/mfa/totp/confirm", headers=bearer(token),
                          json_body={"code": totp.at(step * 30)})
    assert confirmed.status == 200, confirmed.body
    assert http.call("POST", "/v1/auth/step-up", headers=bearer(token),
                     json_body={"totp_code": totp.at((step + 1) * 30)}).status == 200
    assert http.call("DELETE", "/v1/auth/mfa/totp", headers=bearer(token)).status == 200
    new_password = "walnut cobalt meadow 73 harbor"
    assert http.call("PUT", "/v1/auth/password", headers=bearer(token),
                     json_body={"current_password": PASSWORD, "new_password": new_password}).status == 200

    wanted = {"auth.login": 2, "auth.mfa.enrol": 1, "auth.mfa.remove": 1, "auth.password.change": 1}

    def mine(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in events if e["actor"].get("id") == user_id and e["action"] in wanted
                and e.get("outcome") == "OUTCOME_SUCCESS"]

    events = mine(wait_feed(http, lambda evs: all(
        sum(e["action"] == a for e in mine(evs)) == n for a, n in wanted.items()), auth=main, action="auth.*"))
    kinds = {e["event_id"]: e["action"] for e in events}

    def settled() -> list[dict[str, Any]]:
        got = http.call("GET", "/v1/audit/security-notifications?page_size=500", auth=main).json()["notifications"]
        ours = [n for n in got if n["event_id"] in kinds]
        return ours if len(ours) >= 3 and all(n["status"] != "SECURITY_NOTIFICATION_STATUS_PENDING" for n in ours) \
            else []

    notices = _until(settled, "the user's notices")
    assert sorted((kinds[n["event_id"]], n["kind"]) for n in notices) == [
        ("auth.mfa.enrol", "mfa_enrolled"), ("auth.mfa.remove", "mfa_removed"),
        ("auth.password.change", "password_changed")]  # and no new_sign_in: one address, seen at the first
    text = json.dumps(notices)
    assert f"turned on for user {user_id}." in text and f"The password of user {user_id} was changed." in text
    for secret in (PASSWORD, new_password, token, totp.secret, enrol["secret"], *confirmed.json()["recovery_codes"]):
        assert secret not in text
