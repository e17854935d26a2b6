"""Issue 12, attack 3, through the gateway only: the platform sent SMS of an attacker's wording. A key
scoped to audit.* may not set an SMS alert; a number must be verified first (a code sent to it); an alert
SMS then goes out as the rule owner's send, with the fixed text, charged, never re-triggers itself, and
stops at the hourly cap (AUDIT_ALERT_MESSAGES_PER_HOUR, default 20) with one audit event. Once the key that
set a rule is revoked, its alerts are refused at delivery (ALERT_OWNER_NOT_ALLOWED)."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from sendsafe.identity.v1 import identity_service_pb2, identity_service_pb2_grpc
from sendsafe.keys.v1 import keys_service_pb2, keys_service_pb2_grpc
from services.messaging.domain.records import BODY_RECORD
from svckit.envelope import Envelope, KeysStubSource, aad_for
from svckit.rpc import secure_channel
from svckit.tls import TlsFiles
from tests.e2e.api_client import Http
from tests.e2e.conftest import Customer
from tests.e2e.identity_support import reason
from tests.support import CertBundle
from tools.suite import Suite

NUMBER = "+61412000777"  # a real-format AU mobile (not a free ClickSend test number): charged
CAP = 20  # the default AUDIT_ALERT_MESSAGES_PER_HOUR


def until(check: Callable[[], Any], what: str, deadline_s: float = 30.0) -> Any:
    end = time.monotonic() + deadline_s
    while not (got := check()):
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return got


def handset(suite: Suite, certs: CertBundle) -> str:
    """What the phone at NUMBER received last as a verification code: the carrier's copy of the message
    (its ciphertext, opened with messaging's own certificate; the API never shows the code)."""

    async def read() -> str:
        conn = await asyncpg.connect(suite.config.database_url("messaging"))
        try:
            row = await conn.fetchrow(
                "SELECT id, account_id, body_ct FROM messages WHERE cause = 'destination_verification'"
                " ORDER BY create_time DESC LIMIT 1")
        finally:
            await conn.close()
        channel = secure_channel(suite.addrs["keys"], certs.tls("messaging"), server_name="keys")
        try:
            envelope = Envelope(KeysStubSource(keys_service_pb2_grpc.KeysServiceStub(channel)))
            mid = str(row["id"]).upper()
            body = await envelope.decrypt(row["account_id"], aad_for(row["account_id"], BODY_RECORD, mid),
                                          bytes(row["body_ct"]))
        finally:
            await channel.close()
        return body.decode()

    return asyncio.run(read())


def test_alert_sms_are_sends_by_the_owner_to_verified_numbers(suite: Suite, certs: CertBundle,
                                                              customer: Customer) -> None:
    http = Http(customer.url, str(customer.ca))
    main = (customer.username, customer.api_key)
    made = http.call("POST", "/v1/api-keys", auth=main, json_body={
        "name": f"audit only {uuid.uuid4().hex[:6]}", "scopes": ["audit.manage", "audit.read"]})
    assert made.status == 200, made.body
    audit_only = (customer.username, made.json()["secret"])
    attack = {"name": "Card locked call +61400000000", "actions": ["gateway.*"], "sms_to": NUMBER}

    # 1. The attack as filed: an audit.* key sets an SMS rule. Refused: the SMS would be a send of its own.
    r = http.call("POST", "/v1/audit/alert-rules", auth=audit_only, json_body=attack)
    assert r.status == 403 and reason(r) == "SMS_SEND_REQUIRED", r.body
    # 2. Even an sms.send holder may not point a rule at a number nobody verified.
    r = http.call("POST", "/v1/audit/alert-rules", auth=main, json_body=attack)
    assert r.status == 400 and reason(r) == "DESTINATION_NOT_VERIFIED", r.body
    r = http.call("POST", "/v1/audit/alert-rules", auth=main, json_body={**attack, "sms_to": "",
                                                                          "email_to": "ops@example.com"})
    assert r.status == 400 and reason(r) == "DESTINATION_NOT_VERIFIED", r.body
    # The key scoped to audit.* cannot verify numbers either (that is a send).
    r = http.call("POST", "/v1/messaging/notification-destinations", auth=audit_only,
                  json_body={"channel": "NOTIFICATION_CHANNEL_SMS", "to": NUMBER})
    assert r.status == 403, r.body

    # A rule without targets marks how far the alert engine got: when it fires for a new API key, every
    # event before that key was evaluated.
    r = http.call("POST", "/v1/audit/alert-rules", auth=main, json_body={
        "name": "marker", "actions": ["keys.api_key.created"]})
    marker = r.json()["rule"]["rule_id"]

    def alerts_of(rid: int) -> list[dict[str, Any]]:
        return [a for a in http.call("GET", "/v1/audit/alerts?page_size=100", auth=main).json()["alerts"]
                if a["rule_id"] == rid]

    def engine_caught_up() -> None:
        seen = len(alerts_of(marker))
        assert http.call("POST", "/v1/api-keys", auth=main, json_body={"name": "marker", "scopes": ["account.read"]}
                         ).status == 200
        until(lambda: len(alerts_of(marker)) > seen, "the alert engine to catch up")

    # 3. Verify the number: a code goes to it, and is entered back.
    since = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=2)

    def sent_events() -> list[dict[str, Any]]:  # this test's, whatever else the shared account sent before
        q = urllib.parse.urlencode({"action": "messaging.sms.sent", "page_size": 500,
                                    "start_time": since.strftime("%Y-%m-%dT%H:%M:%SZ")})
        return list(http.call("GET", f"/v1/audit/events?{q}", auth=main).json()["events"])

    before = len(sent_events())
    r = http.call("POST", "/v1/messaging/notification-destinations", auth=main,
                  json_body={"channel": "NOTIFICATION_CHANNEL_SMS", "to": NUMBER})
    assert r.status == 200, r.body
    dest = r.json()["destination"]
    assert dest["to"] == "+61******777" and not dest.get("verified")
    code = handset(suite, certs)
    assert code.startswith("SendSafe verification code: ")
    r = http.call("POST", f"/v1/messaging/notification-destinations/{dest['destination_id']}/verify", auth=main,
                  json_body={"code": "000000" if code[-6:] != "000000" else "111111"})
    assert r.status == 400 and reason(r) == "DESTINATION_CODE_INVALID", r.body
    r = http.call("POST", f"/v1/messaging/notification-destinations/{dest['destination_id']}/verify", auth=main,
                  json_body={"code": code[-6:]})
    assert r.status == 200 and r.json()["destination"]["verified"], r.body
    # The code never shows in the account's history (only the handset has it).
    history = http.call("GET", "/v3/sms/history?limit=100", auth=main).json()["data"]["data"]
    assert not any(code[-6:] in (m.get("body") or "") for m in history)

    # 4. A rule on sent SMS, by an sms.send holder, to the verified number (once the code's own delivery
    # event is in, so that only what follows counts).
    until(lambda: len(sent_events()) > before, "the verification SMS's delivery event")
    engine_caught_up()
    r = http.call("POST", "/v1/audit/alert-rules", auth=main, json_body={
        "name": "Card locked call +61400000000", "actions": ["messaging.sms.sent"], "sms_to": NUMBER})
    assert r.status == 200, r.body
    rule_id = r.json()["rule"]["rule_id"]
    r = http.call("POST", "/v3/sms/send", auth=main, json_body={"messages": [{"to": "+61412000778", "body": "hi"}]})
    assert r.status == 200, r.body

    def alert_sms() -> list[dict[str, Any]]:
        data = http.call("GET", "/v3/sms/history?limit=100", auth=main).json()["data"]["data"]
        return [m for m in data if (m.get("body") or "").startswith("SendSafe alert: ")]

    def delivered() -> list[dict[str, Any]]:
        got = alert_sms()
        return got if got and all(m["status_code"] == "201" for m in got) else []

    (sent,) = until(delivered, "the alert SMS to be delivered by the simulator")
    assert sent["body"].startswith(f"SendSafe alert: rule {rule_id} matched 1 event(s) (messaging.sms.sent) at ")
    assert "Card" not in sent["body"] and "+6140" not in sent["body"]  # the rule's name is never sent
    assert float(sent["message_price"]) > 0  # charged like any send of the owner

    # 5. Its own delivery event is in the log, marked; the engine has gone past it (a later event fired a
    # marker rule) and the rule did not fire again.
    def caused() -> list[dict[str, Any]]:
        return [e for e in sent_events() if e.get("cause") == "alert_delivery"]

    until(caused, "the alert SMS's own delivery event")
    engine_caught_up()
    assert len(alerts_of(rule_id)) == 1 and len(alert_sms()) == 1
    assert http.call("DELETE", f"/v1/audit/alert-rules/{rule_id}", auth=main).status == 200

    # 6. The cap: a rule on every API call (the attack's rule, now by an sms.send holder) sends at most
    # CAP alert messages an hour in all, then holds back, with one audit event for the hour.
    r = http.call("POST", "/v1/audit/alert-rules", auth=main, json_body=attack)
    assert r.status == 200, r.body
    noisy = r.json()["rule"]["rule_id"]
    for _ in range(CAP + 2):
        http.call("GET", "/v3/account", auth=main)

    def capped() -> list[dict[str, Any]]:
        evs = http.call("GET", "/v1/audit/events?action=audit.alert.messages_capped", auth=main).json()["events"]
        return list(evs)

    until(capped, "the cap's audit event")
    for _ in range(CAP):
        http.call("GET", "/v3/account", auth=main)
    assert http.call("DELETE", f"/v1/audit/alert-rules/{noisy}", auth=main).status == 200
    until(lambda: len(alert_sms()) == CAP and all(m["status_code"] == "201" for m in alert_sms()),
          "the capped alerts to settle")
    held = [d for a in alerts_of(noisy) for d in a["deliveries"] if d.get("last_error") == "ALERT_MESSAGE_CAP_REACHED"]
    assert held and len(capped()) == 1  # once per window, not per message held back


