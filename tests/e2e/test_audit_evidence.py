"""A customer checks its own audit trail through HTTPS only: an event's inclusion proof against the signed
checkpoint (independent RFC 9162 code), consistency between two checkpoints, and a full export verified
offline by `python -m tools.audit_verify`; plus an alert rule that notifies through the API."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

from tests.e2e.api_client import Http
from tests.e2e.conftest import Customer
from tests.unit.audit import rfc9162 as rfc
from tools.suite import REPO


def _note(note: str) -> tuple[int, bytes]:
    _origin, size, root = note.split("\n")[:3]
    return int(size), base64.b64decode(root)


def test_a_customer_verifies_its_own_trail(customer: Customer, tmp_path: Path) -> None:
    http = Http(customer.url, str(customer.ca))
    auth = (customer.username, customer.api_key)
    r = http.call("GET", "/v3/account", auth=auth)  # something to find in the log
    request_id = r.headers["x-request-id"]

    def find() -> dict | None:  # type: ignore[type-arg]
        q = urllib.parse.urlencode({"request_id": request_id})
        got = http.call("GET", f"/v1/audit/events?{q}", auth=auth)
        assert got.status == 200, got.body
        events = got.json()["events"]
        return events[0] if events else None

    end = time.monotonic() + 20
    ev = find()
    while ev is None and time.monotonic() < end:
        time.sleep(0.1)
        ev = find()
    assert ev is not None and ev["action"] == "gateway.GetAccount"

    first = http.call("GET", "/v1/audit/checkpoint?fresh=true", auth=auth).json()
    proof = http.call("GET", f"/v1/audit/events/{ev['event_id']}/proof", auth=auth)
    assert proof.status == 200, proof.body
    p = proof.json()
    leaf = base64.b64decode(p["leaf_data"])
    size, root = _note(p["checkpoint"]["signed_note"])
    assert rfc.verify_inclusion(p["leaf_index"], size, rfc.HASH(b"\x00" + leaf),
                                [base64.b64decode(x) for x in p["inclusion_path"]], root)
    assert p["event"]["event_id"] == ev["event_id"] and p["event"]["hash"] == rfc.HASH(b"\x00" + leaf).hex()

    # The log only grew between two checkpoints.
    second = http.call("GET", "/v1/audit/checkpoint?fresh=true", auth=auth).json()
    m, m_root = _note(first["checkpoint"]["signed_note"])
    n, n_root = _note(second["checkpoint"]["signed_note"])
    if m < n:
        c = http.call("GET", f"/v1/audit/consistency-proof?first_tree_size={m}&second_tree_size={n}", auth=auth)
        assert c.status == 200, c.body
        assert rfc.verify_consistency(m, n, m_root, n_root, [base64.b64decode(x) for x in c.json()["proof"]])

    # The whole trail, exported and verified offline with nothing but the file and the log's key.
    export, key = tmp_path / "audit.jsonl", tmp_path / "log.vkey"
    key.write_text(second["verifier_key"])
    cli = [sys.executable, "-m", "tools.audit_verify"]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'gen' / 'python'}"}
    subprocess.run([*cli, "fetch", "--url", customer.url, "--username", customer.username, "--api-key",
                    customer.api_key, "--ca", str(customer.ca), "--out", str(export)], cwd=REPO, env=env, check=True)
    ok = subprocess.run([*cli, "verify", str(export), "--key", f"@{key}"], cwd=REPO, env=env, capture_output=True,
                        text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("OK:"), ok.stdout
    lines = export.read_text().splitlines()
    del lines[len(lines) // 2]  # someone removes an event from the file
    export.write_text("\n".join(lines) + "\n")
    bad = subprocess.run([*cli, "verify", str(export), "--key", f"@{key}"], cwd=REPO, env=env, capture_output=True,
                         text=True)
    assert bad.returncode == 1 and "REMOVED" in bad.stdout, bad.stdout
    assert customer.api_key not in export.read_text()


def test_alert_rules_through_the_api(customer: Customer) -> None:
    http = Http(customer.url, str(customer.ca))
    auth = (customer.username, customer.api_key)
    rules = http.call("GET", "/v1/audit/alert-rules", auth=auth)
    assert rules.status == 200, rules.body
    assert any(r["name"] == "New API key" and r["is_default"] for r in rules.json()["rules"])
    created = http.call("POST", "/v1/audit/alert-rules", auth=auth, json_body={
        "name": "denied calls", "outcomes": ["OUTCOME_DENIED"], "threshold": 3, "window_seconds": 60})
    assert created.status == 200, created.body
    rule_id = created.json()["rule"]["rule_id"]
    bad = ("wrong-user", customer.api_key)
    for _ in range(3):
        assert http.call("GET", "/v3/account", auth=bad).status == 401

    def fired() -> list[dict]:  # type: ignore[type-arg]
        alerts = http.call("GET", "/v1/audit/alerts", auth=auth).json()["alerts"]
        return [a for a in alerts if a["rule_id"] == rule_id]

    end = time.monotonic() + 20
    while not fired() and time.monotonic() < end:
        time.sleep(0.2)
    (alert,) = fired()
    assert alert["match_count"] >= 3 and alert["action"] == "gateway.unauthenticated"
    assert http.call("DELETE", f"/v1/audit/alert-rules/{rule_id}", auth=auth).status == 200
