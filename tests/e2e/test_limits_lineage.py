"""Per-key send limits hold across a key's lineage (issue 12, "Limits that hold"): a limited key that rolls itself,
or mints a child key, does not get a fresh allowance. The limits are per minute AND per day (both N), so the test
holds even if it straddles a minute boundary."""

from __future__ import annotations

import uuid
from typing import Any

from tests.e2e.api_client import Http, Response
from tests.e2e.conftest import Customer

N = 3
AU = "+61412345678"


def _send(http: Http, customer: Customer, key: str) -> Response:
    return http.call("POST", "/v3/sms/send", auth=(customer.username, key),
                     json_body={"messages": [{"to": AU, "body": f"lineage {uuid.uuid4().hex[:6]}"}]})


def _limited_key(http: Http, customer: Customer) -> dict[str, Any]:
    made = http.call("POST", "/v1/api-keys", auth=(customer.username, customer.api_key), json_body={
        "name": f"lineage {uuid.uuid4().hex[:6]}", "scopes": ["sms.send", "api_keys.write", "api_keys.read"],
        "send_limits": {"messages_per_minute": N, "messages_per_day": N}})
    assert made.status == 200, made.body
    return dict(made.json())


def _use_up(http: Http, customer: Customer, key: str) -> None:
    for i in range(N):
        sent = _send(http, customer, key)
        assert sent.status == 200, (i, sent.body)
        assert sent.json()["data"]["messages"][0]["status"] == "SUCCESS"


def _refused(resp: Response) -> None:
    assert resp.status == 429, resp.body
    assert resp.json()["response_code"] == "TOO_MANY_REQUESTS" and "retry-after" in resp.headers


def test_a_rolled_key_keeps_its_predecessors_count(customer: Customer) -> None:
    http = Http(customer.url, str(customer.ca))
    made = _limited_key(http, customer)
    _use_up(http, customer, made["secret"])
    _refused(_send(http, customer, made["secret"]))
    key_id = made["api_key"]["key_id"]
    rolled = http.call("POST", f"/v1/api-keys/{key_id}/roll", auth=(customer.username, made["secret"]),
                       json_body={"overlap_seconds": 0})
    assert rolled.status == 200, rolled.body
    _refused(_send(http, customer, rolled.json()["secret"]))


def test_a_child_key_shares_its_creators_count(customer: Customer) -> None:
    http = Http(customer.url, str(customer.ca))
    made = _limited_key(http, customer)
    _use_up(http, customer, made["secret"])
    # The child asks for its creator's limits (the most it may have): it still shares the creator's count.
    child = http.call("POST", "/v1/api-keys", auth=(customer.username, made["secret"]), json_body={
        "name": "child", "scopes": ["sms.send"], "send_limits": {"messages_per_minute": N, "messages_per_day": N}})
    assert child.status == 200, child.body
    _refused(_send(http, customer, child.json()["secret"]))
    # One that leaves its limits unset takes its creator's (not "no limit"), and shares the count too.
    heir = http.call("POST", "/v1/api-keys", auth=(customer.username, made["secret"]),
                     json_body={"name": "heir", "scopes": ["sms.send"]})
    assert heir.status == 200, heir.body
    assert heir.json()["api_key"]["send_limits"]["messages_per_minute"] == N
    _refused(_send(http, customer, heir.json()["secret"]))
    # A key the owner makes in its own right starts its own count (the refusal above is the lineage's).
    fresh = _limited_key(http, customer)
    assert _send(http, customer, fresh["secret"]).status == 200
