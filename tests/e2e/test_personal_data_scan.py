"""Issue 15, Must show: no personal data in clear at rest. An account lives a scripted life through the gateway as
a customer would (a sign-up with the owner's name and email, whose code email goes out; sub-accounts with names,
emails, phone numbers and notes; an update; sends with a marker body and a marker custom string; the receipt; a
reply; an alert rule; the reads that must still show everything; an export, left sealed at rest; a contact list
with marker contacts added by hand and by a CSV import, and a send to it), then every row
of every table of the four service databases (cast to text) and every Redis value under the suite's prefix is
searched for this test's markers, emails, names and phone numbers (E.164 and national digits), as text and as the
hex PostgreSQL prints for bytea. The suite shares its databases with other
e2e tests, so only this test's unique values are searched for."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, TypeVar

import asyncpg
import redis.asyncio as aioredis

from sendsafe.keys.v1 import keys_service_pb2, keys_service_pb2_grpc
from svckit.rpc import secure_channel
from svckit.tls import TlsFiles
from tests.e2e.api_client import Http, until
from tests.support import CertBundle
from tools.suite import Suite

T = TypeVar("T")
SERVICES = ("identity", "keys", "messaging", "audit")
PASSWORD = "quartz meadow ladder 42 ripple"




def _mobile() -> tuple[str, str]:
    """A unique Australian mobile: (E.164, national digits)."""
    rest = f"{uuid.uuid4().int % 10**7:07d}"
    return f"+6141{rest}", f"041{rest}"


def _sign_up(suite: Suite, certs: CertBundle, http: Http, username: str, email: str, name: str) -> str:
    """The account opens as a person opens one (POST /v1/signup; its code email goes out through messaging) and
    stays unverified, so in test mode (the reply hook works). Its API key comes from the keys service with the ops
    certificate: a session makes keys only after a second-factor step-up, which is tested elsewhere."""
    r = http.call("POST", "/v1/signup", json_body={"name": name, "username": username, "email": email,
                                                   "password": PASSWORD, "country": "AU"})
    assert r.status == 200 and r.json()["test_mode"] is True, r.body
    tls = TlsFiles(certs.dir / "ops.crt", certs.dir / "ops.key", certs.dir / "internal-ca.crt")

    async def issue() -> str:
        async with secure_channel(suite.addrs["keys"], tls, server_name="keys") as kch:
            issued = await keys_service_pb2_grpc.KeysServiceStub(kch).IssueApiKey(keys_service_pb2.IssueApiKeyRequest(
                account_id=int(r.json()["account_id"]), user_id=int(r.json()["user_id"]), name="scan", test_mode=True))
            return str(issued.api_key)

    return asyncio.run(issue())


async def _scan_databases(suite: Suite, needles: dict[str, bytes]) -> tuple[list[str], int]:
    """(findings, rows scanned): every table of every service database, each row as PostgreSQL prints it."""
    found: list[str] = []
    rows_seen = 0
    for service in SERVICES:
        conn = await asyncpg.connect(suite.config.database_url(service))
        try:
            tables = await conn.fetch(
                "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
                " AND table_schema NOT IN ('pg_catalog', 'information_schema')")
            assert tables, f"no tables in the {service} database"
            for t in tables:
                name = f'"{t["table_schema"]}"."{t["table_name"]}"'
                async with conn.transaction():
                    async for row in conn.cursor(f"SELECT r::text AS t FROM {name} r"):
                        rows_seen += 1
                        text = row["t"].lower()
                        for what, needle in needles.items():
                            if needle.decode().lower() in text or needle.hex() in text:
                                found.append(f"{what} in {service}.{t['table_name']}")
        finally:
            await conn.close()
    return found, rows_seen


async def _scan_redis(suite: Suite, needles: dict[str, bytes]) -> tuple[list[str], int]:
    """(findings, keys scanned): every key under the suite's prefix, its name and every value in it."""
    r: Any = aioredis.from_url(suite.config.redis_url)  # bytes in, bytes out (no decode_responses)
    found: list[str] = []
    seen = 0
    try:
        async for key in r.scan_iter(match=suite.config.redis_prefix + "*", count=1000):
            seen += 1
            kind = (await r.type(key)).decode()
            parts: list[bytes] = [key]
            if kind == "string":
                parts.append(await r.get(key) or b"")
            elif kind == "hash":
                for k, v in (await r.hgetall(key)).items():
                    parts += [k, v]
            elif kind == "list":
                parts += await r.lrange(key, 0, -1)
            elif kind == "set":
                parts += list(await r.smembers(key))
            elif kind == "zset":
                parts += [m for m, _ in await r.zrange(key, 0, -1, withscores=True)]
            elif kind == "stream":
                for _, fields in await r.xrange(key):
                    for k, v in fields.items():
                        parts += [k, v]
            blob = b"\x00".join(parts).lower()
            for what, needle in needles.items():
                if needle.lower() in blob or needle.hex().encode() in blob:
                    found.append(f"{what} in redis {kind} {key[len(suite.config.redis_prefix):]!r}")
    finally:
        await r.aclose()
    return found, seen


