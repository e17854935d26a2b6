"""Messaging's privileged actions fail closed while the audit service is down (killed mid-test): the webhook
settings and the webhook secret do not change without their evidence, and nothing claims later that they did.
Once audit is back, the same call succeeds."""

from __future__ import annotations

import time
import urllib.parse
import uuid
from typing import Any

from tests.e2e.api_client import Http, Response
from tests.e2e.conftest import Customer
from tools.suite import Suite

# A public address (no DNS needed); only replies would be posted there, and the test makes none. It is cleared
# at the end.
OUTSIDE = "https://8.8.8.8/sendsafe-e2e-fail-closed"


def _error(r: Response) -> tuple[int, str]:
    return r.status, r.json()["error"]["reason"]


def test_messaging_privileged_actions_are_refused_while_audit_is_down(customer: Customer, suite: Suite) -> None:
    http = Http(customer.url, str(customer.ca))
    auth = (customer.username, customer.api_key)
    before = http.call("GET", "/v1/messaging/settings", auth=auth)
    assert before.status == 200, before.body
    assert before.json()["settings"].get("inbound_webhook_url", "") != OUTSIDE

    audit = suite.procs["audit"]
    suite.config.ports["audit"] = audit.port or 0  # it comes back on the port the other processes know
    audit.popen.kill()  # SIGKILL: no graceful shutdown
    audit.popen.wait()
    refused_ids: list[str] = []
    try:
        change = http.call("PATCH", "/v1/messaging/settings", auth=auth, json_body={"inbound_webhook_url": OUTSIDE})
        assert _error(change) == (503, "AUDIT_UNAVAILABLE"), change.body
        rotate = http.call("POST", "/v1/messaging/settings/webhook-secret", auth=auth, json_body={})
        assert _error(rotate) == (503, "AUDIT_UNAVAILABLE"), rotate.body
        refused_ids += [change.headers["x-request-id"], rotate.headers["x-request-id"]]
        during = http.call("GET", "/v1/messaging/settings", auth=auth)
        assert during.status == 200 and during.json() == before.json(), during.body
    finally:
        restarted = suite.restart("audit")
    assert restarted.port == audit.port

    try:
        after = http.call("GET", "/v1/messaging/settings", auth=auth)
        assert after.status == 200 and after.json() == before.json(), after.body

        # Audit is back: the same change goes through (messaging's channel may still be backing off briefly).
        deadline = time.monotonic() + 60
        while True:
            done = http.call("PATCH", "/v1/messaging/settings", auth=auth,
                             json_body={"inbound_webhook_url": OUTSIDE})
            if done.status == 200 or time.monotonic() > deadline:
                break
            assert _error(done) == (503, "AUDIT_UNAVAILABLE"), done.body
            time.sleep(0.2)
        assert done.status == 200, done.body
        assert done.json()["settings"]["inbound_webhook_url"] == OUTSIDE
        assert _actions(http, auth, done.headers["x-request-id"]) >= {"messaging.settings.updated"}

        # The refused actions left no event claiming they happened (only the gateway's record of the 503).
        for request_id in refused_ids:
            assert not {a for a in _actions(http, auth, request_id) if a.startswith("messaging.")}
    finally:
        http.call("PATCH", "/v1/messaging/settings", auth=auth, json_body={"inbound_webhook_url": ""})


def _actions(http: Http, auth: tuple[str, str], request_id: str) -> set[str]:
    """The actions logged for one request, once the gateway's own event for it is there."""
    deadline = time.monotonic() + 30
    while True:
        r = http.call("GET", f"/v1/audit/events?{urllib.parse.urlencode({'request_id': request_id})}", auth=auth)
        events: list[dict[str, Any]] = r.json()["events"] if r.status == 200 else []
        actions = {e["action"] for e in events}
        if any(a.startswith("gateway.") for a in actions) or time.monotonic() > deadline:
            return actions
        time.sleep(0.2)


def test_a_deidentified_user_cannot_point_data_outside(customer: Customer) -> None:
    """Issue 12, attack 2: a de-identified sub-account that may change settings pointed the inbound webhook at an
    outside URL, where replies are posted unmasked. Every route that sets a standing destination is refused to
    it (at the gateway, and again by the service's guard: tests/integration/test_guard_policy.py)."""
    http = Http(customer.url, str(customer.ca))
    name = f"deidout{uuid.uuid4().hex[:8]}"
    made = http.call("POST", "/v3/subaccounts", auth=(customer.username, customer.api_key), json_body={
        "api_username": name, "password": "Violet-staple-orbit-7", "email": f"{name}@example.com",
        "access_settings": 1, "sms_deidentify_message": 1})
    assert made.status == 200, made.body
    auth = (name, made.json()["data"]["api_key"])
    try:
        before = http.call("GET", "/v1/messaging/settings", auth=auth)
        assert before.status == 200, before.body
        for method, path, body in (
            ("PATCH", "/v1/messaging/settings", {"inbound_webhook_url": OUTSIDE}),
            ("PUT", "/v1/audit/forwarding", {"enabled": True, "kind": "FORWARDING_KIND_WEBHOOK", "url": OUTSIDE,
                                             "backfill": True}),
            ("POST", "/v1/audit/alert-rules", {"name": "out", "webhook_url": OUTSIDE}),
        ):
            refused = http.call(method, path, auth=auth, json_body=body)
            assert _error(refused) == (403, "DEIDENTIFIED_USER"), (path, refused.body)
            assert "ask an unrestricted user" in refused.json()["error"]["message"]
        assert http.call("GET", "/v1/messaging/settings", auth=auth).json() == before.json()
    finally:  # the demo account's sub-account list is shared by other tests
        gone = http.call("DELETE", f"/v3/subaccounts/{made.json()['data']['subaccount_id']}",
                         auth=(customer.username, customer.api_key))
        assert gone.status == 200, gone.body
