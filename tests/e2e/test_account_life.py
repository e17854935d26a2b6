"""Issue 15, the whole life of an account through the HTTPS gateway: a person signs up, enters the emailed code, adds
a second factor, sends messages with marker bodies, exports the account (downloaded, bodies as sent, the audit
section verified offline with tools.audit_verify against the log's verifier key), closes it, cancels, closes it
again, and once the pending window has passed (seconds in the suite): every credential and read fails, no row of
the account is left in any table with an account_id in the four service databases (the reduced account row, keys'
tombstone, messaging's marker and the append-only audit events aside), and the signed destruction receipt emailed
to the owner verifies offline (tools.audit_verify receipt). The restore of a backup taken before the deletion is
tests/integration/test_backup_restore.py's part."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pyotp

from tests.e2e.api_client import Http, Response, until
from tests.e2e.identity_support import PASSWORD, bearer, login, unique
from tests.e2e.test_account_closure import _closure_state, _rows_of
from tests.e2e.test_signup import code_of, wait_mail
from tests.integration.messaging.smtp_server import Inbox
from tests.support import CertBundle
from tools.suite import REPO, Suite

TO = "+61491570156"  # a real (not test) Australian mobile number
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'gen' / 'python'}"}
KEPT = ("events", "account_heads", "account_closures", "accounts", "account_keys", "account_kek_versions", "alerts",
        "alert_accounts")


def _tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.audit_verify", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True)


def test_sign_up_send_export_close_cancel_close_and_everything_is_gone(
    suite: Suite, certs: CertBundle, smtp_inbox: Inbox, tmp_path: Path
) -> None:
    http = Http(suite.gateway_url, str(certs.public_ca))
    username = unique("life")
    email = f"{username}@people.example"

    # Sign up, and verify the email with the code it received.
    made = http.call("POST", "/v1/signup", json_body={
        "name": "Ada Lovelace", "username": username, "email": email, "password": PASSWORD, "country": "AU"})
    assert made.status == 200, made.body
    account_id = int(made.json()["account_id"])
    verified = http.call("POST", "/v1/signup/verify", json_body={
        "username": username, "code": code_of(wait_mail(smtp_inbox, email))})
    assert verified.status == 200 and verified.json()["test_mode"] is False, verified.body

    # A second factor (closing and exporting are privileged); three TOTP steps serve the three logins.
    token0 = login(http, username).json()["session_token"]
    enrol = http.call("POST", "/v1/auth/mfa/totp", headers=bearer(token0), json_body={"password": PASSWORD})
    assert enrol.status == 200, enrol.body
    totp = pyotp.TOTP(enrol.json()["secret"])
    step = int(time.time()) // 30
    assert http.call("POST", "/v1/auth/mfa/totp/confirm", headers=bearer(token0),
                     json_body={"code": totp.at((step - 1) * 30)}).status == 200

    def mfa_login(at_step: int) -> str:
        r = login(http, username, totp_code=totp.at(at_step * 30))
        assert r.status == 200, r.body
        return str(r.json()["session_token"])

    token = mfa_login(step)
    me = bearer(token)

    # Send.
    marker = f"LIFEMARK{uuid.uuid4().hex[:12]}"
    bodies = [f"{marker} message {i}" for i in range(3)]
    sent = http.call("POST", "/v3/sms/send", headers=me, json_body={"messages": [
        {"to": TO, "body": b, "source": "life"} for b in bodies]})
    assert sent.status == 200, sent.body
    assert [m["status"] for m in sent.json()["data"]["messages"]] == ["SUCCESS"] * 3

    # Export, download, bodies as sent, the audit section verified offline.
    started = http.call("POST", "/v1/account/exports", headers=me, json_body={})
    assert started.status == 200, started.body
    export_id = started.json()["export"]["export_id"]

    def export_state() -> dict[str, Any]:
        got = http.call("GET", f"/v1/account/exports/{export_id}", headers=me)
        assert got.status == 200, got.body
        e: dict[str, Any] = got.json()["export"]
        assert e["state"] != "ACCOUNT_EXPORT_STATE_FAILED", e
        return e

    until(export_state, lambda e: e["state"] == "ACCOUNT_EXPORT_STATE_READY", "the export", deadline_s=60.0)
    file = http.call("GET", f"/v1/account/exports/{export_id}/download", headers=me)
    assert file.status == 200, file.body[:300]
    lines = file.body.decode().splitlines()
    records = [json.loads(x) for x in lines]
    assert sorted(r["body"] for r in records if r["type"] == "message") == sorted(bodies)
    assert {r["to"] for r in records if r["type"] == "message"} == {TO}
    trail, vkey = tmp_path / "audit.jsonl", tmp_path / "log.vkey"
    trail.write_text("\n".join(x for x, r in zip(lines, records, strict=True)
                               if r["type"] in ("checkpoint", "event")) + "\n")
    vkey.write_text(http.call("GET", "/v1/audit/checkpoint", headers=me).json()["verifier_key"])
    ok = _tool("verify", str(trail), "--key", f"@{vkey}")
    assert ok.returncode == 0 and ok.stdout.startswith("OK:"), ok.stdout + ok.stderr
    signing_keys = http.call("GET", "/v1/keys/receipt-signing-keys", headers=me)  # saved now: needed at the end
    assert signing_keys.status == 200, signing_keys.body

    # Close, cancel (logged in again during the window), close again.
    def close(headers: dict[str, str]) -> Response:
        return http.call("POST", "/v1/account/close", headers=headers, json_body={"account_name": username})

    closed = close(me)
    assert closed.status == 200 and closed.json()["closure"]["state"] == "ACCOUNT_CLOSURE_STATE_CLOSING", closed.body
    until(lambda: http.call("GET", "/v1/account/close", headers=me).status, lambda s: s == 401,
          "the session to end", deadline_s=10.0)
    during = bearer(mfa_login(step + 1))
    cancelled = http.call("POST", "/v1/account/close/cancel", headers=during, json_body={})
    assert cancelled.status == 200 and cancelled.json()["closure"]["state"] == "ACCOUNT_CLOSURE_STATE_OPEN"
    history = until(lambda: http.call("GET", "/v3/sms/history", headers=during), lambda r: r.status == 200,
                    "the reopened account's history")
    assert {m["message_id"] for m in history.json()["data"]["data"]} >= {
        m["message_id"] for m in sent.json()["data"]["messages"]}  # its data readable again after cancel
    assert close(during).status == 200
    until(lambda: _closure_state(suite, account_id), lambda s: s == "closed", "the account to be closed",
          deadline_s=60.0)

    # Every read fails; no row of the account is left anywhere but what must stay.
    for headers in (me, during):
        assert http.call("GET", "/v3/sms/history", headers=headers).status == 401
    assert login(http, username, totp_code=totp.now()).status == 401
    rows = _rows_of(suite, account_id)
    left = {(svc, t): n for svc, tables in rows.items() for t, n in tables.items() if n and t not in KEPT}
    assert not left, left
    assert rows["identity"]["accounts"] == 1 and rows["audit"]["events"] > 0

    # The receipt reached the owner and verifies offline with the keys saved earlier.
    mail = until(lambda: [m for m in list(smtp_inbox.received)
                          if m.rcpt_tos == [email] and "destruction receipt" in str(m.message["Subject"])],
                 lambda got: len(got) == 1, "the receipt email")[0]
    (tmp_path / "receipt.eml").write_bytes(mail.data)
    (tmp_path / "keys.json").write_bytes(signing_keys.body)
    checked = _tool("receipt", str(tmp_path / "receipt.eml"), "--keys", str(tmp_path / "keys.json"))
    assert checked.returncode == 0 and str(account_id) in checked.stdout, checked.stdout + checked.stderr
