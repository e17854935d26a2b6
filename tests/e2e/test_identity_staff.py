"""Staff through HTTPS: an operator creates a staff member with the ops certificate, the member logs in with
password + TOTP (never without), a privileged action on a customer's account without a recent second factor gets
the RFC 9470 challenge, a step-up with a fresh TOTP step lets it through, and the access is in both the platform
log and the customer's own audit feed (access transparency); a role change needs the same, and so does every
privileged route on a session (the gateway asks for it from the protos' `privileged` option)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import asyncpg
import clicksend
import pyotp

from sendsafe.identity.v1 import staff_service_pb2, staff_service_pb2_grpc
from svckit.rpc import secure_channel
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
from tests.support import CertBundle
from tools.suite import Suite

STAFF_PASSWORD = "copper falcon tundra 19 mosaic"
STEP_UP_CHALLENGE = (
    'Bearer error="insufficient_user_authentication", error_description="A second factor is required", max_age=300'
)


def _create_staff(suite: Suite, certs: CertBundle, role: int) -> staff_service_pb2.CreateStaffUserResponse:
    """What an operator does (tools.staff): CreateStaffUser over mTLS with the ops certificate."""

    async def call() -> staff_service_pb2.CreateStaffUserResponse:
        name = unique("staff")
        async with secure_channel(suite.addrs["identity"], certs.tls("ops"), server_name="identity") as ch:
            return await staff_service_pb2_grpc.StaffServiceStub(ch).CreateStaffUser(
                staff_service_pb2.CreateStaffUserRequest(
                    username=name, email=f"{name}@sendsafe.example", display_name="E2E Staff", role=role,  # type: ignore[arg-type]
                    password=STAFF_PASSWORD,
                ),
                timeout=15,
            )

    return asyncio.run(call())


def _age_second_factor(suite: Suite, session_id: str, seconds: int) -> None:
    """Time passes: the session's last second factor becomes `seconds` old. The services run as processes whose
    clock a test cannot drive, so the session row is moved back instead of sleeping."""

    async def run() -> None:
        conn = await asyncpg.connect(suite.config.database_url("identity"))
        try:
            done = await conn.execute(
                "UPDATE sessions SET mfa_time = now() - make_interval(secs => $2) WHERE id = $1", session_id, seconds
            )
            assert done == "UPDATE 1"
        finally:
            await conn.close()

    asyncio.run(run())


def _staff_login(http: Http, created: staff_service_pb2.CreateStaffUserResponse, code: str) -> dict[str, Any]:
    r = login(http, created.staff_user.username, STAFF_PASSWORD, staff=True, totp_code=code)
    assert r.status == 200, r.body
    return dict(r.json())


def test_staff_privileged_action_needs_fresh_mfa_and_is_audited_for_platform_and_customer(
    suite: Suite, customer: Customer, certs: CertBundle
) -> None:
    http = Http(customer.url, str(customer.ca))
    main = (customer.username, customer.api_key)
    account_id = http.call("GET", "/v3/account", auth=main).json()["data"]["account"]
    with sdk_client(customer.url, customer.username, customer.api_key, str(customer.ca)) as client:
        name = unique("target")
        target = clicksend.SubaccountsApi(client).create_subaccount(
            create_subaccount_request={"api_username": name, "password": PASSWORD, "email": f"{name}@example.com"}
        ).data
    assert http.call("GET", "/v3/account", auth=(target.api_username, target.api_key)).status == 200

    created = _create_staff(suite, certs, staff_service_pb2.STAFF_ROLE_PLATFORM_ADMIN)
    assert created.staff_user.role == staff_service_pb2.STAFF_ROLE_PLATFORM_ADMIN and len(created.recovery_codes) >= 10
    totp = pyotp.parse_uri(created.otpauth_uri)
    assert isinstance(totp, pyotp.TOTP) and totp.secret == created.totp_secret

    # No staff session without a second factor; the first code confirms the enrolment (and is consumed).
    bare = login(http, created.staff_user.username, STAFF_PASSWORD, staff=True)
    assert bare.status == 401 and reason(bare) == "MFA_REQUIRED"
    step = int(time.time()) // 30
    session = _staff_login(http, created, totp.at(step * 30))
    token, session_id = session["session_token"], session["session"]["session_id"]
    assert session["session"]["amr"] == ["pwd", "otp"]
    staff = bearer(token)
    # Minutes pass: the login's second factor becomes older than max_age (before the gateway sees the token,
    # so its short auth cache holds the aged session, as it would after real minutes).
    _age_second_factor(suite, session_id, 301)

    # Reading a customer's account needs a stated reason and is audited, but no step-up.
    why = "ticket SUP-1234: customer asked us to suspend a leaked login"
    assert http.call("GET", f"/v1/staff/accounts/{account_id}", headers=staff).status == 400  # no reason
    seen = http.call("GET", f"/v1/staff/accounts/{account_id}?reason=ticket%20SUP-1234", headers=staff)
    assert seen.status == 200 and target.subaccount_id in {u["user_id"] for u in seen.json()["users"]}

    # The login's second factor is too old for a privileged action: RFC 9470 challenge.
    status_path = f"/v1/staff/accounts/{account_id}/users/{target.subaccount_id}/status"
    refused = http.call("PUT", status_path, headers=staff, json_body={"active": False, "reason": why})
    assert refused.status == 401
    assert refused.headers["www-authenticate"] == STEP_UP_CHALLENGE
    assert reason(refused) == "INSUFFICIENT_USER_AUTHENTICATION"
    assert http.call("GET", "/v3/account", auth=(target.api_username, target.api_key)).status == 200  # unchanged
    # The gateway asks the same for every privileged route on a session, e.g. reading a customer's messages.
    history = f"/v1/staff/accounts/{account_id}/sms/history"
    gated = http.call("GET", history, headers=staff)
    assert gated.status == 401 and gated.headers["www-authenticate"] == STEP_UP_CHALLENGE

    # Step up: the login's step is spent (replay), the next step is fresh and inside the +-1 window.
    replay = http.call("POST", "/v1/auth/step-up", headers=staff, json_body={"totp_code": totp.at(step * 30)})
    assert replay.status == 401 and reason(replay) == "INVALID_CREDENTIALS"
    stepped = http.call("POST", "/v1/auth/step-up", headers=staff, json_body={"totp_code": totp.at((step + 1) * 30)})
    assert stepped.status == 200 and stepped.json()["max_age_seconds"] == 300
    # At once, although the gateway had cached the session from before the step-up.
    read = http.call("GET", history, headers=staff)
    assert read.status == 200, read.body
    done = http.call("PUT", status_path, headers=staff, json_body={"active": False, "reason": why})
    assert done.status == 200, done.body
    assert done.json()["user"]["active"] is False and done.json()["user"]["user_id"] == target.subaccount_id
    end = time.monotonic() + 10
    while http.call("GET", "/v3/account", auth=(target.api_username, target.api_key)).status != 401:
        assert time.monotonic() < end, "a suspended user's API key still works at the gateway"
        time.sleep(0.2)

    # Access transparency: the customer sees it in their own feed...
    def access(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in events if e["details"].get("operation") == "SetCustomerUserStatus"
                and e["details"].get("user_id") == str(target.subaccount_id)]

    customer_feed = wait_feed(http, access, auth=main, action="staff.customer_access")
    (theirs,) = access(customer_feed)
    assert theirs["actor"]["type"] == "staff" and theirs["actor"]["id"] == str(created.staff_user.staff_id)
    assert theirs["details"]["reason"] == why and theirs["details"]["staff_username"] == created.staff_user.username
    assert theirs["details"]["active"] == "false" and theirs["source"]["client_address"] == "127.0.0.1"
    reads = [e for e in customer_feed if e["details"].get("operation") == "GetCustomerAccount"
             and e["actor"]["id"] == str(created.staff_user.staff_id)]
    assert reads and reads[0]["details"]["reason"] == "ticket SUP-1234"

    # ...and the platform log has it too, with the challenge that preceded it.
    platform_feed = wait_feed(http, access, headers=staff, action="staff.customer_access")
    (ours,) = access(platform_feed)
    assert ours["details"]["customer_account_id"] == str(account_id) and ours["details"]["reason"] == why
    challenged = wait_feed(
        http, lambda evs: any(e["error_reason"] == "INSUFFICIENT_USER_AUTHENTICATION" for e in evs),
        headers=staff, action="gateway.SetCustomerUserStatus",
    )
    assert {e["outcome"] for e in challenged} == {"OUTCOME_DENIED", "OUTCOME_SUCCESS"}

    assert_no_secret_anywhere(
        suite.config.workdir, [json.dumps(customer_feed), json.dumps(platform_feed)],
        [STAFF_PASSWORD, created.totp_secret, token, *created.recovery_codes],
    )


def test_staff_role_change_needs_a_recent_second_factor_and_ends_the_members_sessions(
    suite: Suite, customer: Customer, certs: CertBundle
) -> None:
    http = Http(customer.url, str(customer.ca))
    admin = _create_staff(suite, certs, staff_service_pb2.STAFF_ROLE_SECURITY_ADMIN)
    member = _create_staff(suite, certs, staff_service_pb2.STAFF_ROLE_SUPPORT_READONLY)
    step = int(time.time()) // 30
    admin_session = _staff_login(http, admin, pyotp.TOTP(admin.totp_secret).at(step * 30))
    member_token = _staff_login(http, member, pyotp.TOTP(member.totp_secret).at(step * 30))["session_token"]
    staff = bearer(admin_session["session_token"])
    _age_second_factor(suite, admin_session["session"]["session_id"], 301)  # before the gateway caches it
    path = f"/v1/staff/users/{member.staff_user.staff_id}/role"
    change = {"role": "STAFF_ROLE_SUPPORT_AGENT", "reason": "joined the escalation rota"}

    refused = http.call("PUT", path, headers=staff, json_body=change)
    assert refused.status == 401 and refused.headers["www-authenticate"] == STEP_UP_CHALLENGE
    recovery = admin.recovery_codes[0]
    assert http.call("POST", "/v1/auth/step-up", headers=staff, json_body={"recovery_code": recovery}).status == 200
    # Nobody grants what they lack, however fresh their second factor.
    grab = http.call("PUT", path, headers=staff, json_body={**change, "role": "STAFF_ROLE_PLATFORM_ADMIN"})
    assert grab.status == 403 and reason(grab) == "ROLE_NOT_GRANTABLE"
    changed = http.call("PUT", path, headers=staff, json_body=change)
    assert changed.status == 200 and changed.json()["staff_user"]["role"] == "STAFF_ROLE_SUPPORT_AGENT"
    # The member's sessions carried the old role's permissions: they end.
    wait_rejected(http, bearer(member_token), path="/v1/auth/sessions")

    events = wait_feed(
        http, lambda evs: any(e["resource"]["id"] == str(member.staff_user.staff_id) for e in evs),
        headers=staff, action="staff.role.change",
    )
    (ev,) = [e for e in events if e["resource"]["id"] == str(member.staff_user.staff_id)]
    assert ev["details"] == {"from": "support_readonly", "to": "support_agent", "reason": change["reason"]}
    assert ev["actor"]["id"] == str(admin.staff_user.staff_id)
