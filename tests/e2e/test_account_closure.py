"""Issue 15, closure and provable deletion, through the HTTPS gateway: an account's main user (password + TOTP) sends
a message scheduled for later, then closes the account. Sessions and API keys stop within seconds, the scheduled
message is cancelled and refunded, sub-accounts and wrong names are refused, and during the pending window the main
user can still log in with password + second factor but holds only the closure (see, cancel). Cancel restores the
account (revoked keys stay revoked); closing again and letting the window pass (seconds in the suite) destroys the
keys, deletes the account's rows in every service database (checked table by table), keeps the audit events, and
emails the signed destruction receipt to the owner, which verifies offline with the receipt-signing public key
(`python -m tools.audit_verify receipt` over the saved email and key list; a changed byte fails)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pyotp
import pytest

from sendsafe.identity.v1 import identity_service_pb2, identity_service_pb2_grpc
from sendsafe.keys.v1 import keys_service_pb2, keys_service_pb2_grpc
from services.identity.domain.flags import ACCESS_FLAG_NAMES
from services.keys.domain.receipts import verify_receipt
from svckit.rpc import secure_channel
from svckit.tls import TlsFiles
from tests.e2e.api_client import Http, Response, until
from tests.e2e.conftest import Customer
from tests.support import CertBundle
from tools.suite import REPO, Suite

T = TypeVar("T")
PASSWORD = "granite walrus pivot 93 lantern"
TO = "+61412345678"  # not a ClickSend test number: priced




def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _reason(r: Response) -> str:
    return str(r.json()["error"]["reason"])


def _make_account(suite: Suite, certs: CertBundle, name: str, username: str) -> tuple[int, str]:
    """A live account as operators open them (main user with a password); (account id, its main API key)."""
    tls = TlsFiles(certs.dir / "ops.crt", certs.dir / "ops.key", certs.dir / "internal-ca.crt")

    async def make() -> tuple[int, str]:
        async with (
            secure_channel(suite.addrs["identity"], tls, server_name="identity") as ich,
            secure_channel(suite.addrs["keys"], tls, server_name="keys") as kch,
        ):
            made = await identity_service_pb2_grpc.IdentityServiceStub(ich).CreateAccount(
                identity_service_pb2.CreateAccountRequest(account_name=name, api_username=username,
                                                          email=f"{username}@example.com", country="AU",
                                                          password=PASSWORD))
            issued = await keys_service_pb2_grpc.KeysServiceStub(kch).IssueApiKey(keys_service_pb2.IssueApiKeyRequest(
                account_id=made.user.account_id, user_id=made.user.user_id, name="closure"))
            return made.user.account_id, str(issued.api_key)

    return asyncio.run(make())


def _rows_of(suite: Suite, account_id: int) -> dict[str, dict[str, int]]:
    """Per service database, per table with an account_id column: the rows this account still has there."""

    async def count() -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for service in ("identity", "keys", "messaging", "audit"):
            conn = await asyncpg.connect(suite.config.database_url(service))
            try:
                tables = [r[0] for r in await conn.fetch(
                    "SELECT c.table_name FROM information_schema.columns c JOIN information_schema.tables t"
                    " ON t.table_schema = c.table_schema AND t.table_name = c.table_name"
                    " AND t.table_type = 'BASE TABLE' WHERE c.table_schema = current_schema()"
                    " AND c.column_name = 'account_id'")]
                out[service] = {t: int(await conn.fetchval(
                    f'SELECT count(*) FROM "{t}" WHERE account_id = $1', account_id)) for t in tables}
                if service == "identity":
                    out[service]["accounts"] = int(await conn.fetchval(
                        "SELECT count(*) FROM accounts WHERE id = $1 AND state = 'closed' AND name IS NULL"
                        " AND destruction_receipt_sha256 IS NOT NULL", account_id))
            finally:
                await conn.close()
        return out

    return asyncio.run(count())


def _closure_state(suite: Suite, account_id: int) -> str:
    async def get() -> str:
        conn = await asyncpg.connect(suite.config.database_url("identity"))
        try:
            return str(await conn.fetchval("SELECT state FROM accounts WHERE id = $1", account_id))
        finally:
            await conn.close()

    return asyncio.run(get())


def test_close_cancel_close_again_then_everything_is_gone_and_the_receipt_verifies(
    suite: Suite, certs: CertBundle, customer: Customer, smtp_inbox: Any, tmp_path: Path
) -> None:
    http = Http(suite.gateway_url, str(certs.public_ca))
    name = f"Closure {uuid.uuid4().hex[:8]} Pty Ltd"
    username = f"closer{uuid.uuid4().hex[:10]}"
    account_id, api_key = _make_account(suite, certs, name, username)
    main = (username, api_key)

    # A second factor for the main user; three TOTP steps (previous, current, next) serve the three logins.
    first = http.call("POST", "/v1/auth/login", json_body={"username": username, "password": PASSWORD})
    assert first.status == 200, first.body
    token0 = first.json()["session_token"]
    enrol = http.call("POST", "/v1/auth/mfa/totp", headers=_bearer(token0), json_body={"password": PASSWORD})
    assert enrol.status == 200, enrol.body
    totp = pyotp.TOTP(enrol.json()["secret"])
    step = int(time.time()) // 30
    confirmed = http.call("POST", "/v1/auth/mfa/totp/confirm", headers=_bearer(token0),
                          json_body={"code": totp.at((step - 1) * 30)})
    assert confirmed.status == 200, confirmed.body

    def login(at_step: int) -> Response:
        return http.call("POST", "/v1/auth/login", json_body={
            "username": username, "password": PASSWORD, "totp_code": totp.at(at_step * 30)})

    r = login(step)
    assert r.status == 200, r.body
    token1 = r.json()["session_token"]

    # A message scheduled for tomorrow (priced and debited now), and the balance before and after it.
    balance = float(http.call("GET", "/v3/account", auth=main).json()["data"]["balance"])
    sent = http.call("POST", "/v3/sms/send", auth=main, json_body={"messages": [
        {"to": TO, "body": "see you tomorrow", "source": "closure", "schedule": int(time.time()) + 86400}]})
    assert sent.status == 200, sent.body
    message = sent.json()["data"]["messages"][0]
    assert message["status"] == "SUCCESS", message
    debited = float(http.call("GET", "/v3/account", auth=main).json()["data"]["balance"])
    assert debited < balance

    # Only the main user may close: a sub-account holding every access flag is refused (403), in a session.
    sub = f"closersub{uuid.uuid4().hex[:8]}"
    r = http.call("POST", "/v3/subaccounts", auth=main, json_body={
        "api_username": sub, "password": PASSWORD, "email": f"{sub}@example.com",
        **{flag: 1 for flag in ACCESS_FLAG_NAMES}})
    assert r.status == 200, r.body
    sub_token = http.call("POST", "/v1/auth/login", json_body={"username": sub, "password": PASSWORD}
                          ).json()["session_token"]
    refused = http.call("POST", "/v1/account/close", headers=_bearer(sub_token), json_body={"account_name": name})
    assert refused.status == 403 and _reason(refused) == "MISSING_PERMISSION", refused.body
    # An API key never closes an account (session only), even the main user's.
    refused = http.call("POST", "/v1/account/close", auth=main, json_body={"account_name": name})
    assert refused.status == 403, refused.body
    # The account's name must be typed back exactly.
    wrong = http.call("POST", "/v1/account/close", headers=_bearer(token1), json_body={"account_name": "Closure"})
    assert wrong.status == 400 and _reason(wrong) == "ACCOUNT_NAME_MISMATCH", wrong.body
    # Cancelling a closure that is not under way is refused.
    r = http.call("POST", "/v1/account/close/cancel", headers=_bearer(token1), json_body={})
    assert r.status >= 400 and _reason(r) == "ACCOUNT_NOT_CLOSING", r.body
    r = http.call("GET", "/v1/account/close", headers=_bearer(token1))
    assert r.status == 200 and r.json()["closure"]["state"] == "ACCOUNT_CLOSURE_STATE_OPEN", r.body

    # Close.
    started = time.monotonic()
    closed = http.call("POST", "/v1/account/close", headers=_bearer(token1), json_body={"account_name": name})
    assert closed.status == 200, closed.body
    closure = closed.json()["closure"]
    assert closure["state"] == "ACCOUNT_CLOSURE_STATE_CLOSING" and closure["destroy_time"], closure
    assert {"sessions_ended", "api_keys_revoked", "sends_stopped", "keys_scheduled"} <= set(closure["steps_done"])

    # Within seconds: every session and API key of the account is refused at the gateway.
    for creds in ({"headers": _bearer(token1)}, {"headers": _bearer(token0)}, {"headers": _bearer(sub_token)},
                  {"auth": main}):
        until(lambda creds=creds: http.call("GET", "/v1/account/close", **creds).status,  # type: ignore[misc]
              lambda s: s == 401, "a credential of the closing account to be refused", deadline_s=10.0)
    refused_after = time.monotonic() - started

    # During the window the main user logs in with password + second factor, and holds only the closure.
    r = login(step + 1)
    assert r.status == 200, r.body
    token2 = r.json()["session_token"]
    r = http.call("GET", "/v1/account/close", headers=_bearer(token2))
    assert r.status == 200 and r.json()["closure"]["state"] == "ACCOUNT_CLOSURE_STATE_CLOSING", r.body
    r = http.call("GET", "/v3/account", headers=_bearer(token2))
    assert r.status == 403, r.body
    twice = http.call("POST", "/v1/account/close", headers=_bearer(token2), json_body={"account_name": name})
    assert twice.status >= 400 and _reason(twice) == "ACCOUNT_CLOSING", twice.body
    # The sub-account can log in but holds nothing.
    sub_again = http.call("POST", "/v1/auth/login", json_body={"username": sub, "password": PASSWORD})
    if sub_again.status == 200:
        r = http.call("GET", "/v1/account/close", headers=_bearer(sub_again.json()["session_token"]))
        assert r.status == 403, r.body

    # Cancel: the account is open again; the scheduled message stays cancelled and was refunded; old keys stay
    # revoked and ended sessions stay ended.
    r = http.call("POST", "/v1/account/close/cancel", headers=_bearer(token2), json_body={})
    assert r.status == 200 and r.json()["closure"]["state"] == "ACCOUNT_CLOSURE_STATE_OPEN", r.body
    account = until(lambda: http.call("GET", "/v3/account", headers=_bearer(token2)),
                    lambda resp: resp.status == 200, "the reopened account to be readable")
    assert float(account.json()["data"]["balance"]) == pytest.approx(balance), (balance, debited)
    history = http.call("GET", "/v3/sms/history", headers=_bearer(token2))
    assert history.status == 200, history.body
    statuses = {m["message_id"]: m["status"] for m in history.json()["data"]["data"]}
    assert statuses[message["message_id"]] == "Cancelled", statuses
    assert http.call("GET", "/v3/account", auth=main).status == 401
    assert http.call("GET", "/v3/account", headers=_bearer(token1)).status == 401

    # Close again, and let the window pass.
    again = http.call("POST", "/v1/account/close", headers=_bearer(token2), json_body={"account_name": name})
    assert again.status == 200, again.body
    until(lambda: _closure_state(suite, account_id), lambda s: s == "closed", "the account to be closed",
          deadline_s=60.0)

    # Every read fails: no session, no login, no key.
    assert http.call("GET", "/v3/account", headers=_bearer(token2)).status == 401
    assert http.call("GET", "/v3/account", auth=main).status == 401
    r = http.call("POST", "/v1/auth/login", json_body={"username": username, "password": PASSWORD,
                                                       "totp_code": totp.now()})
    assert r.status == 401, r.body

    # Rows gone in every service database (the closed account row and messaging's marker aside); events kept.
    rows = _rows_of(suite, account_id)
    left = {(svc, t): n for svc, tables in rows.items() for t, n in tables.items()
            if n and t not in ("events", "account_heads", "account_closures", "accounts", "account_keys",
                               "account_kek_versions", "alerts", "alert_accounts")}
    assert not left, left
    assert rows["identity"]["accounts"] == 1  # reduced to id, state, times and the receipt's hash
    assert rows["audit"]["events"] > 0  # append-only: the account's history stays (ids and network facts)
    assert rows["keys"]["account_keys"] == 1  # the key ring's tombstone, with the receipt

    # The receipt reached the owner by email and verifies offline with the receipt-signing public key.
    owner = f"{username}@example.com"
    mails = until(lambda: [m for m in list(smtp_inbox.received)
                           if m.rcpt_tos == [owner] and "destruction receipt" in str(m.message["Subject"])],
                  lambda got: len(got) == 1, "the receipt email")
    text = mails[0].message.get_content().replace("\r\n", "\n")
    receipt = re.search(r"^Receipt: (.+)$", text, re.M)
    signature = re.search(r"^Signature \(base64\): (.+)$", text, re.M)
    key_id = re.search(r"^Signing key id: (.+)$", text, re.M)
    assert receipt and signature and key_id, text
    body, sig = receipt.group(1).strip().encode(), base64.b64decode(signature.group(1).strip())
    fields = json.loads(body)
    assert fields["account_id"] == str(account_id) and fields["destroyed_key_versions"], fields
    keys = http.call("GET", "/v1/keys/receipt-signing-keys", auth=(customer.username, customer.api_key))
    assert keys.status == 200, keys.body
    public = {k["key_id"]: base64.b64decode(k["public_key"]) for k in keys.json()["keys"]}[key_id.group(1).strip()]
    assert verify_receipt(public, body, sig)
    assert not verify_receipt(public, body.replace(b'"account_id"', b'"account_id" '), sig)  # a changed byte fails
    # What the owner runs: the saved email and the saved key list, through tools.audit_verify.
    (tmp_path / "receipt.eml").write_bytes(mails[0].data)
    (tmp_path / "keys.json").write_bytes(keys.body)
    checked = subprocess.run([sys.executable, "-m", "tools.audit_verify", "receipt", str(tmp_path / "receipt.eml"),
                              "--keys", str(tmp_path / "keys.json")], capture_output=True, text=True, cwd=REPO,
                             env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'gen' / 'python'}"})
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert str(account_id) in checked.stdout, checked.stdout
    forged_text = text.replace('"version":1', '"version":2')
    assert forged_text != text
    (tmp_path / "forged.txt").write_text(forged_text)
    forged = subprocess.run([sys.executable, "-m", "tools.audit_verify", "receipt", str(tmp_path / "forged.txt"),
                             "--keys", str(tmp_path / "keys.json")], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'gen' / 'python'}"})
    assert forged.returncode == 1 and "BAD_SIGNATURE" in forged.stdout + forged.stderr, forged.stdout
    print(f"closure: credentials refused {refused_after:.1f} s after close")
