"""Issue 15, export: an account's main user exports its data through the HTTPS gateway -- sends with marker bodies,
their receipts and a reply, then POST /v1/account/exports, progress polled until ready, the file streamed from
/download (application/x-ndjson), bodies and numbers as sent, the audit section verified offline by
`python -m tools.audit_verify verify` against the log's verifier key, a second download refused, and a sub-account
holding every access flag refused outright (only the main user holds account.export)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, TypeVar

from sendsafe.identity.v1 import identity_service_pb2, identity_service_pb2_grpc
from sendsafe.keys.v1 import keys_service_pb2, keys_service_pb2_grpc
from services.identity.domain.flags import ACCESS_FLAG_NAMES
from svckit.rpc import secure_channel
from svckit.tls import TlsFiles
from tests.e2e.api_client import Http, until
from tests.support import CertBundle
from tools.suite import REPO, Suite

T = TypeVar("T")
PASSWORD = "quartz meadow ladder 42 ripple"




def _make_account(suite: Suite, certs: CertBundle, username: str) -> str:
    """A test-mode account (the reply hook works) as operators open them; its main user's API key."""
    tls = TlsFiles(certs.dir / "ops.crt", certs.dir / "ops.key", certs.dir / "internal-ca.crt")

    async def make() -> str:
        async with (
            secure_channel(suite.addrs["identity"], tls, server_name="identity") as ich,
            secure_channel(suite.addrs["keys"], tls, server_name="keys") as kch,
        ):
            made = await identity_service_pb2_grpc.IdentityServiceStub(ich).CreateAccount(
                identity_service_pb2.CreateAccountRequest(account_name="Export Pty Ltd", api_username=username,
                                                          email=f"{username}@example.com", country="AU",
                                                          test_mode=True))
            issued = await keys_service_pb2_grpc.KeysServiceStub(kch).IssueApiKey(keys_service_pb2.IssueApiKeyRequest(
                account_id=made.user.account_id, user_id=made.user.user_id, name="export", test_mode=True))
            return str(issued.api_key)

    return asyncio.run(make())


