"""The keys service in-process over real mTLS, with real PostgreSQL, Redis and audit service."""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
from collections.abc import Iterator

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sendsafe.audit.v1 import audit_service_pb2, audit_service_pb2_grpc, event_pb2
from sendsafe.context.v1 import principal_pb2
from sendsafe.keys.v1 import keys_service_pb2 as pb
from sendsafe.keys.v1 import keys_service_pb2_grpc
from services.keys.domain.api_key_format import looks_like_api_key, parse_api_key
from svckit.app import App
from svckit.envelope import DecryptFailed, Envelope, KeysStubSource, aad_for
from svckit.rpcstatus import error_reason as _reason
from tests.conftest import channel_as
from tests.integration.keys import conftest as keys_conftest
from tests.support import CertBundle, stepped_up_now

ROOT_KEY = keys_conftest.ROOT_KEY


def stub_as(certs: CertBundle, caller: str, app: App) -> tuple[grpc.aio.Channel, keys_service_pb2_grpc.KeysServiceStub]:
    ch = channel_as(certs, caller, app.port, "keys")
    return ch, keys_service_pb2_grpc.KeysServiceStub(ch)




async def _issue(certs: CertBundle, app: App, account_id: int = 41, caller: str = "identity") -> pb.IssueApiKeyResponse:
    ch, stub = stub_as(certs, caller, app)
    async with ch:
        return await stub.IssueApiKey(pb.IssueApiKeyRequest(account_id=account_id, user_id=7, name="ci"))


async def _audit_events(audit_app: App, certs: CertBundle, account_id: int, action: str) -> list[event_pb2.Event]:
    """The account's events with `action`, read the way a customer reads them (audit ListEvents)."""
    principal = principal_pb2.Principal(account_id=account_id, user_id=1, permissions=["audit.read"])
    async with channel_as(certs, "gateway", audit_app.port, "audit") as ch:
        resp = await audit_service_pb2_grpc.AuditServiceStub(ch).ListEvents(
            audit_service_pb2.ListEventsRequest(action=action, page_size=500),
            metadata=(("x-sendsafe-principal-bin", principal.SerializeToString()),),
        )
    return list(resp.events)


async def _all_stored_audit_bytes(audit_app: App) -> bytes:
    rows = await audit_app.extras["service"]._store.chain_rows(0, 1_000_000)  # type: ignore[attr-defined]
    return b"\n".join(r[1] for r in rows)


# -- API keys -----------------------------------------------------------------------------------------


async def test_issue_and_verify_round_trip(keys_app: App, certs: CertBundle) -> None:
    issued = await _issue(certs, keys_app)
    assert issued.api_key.startswith("ss_live_") and looks_like_api_key(issued.api_key)
    assert parse_api_key(issued.api_key).key_id == issued.key_id  # type: ignore[union-attr]
    ops_issued = await _issue(certs, keys_app, caller="ops")
    assert ops_issued.key_id != issued.key_id
    ch, stub = stub_as(certs, "gateway", keys_app)
    async with ch:
        resp = await stub.VerifyApiKey(pb.VerifyApiKeyRequest(api_key=issued.api_key))
    assert (resp.key_id, resp.account_id, resp.user_id, list(resp.scopes)) == (issued.key_id, 41, 7, ["*"])


async def test_test_mode_keys(keys_app: App, certs: CertBundle) -> None:
    ch, stub = stub_as(certs, "identity", keys_app)
    async with ch:
        issued = await stub.IssueApiKey(pb.IssueApiKeyRequest(account_id=3, user_id=4, name="t", test_mode=True))
    assert issued.api_key.startswith("ss_test_")
    ch, stub = stub_as(certs, "gateway", keys_app)
    async with ch:
        assert (await stub.VerifyApiKey(pb.VerifyApiKeyRequest(api_key=issued.api_key))).account_id == 3


