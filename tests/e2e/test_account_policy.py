"""Issue 15, the account policy, through the HTTPS gateway: a main user sets it with the API (refused when it would
lock them out), a session logged in from outside the allowed networks ends, a login from outside is refused with
its reason and audited with its network, a session is refused where it is carried outside, a sub-account without a
second factor can only enrol (and reads why) until it verifies one, and the session lifetime cuts a session, each
within the gateway's auth-cache bound (GATEWAY_AUTH_CACHE_SECONDS, 3 s in the suite).

Two client addresses without a proxy: every 127.0.0.0/8 address is this machine, so a client bound to 127.0.0.2 is
"elsewhere" while the suite's own calls come from 127.0.0.1 (the gateway takes the TCP peer's address; it believes
X-Forwarded-For only from GATEWAY_TRUSTED_PROXIES, none here)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pyotp
import pytest
import urllib3

from sendsafe.identity.v1 import identity_service_pb2, identity_service_pb2_grpc
from sendsafe.keys.v1 import keys_service_pb2, keys_service_pb2_grpc
from svckit.rpc import secure_channel
from svckit.tls import TlsFiles
from tests.e2e.api_client import Http, Response
from tests.e2e.identity_support import PASSWORD, bearer, login, reason, wait_feed
from tests.support import CertBundle
from tools.suite import Suite

CACHE_S = 3.0  # the suite gateway's auth cache
ELSEWHERE = "127.0.0.2"


class HttpFrom(Http):
    """Http whose connections leave from `source` (another address of this machine)."""

    def __init__(self, base_url: str, ca: str, source: str) -> None:
        super().__init__(base_url, ca)
        self.pool = urllib3.PoolManager(ca_certs=ca, cert_reqs="CERT_REQUIRED", retries=False, timeout=30,
                                        source_address=(source, 0))


def _account(suite: Suite, certs: CertBundle) -> tuple[str, str]:
    """A new account as operators open them (main user with a password); (username, its main API key). Not the
    suite's shared demo customer: this policy would get in every other test's way."""
    username = f"policy{uuid.uuid4().hex[:10]}"
    tls = TlsFiles(certs.dir / "ops.crt", certs.dir / "ops.key", certs.dir / "internal-ca.crt")

    async def make() -> str:
        async with (
            secure_channel(suite.addrs["identity"], tls, server_name="identity") as ich,
            secure_channel(suite.addrs["keys"], tls, server_name="keys") as kch,
        ):
            made = await identity_service_pb2_grpc.IdentityServiceStub(ich).CreateAccount(
                identity_service_pb2.CreateAccountRequest(account_name="Policy Pty Ltd", api_username=username,
                                                          email=f"{username}@example.com", country="AU",
                                                          password=PASSWORD))
            issued = await keys_service_pb2_grpc.KeysServiceStub(kch).IssueApiKey(keys_service_pb2.IssueApiKeyRequest(
                account_id=made.user.account_id, user_id=made.user.user_id, name="policy"))
            return str(issued.api_key)

    return username, asyncio.run(make())


def _until(call: Any, ok: Any, what: str, deadline_s: float) -> tuple[Response, float]:
    """Poll `call()` until `ok(response)`; (that response, seconds it took). Fails past the deadline."""
    start = time.monotonic()
    while True:
        r = call()
        took = time.monotonic() - start
        if ok(r):
            return r, took
        if took > deadline_s:
            pytest.fail(f"{what}: still {r.status} {r.body[:300]!r} after {took:.1f} s")
        time.sleep(0.05)


def test_the_account_policy_governs_logins_and_sessions(suite: Suite, certs: CertBundle) -> None:
    here = Http(suite.gateway_url, str(certs.public_ca))
    away = HttpFrom(suite.gateway_url, str(certs.public_ca), ELSEWHERE)
    main_user, api_key = _account(suite, certs)
    main = (main_user, api_key)
    sub_name = f"staffer{uuid.uuid4().hex[:10]}"
    made = here.call("POST", "/v3/subaccounts", auth=main, json_body={
        "api_username": sub_name, "password": PASSWORD, "email": f"{sub_name}@example.com", "access_reporting": 1})
    assert made.status == 200, made.body

    # Nothing set yet: every user reads the defaults; the main user cannot leave out where they call from.
    defaults = here.call("GET", "/v1/account/policy", auth=main)
    assert defaults.status == 200 and not defaults.json()["policy"].get("require_second_factor"), defaults.body
    locked_out = here.call("PUT", "/v1/account/policy", auth=main,
                           json_body={"allowed_networks": [f"{ELSEWHERE}/32"]})
    assert locked_out.status == 400 and reason(locked_out) == "CALLER_OUTSIDE_NETWORKS", locked_out.body
    bad = here.call("PUT", "/v1/account/policy", auth=main, json_body={"session_lifetime_seconds": 10**8})
    assert bad.status == 400 and reason(bad) == "PARAMETER_OUT_OF_RANGE", bad.body

    # Sessions from before: the sub-account's from here (password only) and one from elsewhere.
    before_here = login(here, sub_name).json()["session_token"]
    before_away = login(away, sub_name)
    assert before_away.status == 200 and before_away.json()["session"]["client_address"] == ELSEWHERE
    away_token = before_away.json()["session_token"]
    for http, token in ((here, before_here), (away, away_token)):
        assert http.call("GET", "/v3/sms/history", headers=bearer(token)).status == 200  # now in the auth cache

    policy = {"require_second_factor": True, "allowed_networks": ["127.0.0.1"], "session_lifetime_seconds": 0}
    put = here.call("PUT", "/v1/account/policy", auth=main, json_body=policy)
    assert put.status == 200, put.body
    assert put.json()["policy"]["allowed_networks"] == ["127.0.0.1/32"] and put.json()["revoked_sessions"] == 1

    # The session logged in from elsewhere ended; the one from here is held to enrolment. Both show within the
    # gateway's cache bound.
    _, took_revoked = _until(lambda: away.call("GET", "/v3/sms/history", headers=bearer(away_token)),
                             lambda r: r.status == 401, "the session from outside", CACHE_S + 2)
    _, took_held = _until(lambda: here.call("GET", "/v3/sms/history", headers=bearer(before_here)),
                              lambda r: r.status == 403, "the session without a second factor", CACHE_S + 2)
    print(f"\npolicy change in force after {took_revoked * 1000:.0f} ms (revoked) and {took_held * 1000:.0f} ms"
          f" (held to enrolment); auth cache {CACHE_S:g} s")

    # A login from elsewhere: refused with its reason, audited with its network.
    refused = login(away, sub_name)
    assert refused.status == 403 and reason(refused) == "NETWORK_NOT_ALLOWED", refused.body
    events = wait_feed(here, lambda evs: any(e.get("error_reason") == "NETWORK_NOT_ALLOWED" for e in evs),
                       auth=main, action="auth.login")
    [denied] = [e for e in events if e.get("error_reason") == "NETWORK_NOT_ALLOWED"]
    assert denied["details"]["network"] == "127.0.0.0/24" and denied["source"]["client_address"] == ELSEWHERE
    changes = wait_feed(here, lambda evs: len(evs) >= 1, auth=main, action="account.policy.update")
    assert changes[-1]["details"]["allowed_networks"] == "127.0.0.1/32"

    # The sub-account without a second factor can log in, but only to enrol one (and to read why).
    first = login(here, sub_name)
    assert first.status == 200 and first.json()["second_factor_enrolment_required"] is True, first.body
    token = first.json()["session_token"]
    only_enrol = here.call("GET", "/v3/sms/history", headers=bearer(token))
    assert only_enrol.status == 403, only_enrol.body
    why = here.call("GET", "/v1/account/policy", headers=bearer(token))
    assert why.status == 200 and why.json()["policy"]["require_second_factor"] is True
    # Carried elsewhere, the session is refused there with the reason.
    carried = away.call("GET", "/v1/account/policy", headers=bearer(token))
    assert carried.status == 403 and reason(carried) == "NETWORK_NOT_ALLOWED", carried.body
    enrol = here.call("POST", "/v1/auth/mfa/totp", headers=bearer(token), json_body={"password": PASSWORD})
    assert enrol.status == 200, enrol.body
    totp = pyotp.parse_uri(enrol.json()["otpauth_uri"])
    step = int(time.time()) // 30
    confirmed = here.call("POST", "/v1/auth/mfa/totp/confirm", headers=bearer(token),
                          json_body={"code": totp.at(step * 30)})
    assert confirmed.status == 200, confirmed.body
    codes = confirmed.json()["recovery_codes"]
    stepped = here.call("POST", "/v1/auth/step-up", headers=bearer(token), json_body={"recovery_code": codes[0]})
    assert stepped.status == 200, stepped.body
    _until(lambda: here.call("GET", "/v3/sms/history", headers=bearer(token)), lambda r: r.status == 200,
           "the session with a verified second factor", CACHE_S + 2)
    assert reason(login(here, sub_name)) == "MFA_REQUIRED"  # from now on the password alone is not enough

    # The session lifetime: 3 s, and a session ends then (not at the cache's own bound after it).
    lifetime = 3
    put = here.call("PUT", "/v1/account/policy", auth=main, json_body={**policy, "session_lifetime_seconds": lifetime})
    assert put.status == 200 and put.json()["policy"]["session_lifetime_seconds"] == lifetime, put.body
    short = login(here, sub_name, recovery_code=codes[1])
    assert short.status == 200, short.body
    s = short.json()["session"]
    assert s["expire_time"] != s["create_time"]
    started = time.monotonic()
    short_token = short.json()["session_token"]
    assert here.call("GET", "/v3/sms/history", headers=bearer(short_token)).status == 200
    _until(lambda: here.call("GET", "/v3/sms/history", headers=bearer(short_token)), lambda r: r.status == 401,
           "the session past the account's lifetime", lifetime + CACHE_S + 2)
    print(f"a {lifetime} s session refused {time.monotonic() - started:.2f} s after its login answer")
    # The API key (a machine credential) is not governed by the policy.
    assert here.call("GET", "/v3/sms/history", auth=main).status == 200
