"""Sub-accounts through HTTPS with the official ClickSend SDK (every endpoint), and the access flags
enforced for each permission they grant: 403 with the ClickSend envelope."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import clicksend
import pytest
from clicksend.exceptions import ApiException

from tests.e2e.api_client import Http, sdk_client
from tests.e2e.conftest import Customer

PASSWORD = "violet staple orbit 7 lantern"


def _name(prefix: str = "sub") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@pytest.fixture
def subaccounts(customer: Customer) -> Iterator[clicksend.SubaccountsApi]:
    with sdk_client(customer.url, customer.username, customer.api_key, str(customer.ca)) as client:
        yield clicksend.SubaccountsApi(client)


def _create(api: clicksend.SubaccountsApi, **flags: int) -> Any:
    name = _name()
    return api.create_subaccount(
        create_subaccount_request={
            "api_username": name, "password": PASSWORD, "email": f"{name}@example.com",
            "phone_number": "+61411111111", "first_name": "Sub", "last_name": "Account", **flags,
        }
    ).data


def _wait_rejected(http: Http, username: str, key: str, deadline_s: float = 10.0) -> None:
    """Revocation reaches the gateway within its bounded auth cache time (or at once by notice)."""
    end = time.monotonic() + deadline_s
    while http.call("GET", "/v3/account", auth=(username, key)).status != 401:
        if time.monotonic() > end:
            pytest.fail("a revoked API key still works at the gateway")
        time.sleep(0.2)


def test_sdk_every_subaccount_endpoint(subaccounts: clicksend.SubaccountsApi, customer: Customer) -> None:
    http = Http(customer.url, str(customer.ca))
    created = _create(subaccounts, access_reporting=1)
    assert isinstance(created.subaccount_id, int) and created.api_key and created.api_key != "********"
    assert created.access_reporting == 1 and created.access_users == 0 and created.access_sms == 0
    assert created.is_main == 0
    sid = str(created.subaccount_id)
    # The new key works, for that user.
    me = http.call("GET", "/v3/account", auth=(created.api_username, created.api_key))
    assert me.status == 200 and me.json()["data"]["username"] == created.api_username

    listed = subaccounts.view_subaccounts()
    assert listed.http_code == 200 and listed.data.total >= 2 and listed.data.per_page == 15
    assert all(s.api_key == "********" for s in listed.data.data)
    # Other tests share the account: find the new one on whichever page holds it (100 a page).
    auth = (customer.username, customer.api_key)
    rows = [row for n in range(1, listed.data.total // 100 + 2)
            for row in http.call("GET", f"/v3/subaccounts?page={n}&limit=100", auth=auth).json()["data"]["data"]]
    mine = [row for row in rows if row["subaccount_id"] == created.subaccount_id]
    assert mine and all(row["api_key"] == "********" for row in rows)

    got = subaccounts.view_specific_subaccount(sid)
    assert got.data.api_username == created.api_username and got.data.api_key == "********"

    changes = {"email": "new@example.com", "access_sms": 1}
    updated = subaccounts.update_subaccount(sid, update_subaccount_request=changes)
    assert updated.data.email == "new@example.com" and updated.data.access_sms == 1

    regen = subaccounts.generate_new_api_key(sid, generate_new_api_key_request={})
    assert regen.response_code == "SUCCESS" and regen.data.api_key and regen.data.api_key != created.api_key
    _wait_rejected(http, created.api_username, created.api_key)  # the old key stops at once
    assert http.call("GET", "/v3/account", auth=(created.api_username, regen.data.api_key)).status == 200

    deleted = subaccounts.delete_subaccount(sid)
    assert deleted.http_code == 200 and deleted.data is True
    _wait_rejected(http, created.api_username, regen.data.api_key)
    with pytest.raises(ApiException) as err:
        subaccounts.view_specific_subaccount(sid)
    assert err.value.status == 404


def test_subaccount_errors_use_the_envelope(subaccounts: clicksend.SubaccountsApi, customer: Customer) -> None:
    created = _create(subaccounts)
    with pytest.raises(ApiException) as dup:
        subaccounts.create_subaccount(
            create_subaccount_request={"api_username": created.api_username, "password": PASSWORD,
                                       "email": "x@example.com"}
        )
    assert dup.value.status == 409 and '"ALREADY_EXISTS"' in dup.value.body
    with pytest.raises(ApiException) as weak:
        subaccounts.create_subaccount(
            create_subaccount_request={"api_username": _name(), "password": "password1234", "email": "y@example.com"}
        )
    assert weak.value.status == 400 and '"BAD_REQUEST"' in weak.value.body  # a common password
    with pytest.raises(ApiException) as missing:
        subaccounts.view_specific_subaccount("999999999")
    assert missing.value.status == 404 and '"NOT_FOUND"' in missing.value.body


@pytest.mark.parametrize(
    ("flag", "method", "path", "body"),
    [
        ("access_users", "GET", "/v3/subaccounts", None),
        ("access_users", "POST", "/v3/subaccounts", {"api_username": "nobody123", "password": PASSWORD,
                                                     "email": "n@example.com"}),
        ("access_reporting", "GET", "/v3/sms/history", None),
        ("access_reporting", "GET", "/v1/audit/events", None),
        ("access_sms", "POST", "/v3/sms/send", {"messages": [{"to": "+61411111111", "body": "hi"}]}),
        ("access_settings", "GET", "/v1/api-keys", None),
    ],
)
def test_each_flag_gates_its_permission(
    subaccounts: clicksend.SubaccountsApi, customer: Customer, flag: str, method: str, path: str, body: Any
) -> None:
    """Least privilege by default: a new sub-account is refused (403, envelope) until the flag is granted."""
    http = Http(customer.url, str(customer.ca))
    without = _create(subaccounts)
    refused = http.call(method, path, auth=(without.api_username, without.api_key), json_body=body)
    assert refused.status == 403
    if path.startswith("/v3/"):
        envelope = refused.json()
        assert envelope["http_code"] == 403 and envelope["response_code"] == "FORBIDDEN" and envelope["data"] is None
    else:
        assert refused.json()["error"]["reason"] == "MISSING_PERMISSION"
    granted = _create(subaccounts, **{flag: 1}) if flag != "access_sms" else None
    if granted is None:  # CreateSubaccountRequest has no access_sms in the SDK: grant it with an update
        granted = _create(subaccounts)
        subaccounts.update_subaccount(str(granted.subaccount_id), update_subaccount_request={"access_sms": 1})
    ok = http.call(method, path, auth=(granted.api_username, granted.api_key), json_body=body)
    assert ok.status != 403, ok.body


def test_no_escalation_through_subaccounts(subaccounts: clicksend.SubaccountsApi, customer: Customer) -> None:
    """A sub-account that manages users cannot grant what it lacks, nor touch the main user."""
    http = Http(customer.url, str(customer.ca))
    manager = _create(subaccounts, access_users=1)
    auth = (manager.api_username, manager.api_key)
    grab = http.call("POST", "/v3/subaccounts", auth=auth, json_body={
        "api_username": _name(), "password": PASSWORD, "email": "g@example.com", "access_billing": 1})
    assert grab.status == 403 and grab.json()["response_code"] == "FORBIDDEN"
    main_id = next(s.subaccount_id for s in subaccounts.view_subaccounts().data.data if s.is_main == 1)
    touch = http.call("PUT", f"/v3/subaccounts/{main_id}/regen-api-key", auth=auth, json_body={})
    assert touch.status == 403
