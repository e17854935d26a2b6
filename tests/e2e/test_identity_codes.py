"""Second-factor input through HTTPS (issue 12): codes are ASCII only -- full-width digits or any other
non-ASCII at login, staff login, step-up, enrolment confirmation and recovery-code use get the answer a wrong
code gets, never a 500 -- and enrolling an authenticator needs the password again, a wrong one counting toward
the user's lockout like a failed login."""

from __future__ import annotations

import time
from typing import Any

import pyotp
import pytest

from sendsafe.identity.v1 import staff_service_pb2
from tests.e2e.api_client import Http
from tests.e2e.conftest import Customer
from tests.e2e.identity_support import PASSWORD, bearer, login, reason, unique
from tests.e2e.test_identity_staff import STAFF_PASSWORD, _create_staff
from tests.support import CertBundle
from tools.suite import Suite

FULL_WIDTH = {ord("0") + d: 0xFF10 + d for d in range(10)}  # U+FF10..U+FF19, which str.isdigit accepts


@pytest.fixture
def http(customer: Customer) -> Http:
    return Http(customer.url, str(customer.ca))


def _person(http: Http, customer: Customer) -> dict[str, Any]:
    name = unique("codes")
    r = http.call("POST", "/v3/subaccounts", auth=(customer.username, customer.api_key),
                  json_body={"api_username": name, "password": PASSWORD, "email": f"{name}@example.com"})
    assert r.status == 200, r.body
    return dict(r.json()["data"])


def _wide(code: str) -> str:
    return code.translate(FULL_WIDTH)


def test_non_ascii_codes_are_wrong_codes_everywhere(http: Http, customer: Customer, suite: Suite,
                                                    certs: CertBundle) -> None:
    person = _person(http, customer)
    token = login(http, person["api_username"]).json()["session_token"]
    enrol = http.call("POST", "/v1/auth/mfa/totp", headers=bearer(token), json_body={"password": PASSWORD})
    assert enrol.status == 200, enrol.body
    totp = pyotp.parse_uri(enrol.json()["otpauth_uri"])
    step = int(time.time()) // 30

    wide = http.call("POST", "/v1/auth/mfa/totp/confirm", headers=bearer(token),
                     json_body={"code": _wide(totp.at(step * 30))})
    assert wide.status == 400 and reason(wide) == "MFA_CODE_INVALID", wide.body  # as a wrong code is
    confirmed = http.call("POST", "/v1/auth/mfa/totp/confirm", headers=bearer(token),
                          json_body={"code": totp.at(step * 30)})
    assert confirmed.status == 200, confirmed.body
    recovery = confirmed.json()["recovery_codes"]

    # Each refusal counts toward the lockout (10): four kinds, at login and at step-up.
    for second in ({"totp_code": _wide(totp.at((step + 1) * 30))}, {"totp_code": "12345\u0666"},
                   {"recovery_code": "\uff58" + recovery[0][1:]}, {"recovery_code": "\u00e9" * 16}):
        refused = login(http, person["api_username"], **second)
        assert refused.status == 401 and reason(refused) == "INVALID_CREDENTIALS", (second, refused.body)
        stepped = http.call("POST", "/v1/auth/step-up", headers=bearer(token), json_body=second)
        assert stepped.status == 401 and reason(stepped) == "INVALID_CREDENTIALS", (second, stepped.body)
    # The ASCII codes still work.
    assert login(http, person["api_username"], recovery_code=recovery[0]).status == 200
    assert login(http, person["api_username"], totp_code=totp.at((step + 1) * 30)).status == 200

    staff = _create_staff(suite, certs, staff_service_pb2.STAFF_ROLE_SUPPORT_READONLY)
    staff_code = pyotp.TOTP(staff.totp_secret).at(step * 30)
    wide_staff = login(http, staff.staff_user.username, STAFF_PASSWORD, staff=True, totp_code=_wide(staff_code))
    assert wide_staff.status == 401 and reason(wide_staff) == "INVALID_CREDENTIALS", wide_staff.body
    assert login(http, staff.staff_user.username, STAFF_PASSWORD, staff=True, totp_code=staff_code).status == 200


def test_enrolling_an_authenticator_needs_the_password(http: Http, customer: Customer) -> None:
    person = _person(http, customer)
    token = login(http, person["api_username"]).json()["session_token"]  # a stolen password-only session
    for body in ({}, {"password": "not the password at all"}):
        refused = http.call("POST", "/v1/auth/mfa/totp", headers=bearer(token), json_body=body)
        assert refused.status == 401 and reason(refused) == "INVALID_CREDENTIALS", refused.body
        assert "secret" not in refused.json() and "otpauth_uri" not in refused.json()
    # Wrong passwords here count toward the user's lockout like failed logins (10 by default).
    for _ in range(8):
        assert http.call("POST", "/v1/auth/mfa/totp", headers=bearer(token),
                         json_body={"password": "still not it, sorry"}).status == 401
    locked = login(http, person["api_username"])
    assert locked.status == 401 and reason(locked) == "INVALID_CREDENTIALS"
