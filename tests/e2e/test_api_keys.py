"""Customer API keys end to end, over HTTPS only: create, use, list, scope, allow-list, roll, revoke, expiry,
with the reasons a caller gets and the audit evidence each refusal leaves. The suite's gateway caches
authentication (GATEWAY_AUTH_CACHE_SECONDS, 3 s here; at most 5 s) and follows the keys service's notices."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.api_client import Http, Response
from tests.e2e.conftest import Customer

REVOCATION_DEADLINE_S = 5.0
# Every secret this module creates, for the last test's scan of logs, spans and the audit log.
SECRETS: list[str] = []


@pytest.fixture
def http(customer: Customer) -> Http:
    return Http(customer.url, str(customer.ca))


def _create(http: Http, customer: Customer, **body: Any) -> dict[str, Any]:
    payload = {"name": f"e2e {uuid.uuid4().hex[:6]}", "scopes": ["*"], **body}
    resp = http.call("POST", "/v1/api-keys", auth=(customer.username, customer.api_key), json_body=payload)
    assert resp.status == 200, resp.body
    SECRETS.append(resp.json()["secret"])
    return dict(resp.json())


def _account(http: Http, customer: Customer, key: str) -> Response:
    return http.call("GET", "/v3/account", auth=(customer.username, key))


def _refused_within(http: Http, customer: Customer, key: str, deadline_s: float) -> tuple[Response, float]:
    """Poll until the gateway refuses `key`; (the refusal, seconds it took). Fails past the deadline."""
    start = time.monotonic()
    while True:
        resp = _account(http, customer, key)
        elapsed = time.monotonic() - start
        if resp.status in (401, 403):
            return resp, elapsed
        if elapsed > deadline_s:
            pytest.fail(f"the key still works {elapsed:.1f}s later")
        time.sleep(0.05)


def _events(http: Http, customer: Customer, action: str) -> list[dict[str, Any]]:
    resp = http.call("GET", f"/v1/audit/events?action={action}&page_size=500",
                     auth=(customer.username, customer.api_key))
    assert resp.status == 200, resp.body
    return list(resp.json()["events"])


def _wait_event(http: Http, customer: Customer, action: str, match: Any, deadline_s: float = 10.0) -> dict[str, Any]:
    end = time.monotonic() + deadline_s
    while True:
        found = [e for e in _events(http, customer, action) if match(e)]
        if found:
            return found[-1]
        if time.monotonic() > end:
            pytest.fail(f"no {action} audit event")
        time.sleep(0.1)


def test_a_revoked_key_is_refused_within_5s_while_the_gateway_caches_it(http: Http, customer: Customer) -> None:
    made = _create(http, customer, scopes=["account.read"])
    key, key_id = made["secret"], made["api_key"]["key_id"]
    assert _account(http, customer, key).status == 200  # the gateway now holds it in its auth cache
    assert _account(http, customer, key).status == 200
    revoked = http.call("POST", f"/v1/api-keys/{key_id}/revoke", auth=(customer.username, customer.api_key),
                        json_body={})
    assert revoked.status == 200 and revoked.json()["api_key"]["state"] == "API_KEY_STATE_REVOKED"
    refusal, took = _refused_within(http, customer, key, REVOCATION_DEADLINE_S)
    print(f"\nrevoked key refused after {took * 1000:.0f} ms (auth cache 3 s, hard limit 5 s)")
    assert refusal.status == 401 and refusal.json()["response_code"] == "UNAUTHORIZED"
    assert "revoked" in refusal.json()["response_msg"]
    event = _wait_event(http, customer, "gateway.unauthenticated",
                        lambda e: e["actor"]["api_key_id"] == key_id and e["error_reason"] == "API_KEY_REVOKED")
    assert event["outcome"] == "OUTCOME_DENIED"
    assert key not in str(event) and key.split("_")[-1] not in str(_events(http, customer, "keys.api_key.revoked"))


def test_create_list_scope_and_roll(http: Http, customer: Customer) -> None:
    limits = {"messages_per_minute": 5, "messages_per_day": 100, "allowed_countries": ["AU", "nz"]}
    made = _create(http, customer, scopes=["account.read", "api_keys.read"], send_limits=limits)
    key, meta = made["secret"], made["api_key"]
    assert key.startswith(meta["prefix"]) and meta["send_limits"]["allowed_countries"] == ["AU", "NZ"]
    assert meta["scopes"] == ["account.read", "api_keys.read"] and meta["state"] == "API_KEY_STATE_ACTIVE"
    assert _account(http, customer, key).status == 200
    # Listing shows the key but never a secret again.
    listed = http.call("GET", "/v1/api-keys", auth=(customer.username, key))
    assert listed.status == 200 and meta["key_id"] in {k["key_id"] for k in listed.json()["api_keys"]}
    assert key.encode() not in listed.body and key[len(meta["prefix"]):].encode() not in listed.body
    # A permission the user holds but the key's scopes leave out: 403 saying so, and evidence of it.
    denied = http.call("GET", "/v1/audit/events", auth=(customer.username, key))
    assert denied.status == 403 and denied.json()["error"]["reason"] == "API_KEY_SCOPE"
    _wait_event(http, customer, "gateway.ListEvents",
                lambda e: e["actor"]["api_key_id"] == meta["key_id"] and e["error_reason"] == "API_KEY_SCOPE")
    # Roll with no overlap: the new key works at once, the old one stops (its cache entry is dropped by notice).
    rolled = http.call("POST", f"/v1/api-keys/{meta['key_id']}/roll", auth=(customer.username, customer.api_key),
                       json_body={"overlap_seconds": 0})
    assert rolled.status == 200, rolled.body
    new = rolled.json()
    SECRETS.append(new["secret"])
    assert new["api_key"]["rolled_from_key_id"] == meta["key_id"] and new["api_key"]["send_limits"] == meta[
        "send_limits"]
    assert _account(http, customer, new["secret"]).status == 200
    refusal, _ = _refused_within(http, customer, key, REVOCATION_DEADLINE_S)
    assert refusal.status == 401 and "expired" in refusal.json()["response_msg"]
    # Bad requests say what is wrong.
    bad = http.call("POST", "/v1/api-keys", auth=(customer.username, customer.api_key),
                    json_body={"name": "x", "scopes": ["sms.sendd"]})
    assert bad.status == 400 and bad.json()["error"]["reason"] == "SCOPE_INVALID"
    far = (datetime.now(UTC) + timedelta(days=400)).isoformat().replace("+00:00", "Z")
    bad = http.call("POST", "/v1/api-keys", auth=(customer.username, customer.api_key),
                    json_body={"name": "x", "scopes": ["*"], "expire_time": far})
    assert bad.status == 400 and bad.json()["error"]["reason"] == "EXPIRY_INVALID"


def test_allow_list_refuses_other_addresses_with_403(http: Http, customer: Customer) -> None:
    elsewhere = _create(http, customer, allowed_cidrs=["192.0.2.0/24"])
    refused = _account(http, customer, elsewhere["secret"])
    assert refused.status == 403 and refused.json()["response_code"] == "FORBIDDEN"
    refused_v1 = http.call("GET", "/v1/api-keys", auth=(customer.username, elsewhere["secret"]))
    assert refused_v1.status == 403 and refused_v1.json()["error"]["reason"] == "API_KEY_ADDRESS_NOT_ALLOWED"
    event = _wait_event(http, customer, "gateway.unauthenticated",
                        lambda e: e["actor"]["api_key_id"] == elsewhere["api_key"]["key_id"])
    assert event["error_reason"] == "API_KEY_ADDRESS_NOT_ALLOWED" and event["source"]["client_address"] == "127.0.0.1"
    here = _create(http, customer, allowed_cidrs=["127.0.0.1"])
    assert here["api_key"]["allowed_cidrs"] == ["127.0.0.1/32"]
    assert _account(http, customer, here["secret"]).status == 200


def test_expiry_is_honoured_at_the_gateway(http: Http, customer: Customer) -> None:
    expires = datetime.now(UTC) + timedelta(seconds=2)
    made = _create(http, customer, expire_time=expires.isoformat().replace("+00:00", "Z"))
    assert _account(http, customer, made["secret"]).status == 200  # cached, but never past its expiry
    refusal, _ = _refused_within(http, customer, made["secret"], 2 + REVOCATION_DEADLINE_S)
    late = (datetime.now(UTC) - expires).total_seconds()
    print(f"\nexpired key refused {late * 1000:.0f} ms after its expiry")
    assert refusal.status == 401 and "expired" in refusal.json()["response_msg"]


def test_no_key_in_any_log_line_span_or_audit_event(http: Http, customer: Customer, suite: Any, otlp: Any) -> None:
    """Runs after the others: none of the secrets they created (nor the demo key) appears in any process's
    log, any exported span (names, attributes, events), or any event of the account's audit feed."""
    assert SECRETS, "run with the tests above"
    receiver, _ = otlp
    receiver.wait_for(lambda spans: any(s.name.endswith("CreateApiKey") for s in spans))
    logs = "\n".join(p.read_text(errors="replace") for p in Path(suite.config.workdir).glob("*.log"))
    spans = "\n".join(f"{s.name} {s.attributes}" for s in receiver.spans)
    events = http.call("GET", "/v1/audit/events?page_size=500", auth=(customer.username, customer.api_key)).body
    assert b"keys.api_key.created" in events and "POST /v1/api-keys" in spans  # the scan sees real material
    for secret in [*SECRETS, customer.api_key]:
        tail = secret.split("_")[-1]  # the secret part alone (key id is public)
        for where, text in (("logs", logs), ("spans", spans), ("audit", events.decode())):
            assert secret not in text and tail not in text, f"a key secret appears in {where}"