def live_account(suite: Suite, certs: CertBundle) -> Customer:
    """A live account of its own (charged, delivered by the simulator), made as the ops identity: its hourly
    alert cap and its alerts are this test's alone."""
    tls = TlsFiles(certs.dir / "ops.crt", certs.dir / "ops.key", certs.dir / "internal-ca.crt")
    name = f"owners{uuid.uuid4().hex[:8]}"

    async def make() -> str:
        async with (
            secure_channel(suite.addrs["identity"], tls, server_name="identity") as ich,
            secure_channel(suite.addrs["keys"], tls, server_name="keys") as kch,
        ):
            made = await identity_service_pb2_grpc.IdentityServiceStub(ich).CreateAccount(
                identity_service_pb2.CreateAccountRequest(account_name="Owners", api_username=name,
                                                          email=f"{name}@example.com", country="AU"), timeout=15)
            issued = await keys_service_pb2_grpc.KeysServiceStub(kch).IssueApiKey(keys_service_pb2.IssueApiKeyRequest(
                account_id=made.user.account_id, user_id=made.user.user_id, name="main"), timeout=15)
            return str(issued.api_key)

    return Customer(suite.gateway_url, name, asyncio.run(make()), certs.public_ca)


def test_a_revoked_key_stops_the_alert_sms_of_the_rule_it_set(suite: Suite, certs: CertBundle) -> None:
    """The rule owner's rights are checked again at every delivery: the API key that set an SMS rule is revoked,
    the rule fires, and no alert SMS goes out; the alert history says ALERT_OWNER_NOT_ALLOWED (failed after
    one attempt, not retried) and an audit event says which check failed. Before the revocation the same rule's
    alert SMS went out."""
    account = live_account(suite, certs)
    http = Http(account.url, str(account.ca))
    main = (account.username, account.api_key)
    made = http.call("POST", "/v1/api-keys", auth=main, json_body={
        "name": "alerts", "scopes": ["sms.send", "audit.manage", "audit.read"]})
    assert made.status == 200, made.body
    key_id, alerting = made.json()["api_key"]["key_id"], (account.username, made.json()["secret"])

    r = http.call("POST", "/v1/messaging/notification-destinations", auth=main,
                  json_body={"channel": "NOTIFICATION_CHANNEL_SMS", "to": NUMBER})
    assert r.status == 200, r.body
    dest = r.json()["destination"]["destination_id"]
    r = http.call("POST", f"/v1/messaging/notification-destinations/{dest}/verify", auth=main,
                  json_body={"code": handset(suite, certs)[-6:]})
    assert r.status == 200 and r.json()["destination"]["verified"], r.body
    # On rolled keys: no such event is in the account before the rule (the alert engine may still be behind
    # the events above when the rule is set), only the two rolls below.
    r = http.call("POST", "/v1/audit/alert-rules", auth=alerting, json_body={
        "name": "rolled keys", "actions": ["keys.api_key.rolled"], "sms_to": NUMBER})
    assert r.status == 200, r.body
    rule_id = r.json()["rule"]["rule_id"]

    def deliveries() -> list[dict[str, Any]]:
        alerts = http.call("GET", "/v1/audit/alerts?page_size=100", auth=main).json()["alerts"]
        return [d for a in alerts if a["rule_id"] == rule_id for d in a["deliveries"]]

    def settled(n: int) -> list[dict[str, Any]]:
        got = deliveries()
        return got if len(got) == n and all(d["status"] != "DELIVERY_STATUS_PENDING" for d in got) else []

    def alert_sms() -> list[dict[str, Any]]:
        data = http.call("GET", "/v3/sms/history?limit=100", auth=main).json()["data"]["data"]
        return [m for m in data if (m.get("body") or "").startswith("SendSafe alert: ")]

    def trigger() -> None:
        made = http.call("POST", "/v1/api-keys", auth=main, json_body={"name": "trigger", "scopes": ["account.read"]})
        assert made.status == 200, made.body
        rolled = http.call("POST", f"/v1/api-keys/{made.json()['api_key']['key_id']}/roll", auth=main, json_body={})
        assert rolled.status == 200, rolled.body

    trigger()
    (first,) = until(lambda: settled(1), "the first alert's delivery", 60.0)
    assert first["status"] == "DELIVERY_STATUS_DELIVERED", first
    assert len(until(alert_sms, "the first alert SMS", 60.0)) == 1

    r = http.call("POST", f"/v1/api-keys/{key_id}/revoke", auth=main, json_body={})
    assert r.status == 200, r.body
    trigger()
    both = until(lambda: settled(2), "the second alert's delivery", 60.0)
    assert sorted((d["status"], d.get("last_error", ""), d["attempts"]) for d in both) == [
        ("DELIVERY_STATUS_DELIVERED", "", 1), ("DELIVERY_STATUS_FAILED", "ALERT_OWNER_NOT_ALLOWED", 1)], both
    assert len(alert_sms()) == 1  # nothing went out (or was charged) for the second alert

    def why() -> list[dict[str, Any]]:
        return list(http.call("GET", "/v1/audit/events?action=messaging.notification.refused", auth=main
                              ).json()["events"])

    (event,) = until(why, "the refusal's audit event", 60.0)
    assert event["details"] == {"check": "api_key_inactive", "api_key_id": key_id}, event
    assert event["error_reason"] == "ALERT_OWNER_NOT_ALLOWED" and event.get("cause") == "alert_delivery", event