async def test_bad_keys_are_refused_alike(keys_app: App, certs: CertBundle) -> None:
    good = await _issue(certs, keys_app)
    revoked = await _issue(certs, keys_app)
    pool: asyncpg.Pool = keys_app.extras["pool"]  # type: ignore[assignment]
    await pool.execute("UPDATE api_keys SET revoke_time = now() - interval '1 day' WHERE key_id = $1", revoked.key_id)
    parts = parse_api_key(good.api_key)
    assert parts is not None
    from services.keys.domain.api_key_format import ApiKeyParts

    wrong_secret = ApiKeyParts(False, parts.key_id, "A" * 22).format()  # valid checksum, wrong secret
    garbled = good.api_key[:-1] + ("x" if good.api_key[-1] != "x" else "y")
    seen = set()
    ch, stub = stub_as(certs, "gateway", keys_app)
    async with ch:
        for candidate in (wrong_secret, garbled, "", "Basic nonsense"):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.VerifyApiKey(pb.VerifyApiKeyRequest(api_key=candidate))
            seen.add((info.value.code(), _reason(info.value), info.value.details()))
        # Whoever holds a real but revoked key learns why (Stripe does the same).
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.VerifyApiKey(pb.VerifyApiKeyRequest(api_key=revoked.api_key))
        assert (info.value.code(), _reason(info.value)) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_REVOKED")
        # The good key still works.
        await stub.VerifyApiKey(pb.VerifyApiKeyRequest(api_key=good.api_key))
    assert seen == {(grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS", "the API key is not valid")}


async def test_verify_failures_are_audited_without_secrets(keys_app: App, audit_app: App, certs: CertBundle) -> None:
    account = secrets.randbelow(10**9) + 10**6
    good = await _issue(certs, keys_app, account_id=account)
    parts = parse_api_key(good.api_key)
    assert parts is not None
    from services.keys.domain.api_key_format import ApiKeyParts

    wrong = ApiKeyParts(False, parts.key_id, "B" * 22).format()
    ch, stub = stub_as(certs, "gateway", keys_app)
    async with ch:
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.VerifyApiKey(pb.VerifyApiKeyRequest(api_key=wrong))
    await keys_app.extras["audit"].flush()  # type: ignore[attr-defined]
    (ev,) = await _audit_events(audit_app, certs, account, "keys.api_key.verify_failed")
    assert ev.resource.id == parts.key_id and ev.error_reason == "INVALID_CREDENTIALS"
    assert ev.details["failure"] == "secret_mismatch" and ev.actor.id == "gateway"
    assert b"B" * 22 not in await _all_stored_audit_bytes(audit_app)


async def test_verify_only_from_gateway(keys_app: App, certs: CertBundle) -> None:
    issued = await _issue(certs, keys_app)
    for caller in ("messaging", "identity", "ops"):
        ch, stub = stub_as(certs, caller, keys_app)
        async with ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.VerifyApiKey(pb.VerifyApiKeyRequest(api_key=issued.api_key))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert _reason(info.value) == "CALLER_NOT_ALLOWED"
    for caller in ("gateway", "messaging"):
        ch, stub = stub_as(certs, caller, keys_app)
        async with ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.IssueApiKey(pb.IssueApiKeyRequest(account_id=1, user_id=1))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    ch, stub = stub_as(certs, "gateway", keys_app)
    async with ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GenerateDataKey(pb.GenerateDataKeyRequest(account_id=1))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_revoke_user_keys_notifies_subscribers(
    keys_app: App, certs: CertBundle, redis_url: str, redis_prefix: str
) -> None:
    from svckit.keyevents import API_KEYS_CHANGED, KeyNotice, Subscriber
    from svckit.redisconn import make_redis

    first, second = await _issue(certs, keys_app, account_id=55), await _issue(certs, keys_app, account_id=55)
    got: list[KeyNotice] = []
    redis = make_redis(redis_url)
    sub = Subscriber(redis, redis_prefix, on_notice=got.append, on_resync=lambda: None)
    sub.start()
    try:
        assert await sub.wait_ready()
        for caller in ("gateway", "messaging"):
            ch, stub = stub_as(certs, caller, keys_app)
            async with ch:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.RevokeUserApiKeys(pb.RevokeUserApiKeysRequest(account_id=55, user_id=7))
            assert _reason(info.value) == "CALLER_NOT_ALLOWED"
        ch, stub = stub_as(certs, "identity", keys_app)
        async with ch:
            resp = await stub.RevokeUserApiKeys(
                pb.RevokeUserApiKeysRequest(account_id=55, user_id=7, keep_key_id=second.key_id, reason="regenerated")
            )
        assert list(resp.revoked_key_ids) == [first.key_id]
        ch, stub = stub_as(certs, "gateway", keys_app)
        async with ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.VerifyApiKey(pb.VerifyApiKeyRequest(api_key=first.api_key))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            await stub.VerifyApiKey(pb.VerifyApiKeyRequest(api_key=second.api_key))
        async with asyncio.timeout(5):
            while not got:
                await asyncio.sleep(0.01)
        assert got == [KeyNotice(API_KEYS_CHANGED, 55, (first.key_id,), "revoked")]
    finally:
        await sub.close()
        await redis.aclose()


async def test_stored_row_holds_no_secret(keys_app: App, certs: CertBundle) -> None:
    issued = await _issue(certs, keys_app, account_id=77)
    parts = parse_api_key(issued.api_key)
    assert parts is not None
    pool: asyncpg.Pool = keys_app.extras["pool"]  # type: ignore[assignment]
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM api_keys WHERE key_id = $1", issued.key_id)
        assert len(rows) == 1
        # Every byte of the table, in text and binary COPY form.
        text_dump = "\n".join(str(tuple(r.values())) for r in await conn.fetch("SELECT * FROM api_keys"))
        import io

        buf = io.BytesIO()
        await conn.copy_from_table("api_keys", output=buf, format="binary")
    for needle in (parts.secret, issued.api_key, parts.secret[:16]):
        assert needle not in text_dump
        assert needle.encode() not in buf.getvalue()
    assert issued.key_id in text_dump  # the scan does see the row


async def test_issue_is_audited_strictly_without_the_secret(keys_app: App, audit_app: App, certs: CertBundle) -> None:
    account = secrets.randbelow(10**9) + 10**6
    issued = await _issue(certs, keys_app, account_id=account)
    parts = parse_api_key(issued.api_key)
    assert parts is not None
    # record_strict: the event is stored before the key is returned, no flush needed.
    (ev,) = await _audit_events(audit_app, certs, account, "keys.api_key.issued")
    assert (ev.resource.type, ev.resource.id, ev.actor.id, ev.service) == ("api_key", issued.key_id, "identity", "keys")
    assert ev.details["user_id"] == "7"
    assert parts.secret not in str(ev)
    stored = await _all_stored_audit_bytes(audit_app)  # every byte the audit log holds
    assert issued.key_id.encode() in stored
    assert parts.secret.encode() not in stored and issued.api_key.encode() not in stored


async def test_last_used_is_written_back_in_batches(
    keys_app: App, certs: CertBundle, redis_url: str, redis_prefix: str
) -> None:
    issued = await _issue(certs, keys_app)
    pool: asyncpg.Pool = keys_app.extras["pool"]  # type: ignore[assignment]
    ch, stub = stub_as(certs, "gateway", keys_app)
    async with ch:
        for _ in range(3):
            await stub.VerifyApiKey(pb.VerifyApiKeyRequest(api_key=issued.api_key))
    # Recorded in Redis, not yet in PostgreSQL.
    r = aioredis.Redis.from_url(redis_url)
    try:
        assert await r.get(f"{redis_prefix}apikey:lastused:{issued.key_id}") is not None
    finally:
        await r.aclose()
    assert await pool.fetchval("SELECT last_used_time FROM api_keys WHERE key_id = $1", issued.key_id) is None
    written = await keys_app.extras["api_keys"].flush_last_used()  # type: ignore[attr-defined]
    assert written == 1
    assert await pool.fetchval("SELECT last_used_time FROM api_keys WHERE key_id = $1", issued.key_id) is not None


# -- data keys ------------------------------------------------------------------------------------------


async def test_data_key_round_trip(keys_app: App, certs: CertBundle) -> None:
    for caller in ("messaging", "identity"):
        ch, stub = stub_as(certs, caller, keys_app)
        async with ch:
            gen = await stub.GenerateDataKey(pb.GenerateDataKeyRequest(account_id=900))
            assert len(gen.plaintext) == 32 and gen.key_version == 1 and gen.plaintext not in gen.wrapped_key
            dec = await stub.DecryptDataKey(pb.DecryptDataKeyRequest(account_id=900, wrapped_key=gen.wrapped_key))
            assert (dec.plaintext, dec.key_version) == (gen.plaintext, 1)
    pool: asyncpg.Pool = keys_app.extras["pool"]  # type: ignore[assignment]
    async with pool.acquire() as conn:
        import io

        buf = io.BytesIO()
        await conn.copy_from_table("account_kek_versions", output=buf, format="binary")
    assert gen.plaintext not in buf.getvalue()
    assert await pool.fetchval("SELECT count(*) FROM account_kek_versions WHERE account_id = 900") == 1


async def test_data_key_refused_for_another_account_or_tampered(keys_app: App, certs: CertBundle) -> None:
    ch, stub = stub_as(certs, "messaging", keys_app)
    async with ch:
        gen = await stub.GenerateDataKey(pb.GenerateDataKeyRequest(account_id=901))
        await stub.GenerateDataKey(pb.GenerateDataKeyRequest(account_id=902))
        bad_arg, precondition = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION
        cases = [
            (902, gen.wrapped_key, bad_arg, "KEY_ACCOUNT_MISMATCH"),
            (903, gen.wrapped_key, bad_arg, "KEY_ACCOUNT_MISMATCH"),
            (901, gen.wrapped_key[:-1] + bytes([gen.wrapped_key[-1] ^ 1]), bad_arg, "DECRYPT_FAILED"),
            (901, gen.wrapped_key[:1] + (9).to_bytes(4, "big") + gen.wrapped_key[5:], precondition,
             "KEY_VERSION_UNKNOWN"),
            (901, b"junk", bad_arg, "DECRYPT_FAILED"),
        ]
        for account, wrapped, code, reason in cases:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.DecryptDataKey(pb.DecryptDataKeyRequest(account_id=account, wrapped_key=wrapped))
            assert (info.value.code(), _reason(info.value)) == (code, reason)
            assert gen.plaintext.hex() not in (info.value.details() or "")


async def test_envelope_over_the_real_service(keys_app: App, certs: CertBundle) -> None:
    ch, stub = stub_as(certs, "messaging", keys_app)
    async with ch:
        writer = Envelope(KeysStubSource(stub))
        aad = aad_for(1001, "message", "m-1")
        blobs = await writer.encrypt_many(1001, [(aad, b"hello"), (aad_for(1001, "message", "m-2"), b"world")])
        blob = await writer.encrypt(1001, aad, b"hello again")
        assert b"hello" not in blobs[0]
        reader = Envelope(KeysStubSource(stub))  # another process: no cached keys
        assert await reader.decrypt(1001, aad, blobs[0]) == b"hello"
        assert await reader.decrypt(1001, aad_for(1001, "message", "m-2"), blobs[1]) == b"world"
        assert await reader.decrypt(1001, aad, blob) == b"hello again"
        with pytest.raises(DecryptFailed):
            await reader.decrypt(1001, aad_for(1001, "message", "m-2"), blobs[0])  # wrong record
        await writer.encrypt(1002, aad_for(1002, "message", "x"), b"make 1002 a key ring")
        with pytest.raises(DecryptFailed):
            await Envelope(KeysStubSource(stub)).decrypt(1002, aad, blobs[0])  # other account: keys service says no
        with pytest.raises(DecryptFailed):
            await Envelope(KeysStubSource(stub)).decrypt(1003, aad, blobs[0])  # account without keys


# -- no secret in logs or traces ---------------------------------------------------------------------------


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for servers started after this fixture (request it before `keys_app`)."""
    from svckit.telemetry import setup_tracing

    exporter = InMemorySpanExporter()
    setup_tracing("keys", [SimpleSpanProcessor(exporter)])
    yield exporter
    exporter.shutdown()  # the processor stays attached to the global provider; stop collecting


async def test_no_secret_in_logs_or_spans(
    spans: InMemorySpanExporter, keys_app: App, audit_app: App, certs: CertBundle, caplog: pytest.LogCaptureFixture,
    clock: keys_conftest.Clock,
) -> None:
    """Every path that handles a secret (issue, create, roll, verify ok/failed, leak report, data keys,
    encrypt/decrypt, rewrap, rotation, destruction): no key, secret or plaintext in a log line, a span
    attribute or event, or any byte the audit log stores."""
    caplog.set_level(logging.DEBUG)
    account = secrets.randbelow(10**9) + 10**6
    issued = await _issue(certs, keys_app, account_id=account)
    parts = parse_api_key(issued.api_key)
    assert parts is not None
    user = principal_pb2.Principal(account_id=account, user_id=7, permissions=["sms.send", "api_keys.write"],
                                   auth_method=principal_pb2.AUTH_METHOD_SESSION, mfa_time=stepped_up_now())
    as_user = (("x-sendsafe-principal-bin", user.SerializeToString()),)
    small_secret = secrets.token_hex(16).encode()
    ch, stub = stub_as(certs, "gateway", keys_app)
    async with ch:
        await stub.VerifyApiKey(pb.VerifyApiKeyRequest(api_key=issued.api_key))
        with pytest.raises(grpc.aio.AioRpcError):
            wrong_last = "1" if issued.api_key.endswith("0") else "0"  # always a different key
            await stub.VerifyApiKey(pb.VerifyApiKeyRequest(api_key=issued.api_key[:-1] + wrong_last))
        created = await stub.CreateApiKey(
            pb.CreateApiKeyRequest(name="ci", scopes=["sms.send"], allowed_cidrs=["10.0.0.0/8"]), metadata=as_user
        )
        with pytest.raises(grpc.aio.AioRpcError):  # refused from outside its allow-list
            await stub.VerifyApiKey(pb.VerifyApiKeyRequest(api_key=created.secret, client_address="192.0.2.1"))
        rolled = await stub.RollApiKey(pb.RollApiKeyRequest(key_id=created.api_key.key_id), metadata=as_user)
        with pytest.raises(grpc.aio.AioRpcError):  # the old key, rolled with no overlap: expired
            await stub.VerifyApiKey(pb.VerifyApiKeyRequest(api_key=created.secret, client_address="10.0.0.1"))
    ch, stub = stub_as(certs, "ops", keys_app)
    async with ch:
        await stub.ReportLeakedApiKeys(pb.ReportLeakedApiKeysRequest(candidates=[rolled.secret], source="test"))
    ch, stub = stub_as(certs, "messaging", keys_app)
    async with ch:
        gen = await stub.GenerateDataKey(pb.GenerateDataKeyRequest(account_id=account))
        await stub.DecryptDataKey(pb.DecryptDataKeyRequest(account_id=account, wrapped_key=gen.wrapped_key))
        ct = await stub.Encrypt(pb.EncryptRequest(account_id=account, plaintext=small_secret))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Decrypt(pb.DecryptRequest(account_id=account, ciphertext=ct.ciphertext,
                                                 encryption_context={"wrong": "context"}))
    ch, stub = stub_as(certs, "ops", keys_app)
    async with ch:
        await stub.RotateAccountKey(pb.RotateAccountKeyRequest(account_id=account))
        ch2, mstub = stub_as(certs, "messaging", keys_app)
        async with ch2:
            await mstub.Rewrap(pb.RewrapRequest(account_id=account, items=[
                pb.RewrapItem(reference="1", blob=gen.wrapped_key), pb.RewrapItem(reference="2", blob=ct.ciphertext)]))
        await stub.ScheduleAccountKeyDestruction(
            pb.ScheduleAccountKeyDestructionRequest(account_id=account, pending_window_seconds=60))
        clock.advance(seconds=61)
        assert (await stub.RunKeyMaintenance(pb.RunKeyMaintenanceRequest())).destroyed_accounts == 1
    await keys_app.extras["api_keys"].flush_last_used()  # type: ignore[attr-defined]
    await keys_app.extras["audit"].flush()  # type: ignore[attr-defined]
    finished = spans.get_finished_spans()
    assert any(s.name.endswith("VerifyApiKey") for s in finished)  # the server was traced
    assert any(s.name.endswith("RollApiKey") for s in finished)
    dump = caplog.text + "\n".join(
        f"{s.name} {dict(s.attributes or {})} {[(e.name, dict(e.attributes or {})) for e in s.events]}"
        for s in finished
    )
    audit_bytes = await _all_stored_audit_bytes(audit_app)
    assert b"keys.account_keys.destroyed" in audit_bytes and created.api_key.key_id.encode() in audit_bytes
    needles = [parts.secret, issued.api_key, created.secret, rolled.secret, gen.plaintext.hex(), ROOT_KEY.hex(),
               base64.b64encode(gen.plaintext).decode(), small_secret.decode(), base64.b64encode(small_secret).decode()]
    for secret in (created.secret, rolled.secret):
        needles.append(parse_api_key(secret).secret)  # type: ignore[union-attr]
    binary = [gen.plaintext, ROOT_KEY]
    for needle in needles:
        assert needle not in dump, needle[:4]
        assert needle.encode() not in audit_bytes, needle[:4]
    for raw in binary:
        assert raw.decode("latin-1") not in dump
        assert raw not in audit_bytes
