"""Delegation inside an account, attacked through HTTPS as issue 12 found it: a sub-account that manages users
cannot take over a sibling that holds more than it (re-key, password), cannot lift a restriction it is under
(its own, or by creating a fresh user), and cannot mint an API key scoped beyond what it holds."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.api_client import Http
from tests.e2e.conftest import Customer
from tests.e2e.identity_support import PASSWORD, login, unique

NEW_PASSWORD = "amber walrus kettle 58 drizzle"


@pytest.fixture
def http(customer: Customer) -> Http:
    return Http(customer.url, str(customer.ca))


def _create(http: Http, auth: tuple[str, str], **flags: int) -> Any:
    """A sub-account created by `auth` (raw JSON: the SDK's create request lacks some flags)."""
    name = unique("deleg")
    r = http.call("POST", "/v3/subaccounts", auth=auth, json_body={
        "api_username": name, "password": PASSWORD, "email": f"{name}@example.com", **flags})
    assert r.status == 200, r.body
    return r.json()["data"]


def _view(http: Http, customer: Customer, subaccount_id: int) -> dict[str, Any]:
    r = http.call("GET", f"/v3/subaccounts/{subaccount_id}", auth=(customer.username, customer.api_key))
    assert r.status == 200, r.body
    return dict(r.json()["data"])


def _key_ids(http: Http, user: Any) -> set[str]:
    r = http.call("GET", "/v1/api-keys?show_inactive=true", auth=(user["api_username"], user["api_key"]))
    assert r.status == 200, r.body
    return {k["key_id"] for k in r.json()["api_keys"]}


def test_a_user_manager_cannot_take_over_a_sibling_that_holds_more(http: Http, customer: Customer) -> None:
    main = (customer.username, customer.api_key)
    manager = _create(http, main, access_users=1)
    sibling = _create(http, main, access_sms=1, access_settings=1, access_reporting=1)
    auth = (manager["api_username"], manager["api_key"])
    keys_before = _key_ids(http, sibling)

    regen = http.call("PUT", f"/v3/subaccounts/{sibling['subaccount_id']}/regen-api-key", auth=auth, json_body={})
    assert regen.status == 403, regen.body
    assert regen.json()["response_code"] == "FORBIDDEN" and regen.json()["data"] is None
    assert "access_settings" in regen.json()["response_msg"]
    assert _key_ids(http, sibling) == keys_before  # no new key for the sibling, its key still works

    reset = http.call("PUT", f"/v3/subaccounts/{sibling['subaccount_id']}", auth=auth,
                      json_body={"password": NEW_PASSWORD})
    assert reset.status == 403, reset.body
    assert login(http, sibling["api_username"], NEW_PASSWORD).status == 401
    assert login(http, sibling["api_username"]).status == 200  # the old password still stands

    gone = http.call("DELETE", f"/v3/subaccounts/{sibling['subaccount_id']}", auth=auth)
    assert gone.status == 403, gone.body
    # An equal (or weaker) sibling stays manageable: the rule compares, it does not forbid.
    peer = _create(http, main, access_users=1)
    ok = http.call("PUT", f"/v3/subaccounts/{peer['subaccount_id']}/regen-api-key", auth=auth, json_body={})
    assert ok.status == 200, ok.body


def test_a_deidentified_user_cannot_unmask_itself_or_a_new_user(http: Http, customer: Customer) -> None:
    main = (customer.username, customer.api_key)
    masked = _create(http, main, access_users=1, sms_deidentify_message=1)
    auth = (masked["api_username"], masked["api_key"])

    unmask = http.call("PUT", f"/v3/subaccounts/{masked['subaccount_id']}", auth=auth,
                       json_body={"sms_deidentify_message": 0})
    assert unmask.status == 403, unmask.body
    assert "sms_deidentify_message" in unmask.json()["response_msg"]
    assert _view(http, customer, masked["subaccount_id"])["sms_deidentify_message"] == 1

    fresh = _create(http, auth, sms_deidentify_message=0)
    assert _view(http, customer, fresh["subaccount_id"])["sms_deidentify_message"] == 1  # inherited

    # Nor through a sibling nobody masked: taking it over would read what the mask hides.
    plain = _create(http, main, access_users=1)
    takeover = http.call("PUT", f"/v3/subaccounts/{plain['subaccount_id']}/regen-api-key", auth=auth, json_body={})
    assert takeover.status == 403, takeover.body
    # The main user (under no restriction) lifts it.
    lifted = http.call("PUT", f"/v3/subaccounts/{masked['subaccount_id']}", auth=main,
                       json_body={"sms_deidentify_message": 0})
    assert lifted.status == 200 and lifted.json()["data"]["sms_deidentify_message"] == 0


def test_an_api_key_is_never_scoped_beyond_its_creator(http: Http, customer: Customer) -> None:
    settings_only = _create(http, (customer.username, customer.api_key), access_settings=1)
    auth = (settings_only["api_username"], settings_only["api_key"])
    refused = http.call("POST", "/v1/api-keys", auth=auth, json_body={"name": "grab", "scopes": ["sms.send"]})
    assert refused.status == 403 and refused.json()["error"]["reason"] == "SCOPE_NOT_HELD", refused.body
    held = http.call("POST", "/v1/api-keys", auth=auth, json_body={"name": "own", "scopes": ["api_keys.read"]})
    assert held.status == 200, held.body
