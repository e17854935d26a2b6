"""Issue 12, attack 5, through HTTPS only: webhook URLs outside the one outbound-webhook policy are refused
when they are configured (400 INVALID_WEBHOOK_URL), for audit's alert rules and forwarding as for
messaging's settings, and nothing is written."""

from __future__ import annotations

from tests.e2e.api_client import Http, Response
from tests.e2e.conftest import Customer


def _refused(r: Response, what: str) -> None:
    assert r.status == 400, (what, r.status, r.body)
    error = r.json()["error"]
    assert (error["status"], error["reason"]) == ("INVALID_ARGUMENT", "INVALID_WEBHOOK_URL"), (what, error)
    assert "public" in error["message"] or "port 443" in error["message"], error["message"]


def test_private_webhook_destinations_answer_400_when_configured(customer: Customer) -> None:
    http = Http(customer.url, str(customer.ca))
    auth = (customer.username, customer.api_key)
    before = http.call("GET", "/v1/audit/alert-rules", auth=auth).json()["rules"]
    rule = {"name": "ssrf probe", "actions": ["gateway.GetAccount"]}
    for url in ("https://127.0.0.1:22/", "https://[64:ff9b::a00:1]/", "https://169.254.169.254/latest/"):
        _refused(http.call("POST", "/v1/audit/alert-rules", auth=auth, json_body={**rule, "webhook_url": url}), url)
        _refused(http.call("PUT", f"/v1/audit/alert-rules/{before[0]['rule_id']}", auth=auth,
                           json_body={**rule, "webhook_url": url}), url)
    after = http.call("GET", "/v1/audit/alert-rules", auth=auth).json()["rules"]
    assert after == before  # no rule created or changed

    for url in ("https://10.0.0.1/siem", "https://[2002:a00:1::1]/siem"):
        _refused(http.call("PUT", "/v1/audit/forwarding", auth=auth, json_body={
            "enabled": True, "kind": "FORWARDING_KIND_WEBHOOK", "url": url, "backfill": True}), url)
    forwarding = http.call("GET", "/v1/audit/forwarding", auth=auth)
    assert forwarding.status == 200 and not forwarding.json().get("forwarding", {}).get("enabled"), forwarding.body

    _refused(http.call("PATCH", "/v1/messaging/settings", auth=auth,
                       json_body={"inbound_webhook_url": "https://10.0.0.1/siem"}), "messaging")
