"""Interactive login through HTTPS: password + TOTP, Bearer sessions on both surfaces, listing and revoking
sessions (effective at the gateway within seconds), TOTP enrolment and confirmation, single-use recovery codes,
step-up for a customer's privileged call, one answer for every refused login, and no secret in any log line or
audit event."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import clicksend
import pyotp
import pytest

from tests.e2e.api_client import Http, sdk_client
from tests.e2e.conftest import Customer
from tests.e2e.identity_support import (
    PASSWORD,
    assert_no_secret_anywhere,
    bearer,
    login,
    reason,
    unique,
    wait_feed,
    wait_rejected,
)
from tools.suite import Suite

STEP_UP_CHALLENGE = (
    'Bearer error="insufficient_user_authentication", error_description="A second factor is required", max_age=300'
)


@pytest.fixture
def subaccounts(customer: Customer) -> Iterator[clicksend.SubaccountsApi]:
    with sdk_client(customer.url, customer.username, customer.api_key, str(customer.ca)) as client:
        yield clicksend.SubaccountsApi(client)


def _subaccount(api: clicksend.SubaccountsApi, **flags: int) -> Any:
    name = unique("person")
    return api.create_subaccount(
        create_subaccount_request={"api_username": name, "password": PASSWORD, "email": f"{name}@example.com", **flags}
    ).data


def test_login_totp_recovery_codes_and_session_revocation(
    suite: Suite, customer: Customer, subaccounts: clicksend.SubaccountsApi
) -> None:
    http = Http(customer.url, str(customer.ca))
    person = _subaccount(subaccounts)
    username = person.api_username

    # Password login (no second factor enrolled yet) -> an opaque Bearer token, usable on /v3 too.
    first = login(http, username)
    assert first.status == 200, first.body
    token1, session1 = first.json()["session_token"], first.json()["session"]["session_id"]
    assert token1.startswith("ss_sess_") and first.json()["session"]["amr"] == ["pwd"]
    me = http.call("GET", "/v3/account", headers=bearer(token1))
    assert me.status == 200 and me.json()["data"]["username"] == username

    # TOTP enrolment: otpauth URI, the secret for typing in, a QR image; a first code confirms it.
    enrol = http.call("POST", "/v1/auth/mfa/totp", headers=bearer(token1), json_body={"password": PASSWORD})
    assert enrol.status == 200, enrol.body
    e = enrol.json()
    totp = pyotp.parse_uri(e["otpauth_uri"])
    assert isinstance(totp, pyotp.TOTP) and totp.secret == e["secret"] and "issuer=SendSafe" in e["otpauth_uri"]
    assert base64.b64decode(e["qr_png"]).startswith(b"\x89PNG\r\n\x1a\n")
    step = int(time.time()) // 30
    confirmed = http.call("POST", "/v1/auth/mfa/totp/confirm", headers=bearer(token1),
                          json_body={"code": totp.at(step * 30)})
    assert confirmed.status == 200, confirmed.body
    codes = confirmed.json()["recovery_codes"]
    assert len(codes) == 10 and len(set(codes)) == 10

    # From now on the password alone is not enough, and the confirming code was consumed.
    assert reason(login(http, username)) == "MFA_REQUIRED"
    replay = login(http, username, totp_code=totp.at(step * 30))
    assert replay.status == 401 and reason(replay) == "INVALID_CREDENTIALS"
    second = login(http, username, totp_code=totp.at((step + 1) * 30))  # the next step: inside the +-1 window
    assert second.status == 200, second.body
    token2, session2 = second.json()["session_token"], second.json()["session"]["session_id"]
    assert second.json()["session"]["amr"] == ["pwd", "otp"] and second.json()["session"]["mfa_time"]

    # A recovery code works once.
    third = login(http, username, recovery_code=codes[0])
    assert third.status == 200 and third.json()["session"]["amr"] == ["pwd", "recovery"]
    token3, session3 = third.json()["session_token"], third.json()["session"]["session_id"]
    again = login(http, username, recovery_code=codes[0])
    assert again.status == 401 and reason(again) == "INVALID_CREDENTIALS"

    # The owner sees their sessions (never a token) and revokes them; the gateway stops them within seconds.
    listed = http.call("GET", "/v1/auth/sessions", headers=bearer(token2))
    assert listed.status == 200
    sessions = {s["session_id"]: s for s in listed.json()["sessions"]}
    assert {session1, session2, session3} <= sessions.keys()
    assert [sid for sid, s in sessions.items() if s.get("current")] == [session2]
    assert sessions[session2]["client_address"] == "127.0.0.1"
    assert not any(t in listed.body.decode() for t in (token1, token2, token3))

    assert http.call("DELETE", f"/v1/auth/sessions/{session1}", headers=bearer(token2)).status == 200
    wait_rejected(http, bearer(token1))
    others = http.call("DELETE", "/v1/auth/sessions", headers=bearer(token2))
    assert others.status == 200 and others.json()["revoked_count"] >= 1
    wait_rejected(http, bearer(token3))
    assert http.call("GET", "/v3/account", headers=bearer(token2)).status == 200
    left = {s["session_id"] for s in http.call("GET", "/v1/auth/sessions", headers=bearer(token2)).json()["sessions"]}
    assert left == {session2}
    assert http.call("POST", "/v1/auth/logout", headers=bearer(token2), json_body={}).status == 200
    wait_rejected(http, bearer(token2))

    # Evidence in the account's own feed: who, what, from where.
    mine = str(person.subaccount_id)

    def evidence(events: list[dict[str, Any]]) -> bool:
        actions = [ev["action"] for ev in events if ev.get("actor", {}).get("id") == mine]
        return all(a in actions for a in ("auth.mfa.enrol", "auth.recovery_code.use")) and actions.count(
            "auth.session.revoke") >= 3

    events = wait_feed(http, evidence, auth=(customer.username, customer.api_key))
    logins = [ev for ev in events if ev["action"] == "auth.login" and ev.get("actor", {}).get("id") == mine]
    assert {ev["outcome"] for ev in logins} >= {"OUTCOME_SUCCESS", "OUTCOME_FAILURE"}
    assert all(ev["source"]["client_address"] == "127.0.0.1" for ev in logins)
    assert any(ev["details"].get("failure") == "second_factor_replayed" for ev in logins)

    assert_no_secret_anywhere(
        suite.config.workdir, [json.dumps(events)], [PASSWORD, totp.secret, token1, token2, token3, *codes]
    )


def test_customer_privileged_call_on_a_session_needs_a_recent_second_factor(
    suite: Suite, customer: Customer, subaccounts: clicksend.SubaccountsApi
) -> None:
    """A password-only session gets the RFC 9470 challenge for a privileged call; enrolling TOTP and stepping up
    with a fresh code lets the retry through, and the other privileged self-service (recovery-code regeneration,
    removing the factor) and a password change follow, each audited. (API keys are not stepped up.)"""
    http = Http(customer.url, str(customer.ca))
    manager = _subaccount(subaccounts, access_users=1)
    token = login(http, manager.api_username).json()["session_token"]
    create = {"api_username": unique("made"), "password": PASSWORD, "email": "made@example.com"}

    refused = http.call("POST", "/v3/subaccounts", headers=bearer(token), json_body=create)
    assert refused.status == 401 and refused.headers["www-authenticate"] == STEP_UP_CHALLENGE
    assert refused.json()["http_code"] == 401  # the ClickSend envelope on /v3
    assert http.call("POST", "/v1/auth/step-up", headers=bearer(token), json_body={"totp_code": "123456"}).status == 401

    enrol = http.call("POST", "/v1/auth/mfa/totp", headers=bearer(token), json_body={"password": PASSWORD}).json()
    totp = pyotp.parse_uri(enrol["otpauth_uri"])
    step = int(time.time()) // 30
    assert http.call("POST", "/v1/auth/mfa/totp/confirm", headers=bearer(token),
                     json_body={"code": totp.at(step * 30)}).status == 200
    # Enrolling is not a step-up of this session.
    assert http.call("POST", "/v3/subaccounts", headers=bearer(token), json_body=create).status == 401
    stepped = http.call("POST", "/v1/auth/step-up", headers=bearer(token),
                        json_body={"totp_code": totp.at((step + 1) * 30)})
    assert stepped.status == 200 and stepped.json()["max_age_seconds"] == 300
    made = http.call("POST", "/v3/subaccounts", headers=bearer(token), json_body=create)
    assert made.status == 200, made.body
    assert made.json()["data"]["api_username"] == create["api_username"]

    # With the fresh second factor: new recovery codes (the old ones stop), then the factor removed; a new
    # password ends the other sessions. Each is evidence in the account's feed.
    regen = http.call("POST", "/v1/auth/mfa/recovery-codes", headers=bearer(token), json_body={})
    assert regen.status == 200 and len(regen.json()["recovery_codes"]) == 10
    other = login(http, manager.api_username, recovery_code=regen.json()["recovery_codes"][0])
    assert other.status == 200
    assert http.call("DELETE", "/v1/auth/mfa/totp", headers=bearer(token)).status == 200
    new_password = "amber quiver basalt 58 tundra"
    changed = http.call("PUT", "/v1/auth/password", headers=bearer(token),
                        json_body={"current_password": PASSWORD, "new_password": new_password})
    assert changed.status == 200 and changed.json()["revoked_sessions"] >= 1
    wait_rejected(http, bearer(other.json()["session_token"]))
    assert login(http, manager.api_username).status == 401
    assert login(http, manager.api_username, new_password).status == 200  # no second factor any more

    mine = str(manager.subaccount_id)
    wanted = ("auth.recovery_codes.regenerate", "auth.mfa.remove", "auth.password.change")
    events = wait_feed(http, lambda evs: all(a in {e["action"] for e in evs if e["actor"].get("id") == mine}
                                             for a in wanted), auth=(customer.username, customer.api_key))
    assert_no_secret_anywhere(suite.config.workdir, [json.dumps(events)],
                              [PASSWORD, new_password, token, totp.secret, *regen.json()["recovery_codes"]])


def test_refused_logins_are_indistinguishable(customer: Customer, subaccounts: clicksend.SubaccountsApi) -> None:
    """Unknown user, wrong password and locked account: the same status and the same body. (That each costs the
    same one argon2 verification is shown in-process, tests/integration/identity/test_auth_concurrency.py.)"""
    http = Http(customer.url, str(customer.ca))
    known = _subaccount(subaccounts).api_username
    lockable = _subaccount(subaccounts).api_username
    unknown = login(http, unique("nobody"))
    wrong = login(http, known, "not the password, sorry")
    for _ in range(10):  # identity's default LOGIN_MAX_FAILURES
        assert login(http, lockable, "not the password, sorry").status == 401
    locked = login(http, lockable)  # the right password, on a locked account
    answers = {(r.status, r.body, r.headers.get("www-authenticate")) for r in (unknown, wrong, locked)}
    assert len(answers) == 1, answers
    status, body, _ = answers.pop()
    assert status == 401 and json.loads(body)["error"]["reason"] == "INVALID_CREDENTIALS"
