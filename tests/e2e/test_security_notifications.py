"""Security notifications to the account's owners, over HTTPS only (issue 14): creating an API key through the
gateway leaves a notice in GET /v1/audit/security-notifications, about that key's audit event, naming the
key's id and never its secret, with its delivery state."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from tests.e2e.api_client import Http
from tests.e2e.conftest import Customer


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


def test_a_new_api_key_is_noticed_to_the_owners_without_its_secret(http: Http, customer: Customer) -> None:
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
    # The suite's messaging has no SMTP server: the notice is recorded as not sent, and not retried.
    assert notice["status"] == "SECURITY_NOTIFICATION_STATUS_NOT_SENT", notice
    assert notice["last_error"] == "EMAIL_NOT_CONFIGURED" and notice["attempts"] == 1
    # Listing it needs audit.read: a key scoped to account.read only is refused.
    r = http.call("GET", "/v1/audit/security-notifications", auth=(customer.username, secret))
    assert r.status == 403, r.body