def test_the_main_user_exports_the_account_and_verifies_it_offline(
    suite: Suite, certs: CertBundle, tmp_path: Path
) -> None:
    username = f"export{uuid.uuid4().hex[:10]}"
    http = Http(suite.gateway_url, str(certs.public_ca))
    main = (username, _make_account(suite, certs, username))
    marker = f"EXPMARK{uuid.uuid4().hex[:12]}"
    to = f"+6141{uuid.uuid4().int % 10**7:07d}"

    # A few sends with marker bodies, their receipts, and a reply to the first.
    bodies = [f"{marker} body {i}" for i in range(3)]
    r = http.call("POST", "/v3/sms/send", auth=main, json_body={"messages": [
        {"to": to, "body": b, "source": "export"} for b in bodies]})
    assert r.status == 200, r.body
    ids = [m["message_id"] for m in r.json()["data"]["messages"]]
    for mid in ids:
        until(lambda mid=mid: http.call("GET", f"/v3/sms/receipts/{mid}", auth=main).status,  # type: ignore[misc]
              lambda s: s == 200, "a receipt", deadline_s=60.0)
    reply = f"{marker} reply"
    r = http.call("POST", "/v3/sms/inbound", auth=main, json_body={"url": "poll", "original_message_id": ids[0],
                                                                   "body": reply})
    assert r.status == 200, r.body

    # A sub-account with every access flag still cannot export the account (main user only).
    sub_name = f"exportsub{uuid.uuid4().hex[:8]}"
    r = http.call("POST", "/v3/subaccounts", auth=main, json_body={
        "api_username": sub_name, "password": PASSWORD, "email": f"{sub_name}@example.com",
        "phone_number": "0412345678", "first_name": "Sub", "last_name": "Account",
        **{flag: 1 for flag in ACCESS_FLAG_NAMES}})
    assert r.status == 200, r.body
    sub = (sub_name, r.json()["data"]["api_key"])
    for method, path in (("POST", "/v1/account/exports"), ("GET", "/v1/account/exports")):
        refused = http.call(method, path, auth=sub, json_body={} if method == "POST" else None)
        assert refused.status == 403, refused.body
        assert refused.json()["error"]["reason"] == "MISSING_PERMISSION"

    # The send's audit event under a signed checkpoint (its proof signs one if needed): the export's audit section
    # holds what the latest checkpoint covers, and checkpoints are signed at most once a second.
    sent = until(lambda: http.call("GET", "/v1/audit/events?action=gateway.SendSms", auth=main).json()["events"],
                 bool, "the send's audit event", deadline_s=60.0)
    assert http.call("GET", f"/v1/audit/events/{sent[0]['event_id']}/proof", auth=main).status == 200

    # The export, followed until it is ready.
    r = http.call("POST", "/v1/account/exports", auth=main, json_body={})
    assert r.status == 200, r.body
    export_id = r.json()["export"]["export_id"]

    def progress() -> dict[str, Any]:
        got = http.call("GET", f"/v1/account/exports/{export_id}", auth=main)
        assert got.status == 200, got.body
        e: dict[str, Any] = got.json()["export"]
        assert e["state"] != "ACCOUNT_EXPORT_STATE_FAILED", e
        return e

    ready = until(progress, lambda e: e["state"] == "ACCOUNT_EXPORT_STATE_READY", "the export to be ready",
                  deadline_s=60.0)
    counts = {k: int(v) for k, v in ready["counts"].items()}
    assert counts["message"] == 3 and counts["receipt"] == 3 and counts["reply"] == 1, counts
    assert counts["subaccount"] == 2 and counts["api_key"] >= 2 and counts["audit_event"] >= 5, counts
    assert int(ready["bytes"]) > 0 and ready["expire_time"]
    listed = http.call("GET", "/v1/account/exports", auth=main).json()["exports"]
    assert [e["export_id"] for e in listed] == [export_id]

    # The download: JSON Lines as it was sent.
    got = http.call("GET", f"/v1/account/exports/{export_id}/download", auth=main)
    assert got.status == 200, got.body[:500]
    assert got.headers["content-type"].startswith("application/x-ndjson")
    assert got.headers.get("x-request-id")
    assert len(got.body) == int(ready["bytes"])
    records = [json.loads(x) for x in got.body.decode().splitlines()]
    assert records[0]["type"] == "export" and records[0]["export_id"] == export_id
    messages = {r["message_id"]: r for r in records if r["type"] == "message"}
    assert sorted(r["body"] for r in messages.values()) == sorted(bodies)
    assert {r["to"] for r in messages.values()} == {to} and set(messages) == set(ids)
    replies = [r for r in records if r["type"] == "reply"]
    assert [(x["body"], x["from"], x["original_message_id"]) for x in replies] == [(reply, to, ids[0])]
    assert {r["message_id"] for r in records if r["type"] == "receipt"} == set(ids)
    subs = {r["api_username"]: r for r in records if r["type"] == "subaccount"}
    assert set(subs) == {username, sub_name} and subs[sub_name]["email"] == f"{sub_name}@example.com"
    keys = [r for r in records if r["type"] == "api_key"]
    assert keys and not any("secret" in k or "api_key" in k for k in keys)
    assert not any(main[1] in x or sub[1] in x for x in got.body.decode().splitlines())

    # The audit section verifies offline with the log's verifier key, taken from the API (not from the file).
    audit = [x for x in got.body.decode().splitlines() if json.loads(x)["type"] in ("checkpoint", "event")]
    assert any(json.loads(x).get("event", {}).get("action") == "gateway.SendSms" for x in audit)
    trail, key = tmp_path / "audit.jsonl", tmp_path / "log.vkey"
    trail.write_text("\n".join(audit) + "\n")
    key.write_text(http.call("GET", "/v1/audit/checkpoint", auth=main).json()["verifier_key"])
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'gen' / 'python'}"}
    ok = subprocess.run([sys.executable, "-m", "tools.audit_verify", "verify", str(trail), "--key", f"@{key}"],
                        cwd=REPO, env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("OK:"), ok.stdout + ok.stderr

    # Once downloaded, it is gone: a second download is refused with a stable reason.
    again = http.call("GET", f"/v1/account/exports/{export_id}/download", auth=main)
    assert again.status == 400, again.body
    assert again.json()["error"]["reason"] == "EXPORT_ALREADY_DOWNLOADED"
    done = progress()
    assert done["state"] == "ACCOUNT_EXPORT_STATE_DOWNLOADED" and done["download_time"]

    # The export's own audit trail: requested, completed (counts, bytes), downloaded -- ids and numbers only.
    def trail_events() -> list[dict[str, Any]]:
        got = http.call("GET", "/v1/audit/events?action=messaging.export.*&page_size=50", auth=main)
        assert got.status == 200, got.body
        return [e for e in got.json()["events"] if e["resource"]["id"] == export_id]

    events = until(trail_events, lambda es: len(es) >= 3, "the export's audit events", deadline_s=60.0)
    by_action = {e["action"]: e for e in events}
    assert {"messaging.export.requested", "messaging.export.completed", "messaging.export.downloaded"} <= set(
        by_action)
    assert by_action["messaging.export.completed"]["details"]["count.message"] == "3"
    assert not any(marker in json.dumps(e) or to[1:] in json.dumps(e) for e in events)