def test_no_personal_data_in_clear_in_any_database_or_redis(suite: Suite, certs: CertBundle) -> None:
    m = uuid.uuid4().hex[:16]  # every free-text value below carries it
    sub_e164, sub_national = _mobile()
    to_e164, to_national = _mobile()
    # The login name is kept in clear (looked up before the account is known; README): a non-personal one.
    username = f"scan{uuid.uuid4().hex[:10]}"
    owner_email = f"owner.{m}@example.com"
    http = Http(suite.gateway_url, str(certs.public_ca))
    api_key = _sign_up(suite, certs, http, username, owner_email, f"Ownerfirst{m} Ownerlast{m}")
    main = (username, api_key)

    # Sub-accounts with names, emails, numbers and notes; one changed afterwards.
    subs = []
    for i, phone in enumerate((sub_national, sub_e164)):
        r = http.call("POST", "/v3/subaccounts", auth=main, json_body={
            "api_username": f"scansub{uuid.uuid4().hex[:10]}", "password": PASSWORD,
            "email": f"sub{i}.{m}@example.com", "phone_number": phone, "first_name": f"Subfirst{i}{m}",
            "last_name": f"Sublast{i}{m}", "notes": f"notes {i} {m}"})
        assert r.status == 200, r.body
        subs.append(r.json()["data"]["subaccount_id"])
    r = http.call("PUT", f"/v3/subaccounts/{subs[1]}", auth=main, json_body={"last_name": f"Renamed{m}"})
    assert r.status == 200, r.body

    # A send with a marker body and custom string, its receipt, and a reply to it.
    body, custom, reply = f"body {m} secret", f"cs{m}", f"reply {m} answer"
    r = http.call("POST", "/v3/sms/send", auth=main, json_body={"messages": [
        {"to": to_e164, "body": body, "custom_string": custom, "source": "scan"}]})
    assert r.status == 200, r.body
    mid = r.json()["data"]["messages"][0]["message_id"]
    until(lambda: http.call("GET", f"/v3/sms/receipts/{mid}", auth=main).status, lambda s: s == 200, "the receipt")
    r = http.call("POST", "/v3/sms/inbound", auth=main, json_body={"url": "poll", "original_message_id": mid,
                                                                   "body": reply})
    assert r.status == 200, r.body
    # An alert rule (no targets: those are verified destinations, tested elsewhere).
    r = http.call("POST", "/v1/audit/alert-rules", auth=main, json_body={"name": "scan rule",
                                                                         "actions": ["messaging.sms.sent"]})
    assert r.status == 200, r.body

    # Everything still reads back in clear through the API.
    listed = {s["subaccount_id"]: s for s in
              http.call("GET", "/v3/subaccounts?limit=100", auth=main).json()["data"]["data"]}
    assert listed[subs[0]]["email"] == f"sub0.{m}@example.com" and listed[subs[1]]["last_name"] == f"Renamed{m}"
    assert listed[subs[1]]["notes"] == f"notes 1 {m}"
    history = http.call("GET", f"/v3/sms/history?limit=15&q=custom_string:{custom}", auth=main).json()["data"]
    assert [(h["body"], h["custom_string"], h["to"]) for h in history["data"]] == [(body, custom, to_e164)]
    inbox = http.call("GET", "/v3/sms/inbound?limit=100", auth=main).json()["data"]["data"]
    assert reply in [i["body"] for i in inbox]

    # An export of the account, written and sealed (not downloaded, so its chunks are at rest during the scan).
    r = http.call("POST", "/v1/account/exports", auth=main, json_body={})
    assert r.status == 200, r.body
    export = r.json()["export"]["export_id"]
    ready = until(lambda: http.call("GET", f"/v1/account/exports/{export}", auth=main).json()["export"],
                  lambda e: e["state"] in ("ACCOUNT_EXPORT_STATE_READY", "ACCOUNT_EXPORT_STATE_FAILED"), "the export")
    assert ready["state"] == "ACCOUNT_EXPORT_STATE_READY" and int(ready["counts"]["message"]) == 1, ready

    # A contact list (issue 21) with marker names, emails, custom fields and numbers: one contact by hand, more
    # from an uploaded CSV (the file is kept sealed until its import ends), then a send to the list.
    contact_e164, contact_national = _mobile()
    csv_e164, csv_national = _mobile()
    r = http.call("POST", "/v3/lists", auth=main, json_body={"list_name": f"list {m}"})
    assert r.status == 200, r.body
    list_id = r.json()["data"]["list_id"]
    r = http.call("POST", f"/v3/lists/{list_id}/contacts", auth=main, json_body={
        "phone_number": contact_national, "address_country": "AU", "first_name": f"Cfirst{m}",
        "last_name": f"Clast{m}", "email": f"contact.{m}@example.com", "custom_1": f"custom {m}",
        "address_line_1": f"1 {m} Street"})
    assert r.status == 200, r.body
    csv = f"phone_number,first_name,email,custom_2\n{csv_e164},Csvfirst{m},csv.{m}@example.com,note {m}\n"
    r = http.call("POST", f"/v1/lists/{list_id}/imports", auth=main, body=csv.encode(),
                  headers={"Content-Type": "text/csv"})
    assert r.status == 200, r.body
    imp = r.json()["contact_import"]["import_id"]
    done = until(lambda: http.call("GET", f"/v1/lists/{list_id}/imports/{imp}", auth=main).json()["contact_import"],
                 lambda x: x["state"] in ("CONTACT_IMPORT_STATE_DONE", "CONTACT_IMPORT_STATE_FAILED"), "the import")
    assert done["state"] == "CONTACT_IMPORT_STATE_DONE" and int(done["imported"]) == 1, done
    people = http.call("GET", f"/v3/lists/{list_id}/contacts?limit=100", auth=main).json()["data"]["data"]
    assert sorted((c["phone_number"], c["first_name"]) for c in people) == sorted(
        [(contact_e164, f"Cfirst{m}"), (csv_e164, f"Csvfirst{m}")])
    r = http.call("POST", "/v3/sms/send", auth=main, json_body={"messages": [
        {"list_id": str(list_id), "body": f"list body {m}"}]})
    assert r.status == 200 and r.json()["data"]["queued_count"] == 2, r.body

    needles = {
        "the marker": m.encode(),
        "an email": owner_email.encode(),
        **{f"a number ({n})": n.encode() for n in (sub_e164, sub_national, to_e164, to_national, to_e164[1:],
                                                    sub_e164[1:], contact_e164, contact_national, contact_e164[1:],
                                                    csv_e164, csv_national, csv_e164[1:])},
    }

    async def scan() -> tuple[list[str], int, int]:
        in_db, rows = await _scan_databases(suite, needles)
        in_redis, keys = await _scan_redis(suite, needles)
        return in_db + in_redis, rows, keys

    found, rows, keys = asyncio.run(scan())
    assert rows > 100 and keys > 0, "the scan saw almost nothing: it would prove nothing"
    assert not sorted(set(found)), sorted(set(found))
