"""Keys in depth over real mTLS, PostgreSQL, Redis and the audit service: customer API keys (scopes, allow-lists,
rolls to the second), key rings (clear decrypt failures, rewrap, retirement, destruction with a signed receipt),
key notices reaching the callers' envelope caches."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2

from sendsafe.audit.v1 import audit_service_pb2, audit_service_pb2_grpc, event_pb2
from sendsafe.context.v1 import principal_pb2
from sendsafe.keys.v1 import keys_service_pb2 as pb
from sendsafe.keys.v1 import keys_service_pb2_grpc
from services.keys.domain.receipts import verify_receipt
from svckit.app import App
from svckit.envelope import DecryptFailed, Envelope, KeysStubSource, aad_for
from svckit.envelope_rewrap import rewrap_all
from svckit.keyevents import KeyNotice, Subscriber
from svckit.redisconn import make_redis
from svckit.rpcstatus import error_reason as _reason
from tests.conftest import channel_as
from tests.integration.keys.conftest import Clock
from tests.support import CertBundle, stepped_up_now

PERMS = ("sms.send", "sms.read", "api_keys.read", "api_keys.write", "audit.read")
Stub = keys_service_pb2_grpc.KeysServiceStub




def as_user(account: int, user: int = 1, perms: tuple[str, ...] = PERMS, key_id: str = "") -> tuple[tuple[str, bytes]]:
    """Metadata of a gateway call on behalf of a customer (a session, or an API key when `key_id`)."""
    method = principal_pb2.AUTH_METHOD_API_KEY if key_id else principal_pb2.AUTH_METHOD_SESSION
    p = principal_pb2.Principal(account_id=account, user_id=user, permissions=list(perms), auth_method=method,
                                api_key_id=key_id, client_address="203.0.113.5")
    if not key_id:  # a session that has just stepped up (privileged calls need it: every service's guard checks)
        p.mfa_time.CopyFrom(stepped_up_now())
    return (("x-sendsafe-principal-bin", p.SerializeToString()),)


@pytest.fixture
async def stubs(keys_app: App, certs: CertBundle) -> AsyncIterator[dict[str, Stub]]:
    channels = {c: channel_as(certs, c, keys_app.port, "keys") for c in ("gateway", "identity", "messaging", "ops")}
    yield {c: Stub(ch) for c, ch in channels.items()}
    for ch in channels.values():
        await ch.close()


async def _refused(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code(), _reason(info.value)


async def _events(audit_app: App, certs: CertBundle, account: int, action: str) -> list[event_pb2.Event]:
    principal = principal_pb2.Principal(account_id=account, user_id=1, permissions=["audit.read"])
    async with channel_as(certs, "gateway", audit_app.port, "audit") as ch:
        resp = await audit_service_pb2_grpc.AuditServiceStub(ch).ListEvents(
            audit_service_pb2.ListEventsRequest(action=action, page_size=500),
            metadata=(("x-sendsafe-principal-bin", principal.SerializeToString()),),
        )
    return list(resp.events)


def _ts(clock: Clock, **delta: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(clock.now + timedelta(**delta))
    return ts


# -- customer API keys -----------------------------------------------------------------------------------------


async def test_customer_key_lifecycle(stubs: dict[str, Stub], clock: Clock) -> None:
    gw = stubs["gateway"]
    made = await gw.CreateApiKey(
        pb.CreateApiKeyRequest(
            name="billing job", scopes=["sms.send", "sms.read"], allowed_cidrs=["203.0.113.0/24"],
            send_limits=pb.SendLimits(messages_per_minute=10, messages_per_day=100, allowed_countries=["au"]),
        ),
        metadata=as_user(70, 3),
    )
    key = made.api_key
    assert made.secret.startswith(key.prefix) and key.prefix == f"ss_live_{key.key_id}_"
    assert (key.state, key.user_id, list(key.scopes)) == (pb.API_KEY_STATE_ACTIVE, 3, ["sms.read", "sms.send"])
    assert list(key.send_limits.allowed_countries) == ["AU"] and list(key.allowed_cidrs) == ["203.0.113.0/24"]
    assert key.expire_time.ToDatetime().date() == (clock.now + timedelta(days=90)).date()
    verified = await gw.VerifyApiKey(pb.VerifyApiKeyRequest(api_key=made.secret, client_address="203.0.113.77"))
    assert (verified.account_id, verified.user_id, verified.send_limits.messages_per_minute) == (70, 3, 10)
    assert verified.valid_for_seconds == pytest.approx(90 * 86400)
    assert await _refused(gw.VerifyApiKey(pb.VerifyApiKeyRequest(api_key=made.secret, client_address="198.51.100.1"))
                          ) == (grpc.StatusCode.PERMISSION_DENIED, "API_KEY_ADDRESS_NOT_ALLOWED")
    listed = await gw.ListApiKeys(pb.ListApiKeysRequest(), metadata=as_user(70, 3))
    assert [k.key_id for k in listed.api_keys] == [key.key_id] and made.secret not in str(listed)
    assert (await gw.ListApiKeys(pb.ListApiKeysRequest(), metadata=as_user(70, 4))).api_keys == []
    assert await _refused(gw.GetApiKey(pb.GetApiKeyRequest(key_id=key.key_id), metadata=as_user(71, 3))) == (
        grpc.StatusCode.NOT_FOUND, "API_KEY_NOT_FOUND")
    # Last use (time and address) is written back in a batch, not per request.
    assert not (await gw.GetApiKey(pb.GetApiKeyRequest(key_id=key.key_id), metadata=as_user(70, 3))).api_key.HasField(
        "last_used_time")
    revoked = await gw.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=key.key_id), metadata=as_user(70, 3))
    assert revoked.api_key.state == pb.API_KEY_STATE_REVOKED
    assert await _refused(gw.VerifyApiKey(pb.VerifyApiKeyRequest(api_key=made.secret, client_address="203.0.113.7"))
                          ) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_REVOKED")


async def test_last_use_time_and_address(stubs: dict[str, Stub], keys_app: App) -> None:
    gw = stubs["gateway"]
    made = await gw.CreateApiKey(pb.CreateApiKeyRequest(name="x", scopes=["*"]), metadata=as_user(72))
    for _ in range(3):
        await gw.VerifyApiKey(pb.VerifyApiKeyRequest(api_key=made.secret, client_address="2001:db8::9"))
    assert await keys_app.extras["api_keys"].flush_last_used() == 1  # type: ignore[attr-defined]
    got = (await gw.GetApiKey(pb.GetApiKeyRequest(key_id=made.api_key.key_id), metadata=as_user(72))).api_key
    assert got.HasField("last_used_time") and got.last_used_address == "2001:db8::9"


async def test_scopes_and_permissions_are_enforced(stubs: dict[str, Stub]) -> None:
    gw = stubs["gateway"]
    create = gw.CreateApiKey
    assert await _refused(create(pb.CreateApiKeyRequest(name="x", scopes=["sms.sendd"]), metadata=as_user(73))) == (
        grpc.StatusCode.INVALID_ARGUMENT, "SCOPE_INVALID")
    mine = ("sms.send", "api_keys.write")
    assert await _refused(create(pb.CreateApiKeyRequest(name="x", scopes=["audit.read"]),
                                 metadata=as_user(73, perms=mine))) == (grpc.StatusCode.PERMISSION_DENIED,
                                                                        "SCOPE_NOT_HELD")
    assert await _refused(create(pb.CreateApiKeyRequest(name="x", scopes=["sms.send"]),
                                 metadata=as_user(73, perms=("sms.send",)))) == (grpc.StatusCode.PERMISSION_DENIED,
                                                                                 "MISSING_PERMISSION")
    parent = await create(pb.CreateApiKeyRequest(name="p", scopes=list(mine)), metadata=as_user(73, perms=mine))
    via_key = as_user(73, perms=mine, key_id=parent.api_key.key_id)
    assert await _refused(create(pb.CreateApiKeyRequest(name="c", scopes=["*"]), metadata=via_key)) == (
        grpc.StatusCode.PERMISSION_DENIED, "EXCEEDS_CALLING_KEY")
    child = await create(pb.CreateApiKeyRequest(name="c", scopes=["sms.send"]), metadata=via_key)
    assert child.api_key.created_by_key_id == parent.api_key.key_id
    assert child.api_key.expire_time == parent.api_key.expire_time
    with pytest.raises(grpc.aio.AioRpcError):
        await create(pb.CreateApiKeyRequest(name="x", scopes=["sms.send"], expire_time=_ts(Clock(), days=400)),
                     metadata=as_user(73))


@pytest.mark.parametrize("overlap", [0, 1])
async def test_roll_overlap_is_honoured_to_the_second(stubs: dict[str, Stub], clock: Clock, overlap: int) -> None:
    gw = stubs["gateway"]
    old = await gw.CreateApiKey(pb.CreateApiKeyRequest(name="prod", scopes=["sms.send"]), metadata=as_user(74))
    rolled_at = clock.advance(hours=2)
    rolled = await gw.RollApiKey(pb.RollApiKeyRequest(key_id=old.api_key.key_id, overlap_seconds=overlap),
                                 metadata=as_user(74))
    assert rolled.previous.expire_time.ToDatetime(tzinfo=rolled_at.tzinfo) == rolled_at + timedelta(seconds=overlap)
    assert rolled.api_key.rolled_from_key_id == old.api_key.key_id
    assert rolled.previous.rolled_to_key_id == rolled.api_key.key_id

    async def verify(secret: str) -> pb.VerifyApiKeyResponse:
        return await gw.VerifyApiKey(pb.VerifyApiKeyRequest(api_key=secret, client_address="203.0.113.1"))

    assert (await verify(rolled.secret)).key_id == rolled.api_key.key_id  # the new key works at once
    if overlap:
        clock.now = rolled_at + timedelta(seconds=overlap, microseconds=-1)
        still = await verify(old.secret)  # the old key: until the last microsecond of the overlap
        assert still.valid_for_seconds == pytest.approx(1e-6, abs=1e-6)
    clock.now = rolled_at + timedelta(seconds=overlap)
    assert await _refused(verify(old.secret)) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_EXPIRED")
    assert (await verify(rolled.secret)).key_id == rolled.api_key.key_id
    assert await _refused(gw.RollApiKey(pb.RollApiKeyRequest(key_id=old.api_key.key_id), metadata=as_user(74))) == (
        grpc.StatusCode.FAILED_PRECONDITION, "API_KEY_ALREADY_ROLLED")


async def test_check_api_key_follows_rolls_but_not_revocations(stubs: dict[str, Stub], clock: Clock) -> None:
    """Messaging re-checks the key an alert rule was set with (CheckApiKey): a rolled key stands through its
    successor once its overlap is over; a revocation anywhere along the chain, an expiry without a roll, or
    another user's or account's key does not stand."""
    gw, msg = stubs["gateway"], stubs["messaging"]

    async def check(key_id: str, account: int = 77, user: int = 1) -> tuple[bool, str, list[str]]:
        got = await msg.CheckApiKey(pb.CheckApiKeyRequest(account_id=account, user_id=user, key_id=key_id))
        return got.active, got.key_id, list(got.scopes)

    old = (await gw.CreateApiKey(pb.CreateApiKeyRequest(name="ops", scopes=["sms.send", "audit.read"]),
                                 metadata=as_user(77))).api_key
    assert await check(old.key_id) == (True, old.key_id, ["audit.read", "sms.send"])
    assert await check(old.key_id, user=2) == (False, "", [])  # another user's key stands for nobody
    assert await check(old.key_id, account=78) == (False, "", [])
    assert await _refused(gw.CheckApiKey(pb.CheckApiKeyRequest(account_id=77, user_id=1, key_id=old.key_id))) == (
        grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED")
    assert await _refused(msg.CheckApiKey(pb.CheckApiKeyRequest(account_id=77, user_id=1, key_id="nope"))) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")

    new = (await gw.RollApiKey(pb.RollApiKeyRequest(key_id=old.key_id, overlap_seconds=60),
                               metadata=as_user(77))).api_key
    assert (await check(old.key_id))[1] == old.key_id  # still itself during the overlap
    clock.advance(seconds=61)
    assert await check(old.key_id) == (True, new.key_id, ["audit.read", "sms.send"])  # then its successor
    await gw.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=new.key_id), metadata=as_user(77))
    assert await check(old.key_id) == (False, "", [])

    # Rolled, then the old key revoked during the overlap: revoking says that credential is dead.
    old = (await gw.CreateApiKey(pb.CreateApiKeyRequest(name="b", scopes=["*"]), metadata=as_user(77))).api_key
    new = (await gw.RollApiKey(pb.RollApiKeyRequest(key_id=old.key_id, overlap_seconds=60),
                               metadata=as_user(77))).api_key
    await gw.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=old.key_id), metadata=as_user(77))
    assert await check(old.key_id) == (False, "", [])
    assert await check(new.key_id) == (True, new.key_id, ["*"])
    # Expired without a roll.
    short = (await gw.CreateApiKey(pb.CreateApiKeyRequest(name="c", scopes=["sms.send"],
                                                          expire_time=_ts(clock, hours=1)),
                                   metadata=as_user(77))).api_key
    clock.advance(hours=1)
    assert await check(short.key_id) == (False, "", [])


async def test_leak_report_revokes(stubs: dict[str, Stub]) -> None:
    made = await stubs["gateway"].CreateApiKey(pb.CreateApiKeyRequest(name="x", scopes=["*"]), metadata=as_user(75))
    assert await _refused(stubs["identity"].ReportLeakedApiKeys(pb.ReportLeakedApiKeysRequest())) == (
        grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED")
    report = await stubs["ops"].ReportLeakedApiKeys(
        pb.ReportLeakedApiKeysRequest(candidates=[made.secret, "ss_live_garbage"], source="https://gist.example/1")
    )
    assert (list(report.revoked_key_ids), report.not_keys) == ([made.api_key.key_id], 1)
    assert await _refused(stubs["gateway"].VerifyApiKey(pb.VerifyApiKeyRequest(api_key=made.secret))) == (
        grpc.StatusCode.UNAUTHENTICATED, "API_KEY_REVOKED")


# -- key management -------------------------------------------------------------------------------------------


async def test_internal_rpcs_admit_only_their_callers(stubs: dict[str, Stub]) -> None:
    denied = [
        stubs["gateway"].Encrypt(pb.EncryptRequest(account_id=1, plaintext=b"x")),
        stubs["ops"].Decrypt(pb.DecryptRequest(account_id=1, ciphertext=b"x")),
        stubs["messaging"].RotateAccountKey(pb.RotateAccountKeyRequest(account_id=1)),
        stubs["identity"].RunKeyMaintenance(pb.RunKeyMaintenanceRequest()),
        stubs["messaging"].ScheduleAccountKeyDestruction(pb.ScheduleAccountKeyDestructionRequest(account_id=1)),
        stubs["gateway"].Rewrap(pb.RewrapRequest(account_id=1)),
        stubs["identity"].CreateApiKey(pb.CreateApiKeyRequest(name="x", scopes=["*"]), metadata=as_user(1)),
    ]
    for call in denied:
        assert await _refused(call) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED")


async def test_decrypt_failures_are_clear(stubs: dict[str, Stub], clock: Clock) -> None:
    """Tampered ciphertext, wrong associated data, wrong account, retired version, destroyed keys: each fails to
    decrypt, with a reason that says which."""
    svc, ops = stubs["identity"], stubs["ops"]
    ctx = {"purpose": "totp", "user_id": "8"}
    ct = (await svc.Encrypt(pb.EncryptRequest(account_id=80, plaintext=b"JBSWY3DP", encryption_context=ctx)))
    dk = await svc.GenerateDataKey(pb.GenerateDataKeyRequest(account_id=80, encryption_context=ctx))
    await svc.GenerateDataKey(pb.GenerateDataKeyRequest(account_id=81))
    assert (await svc.Decrypt(pb.DecryptRequest(account_id=80, ciphertext=ct.ciphertext, encryption_context=ctx))
            ).plaintext == b"JBSWY3DP"

    def decrypt(account: int, blob: bytes, context: dict[str, str]) -> object:
        return svc.Decrypt(pb.DecryptRequest(account_id=account, ciphertext=blob, encryption_context=context))

    def unwrap(account: int, blob: bytes, context: dict[str, str]) -> object:
        return svc.DecryptDataKey(pb.DecryptDataKeyRequest(account_id=account, wrapped_key=blob,
                                                           encryption_context=context))

    tampered = ct.ciphertext[:-1] + bytes([ct.ciphertext[-1] ^ 1])
    bad_arg = grpc.StatusCode.INVALID_ARGUMENT
    assert await _refused(decrypt(80, tampered, ctx)) == (bad_arg, "DECRYPT_FAILED")
    assert await _refused(decrypt(80, ct.ciphertext, {**ctx, "user_id": "9"})) == (bad_arg, "DECRYPT_FAILED")
    assert await _refused(unwrap(80, dk.wrapped_key, {})) == (bad_arg, "DECRYPT_FAILED")
    assert await _refused(decrypt(81, ct.ciphertext, ctx)) == (bad_arg, "KEY_ACCOUNT_MISMATCH")
    assert await _refused(unwrap(81, dk.wrapped_key, ctx)) == (bad_arg, "KEY_ACCOUNT_MISMATCH")

    # Retired: rotate, raise the minimum decryption version.
    status = (await ops.RotateAccountKey(pb.RotateAccountKeyRequest(account_id=80))).status
    assert status.current_version == 2
    status = (await ops.SetAccountKeyPolicy(pb.SetAccountKeyPolicyRequest(account_id=80, min_decryption_version=2))
              ).status
    assert [v.state for v in status.versions] == [pb.KEY_VERSION_STATE_RETIRED, pb.KEY_VERSION_STATE_PRIMARY]
    precondition = grpc.StatusCode.FAILED_PRECONDITION
    assert await _refused(decrypt(80, ct.ciphertext, ctx)) == (precondition, "KEY_VERSION_RETIRED")
    assert await _refused(unwrap(80, dk.wrapped_key, ctx)) == (precondition, "KEY_VERSION_RETIRED")
    fresh = await svc.Encrypt(pb.EncryptRequest(account_id=80, plaintext=b"new", encryption_context=ctx))
    assert fresh.key_version == 2

    # Destroyed: schedule (everything fails while pending), wait out the window, maintenance destroys.
    await svc.ScheduleAccountKeyDestruction(pb.ScheduleAccountKeyDestructionRequest(account_id=80,
                                                                                    pending_window_seconds=60))
    assert await _refused(decrypt(80, fresh.ciphertext, ctx)) == (precondition, "KEYS_PENDING_DESTRUCTION")
    clock.advance(seconds=60)
    assert (await ops.RunKeyMaintenance(pb.RunKeyMaintenanceRequest())).destroyed_accounts == 1
    assert await _refused(decrypt(80, fresh.ciphertext, ctx)) == (precondition, "KEYS_DESTROYED")
    assert await _refused(unwrap(80, dk.wrapped_key, ctx)) == (precondition, "KEYS_DESTROYED")
    assert await _refused(svc.GenerateDataKey(pb.GenerateDataKeyRequest(account_id=80))) == (precondition,
                                                                                              "KEYS_DESTROYED")


async def test_destruction_leaves_a_signed_receipt(
    stubs: dict[str, Stub], keys_app: App, audit_app: App, certs: CertBundle, clock: Clock
) -> None:
    svc, ops = stubs["messaging"], stubs["ops"]
    for _ in range(2):
        await svc.GenerateDataKey(pb.GenerateDataKeyRequest(account_id=82))
        await ops.RotateAccountKey(pb.RotateAccountKeyRequest(account_id=82))
    assert await _refused(stubs["identity"].ScheduleAccountKeyDestruction(
        pb.ScheduleAccountKeyDestructionRequest(account_id=82, pending_window_seconds=59))) == (
        grpc.StatusCode.INVALID_ARGUMENT, "KEY_POLICY_INVALID")
    scheduled = (await stubs["identity"].ScheduleAccountKeyDestruction(
        pb.ScheduleAccountKeyDestructionRequest(account_id=82, pending_window_seconds=3600))).status
    assert scheduled.state == pb.ACCOUNT_KEY_STATE_PENDING_DESTRUCTION
    await stubs["identity"].CancelAccountKeyDestruction(pb.CancelAccountKeyDestructionRequest(account_id=82))
    await svc.GenerateDataKey(pb.GenerateDataKeyRequest(account_id=82))  # works again
    await stubs["identity"].ScheduleAccountKeyDestruction(
        pb.ScheduleAccountKeyDestructionRequest(account_id=82, pending_window_seconds=3600))
    clock.advance(seconds=3599)
    assert (await ops.RunKeyMaintenance(pb.RunKeyMaintenanceRequest())).destroyed_accounts == 0
    clock.advance(seconds=1)
    assert (await ops.RunKeyMaintenance(pb.RunKeyMaintenanceRequest())).destroyed_accounts == 1
    status = (await ops.GetAccountKeyStatus(pb.GetAccountKeyStatusRequest(account_id=82))).status
    assert status.state == pb.ACCOUNT_KEY_STATE_DESTROYED
    assert [v.state for v in status.versions] == [pb.KEY_VERSION_STATE_DESTROYED] * 3
    pool = keys_app.extras["pool"]
    assert await pool.fetchval(  # type: ignore[attr-defined]
        "SELECT count(*) FROM account_kek_versions WHERE account_id = 82 AND wrapped_kek IS NOT NULL") == 0
    # The receipt is in the account's own audit feed, signed by a key the API publishes.
    (ev,) = await _events(audit_app, certs, 82, "keys.account_keys.destroyed")
    receipt = json.loads(ev.details["receipt"])
    assert receipt["account_id"] == "82" and [v["version"] for v in receipt["destroyed_key_versions"]] == [1, 2, 3]
    assert receipt["requested_by"] == "identity"
    keys = (await stubs["gateway"].ListReceiptSigningKeys(pb.ListReceiptSigningKeysRequest(),
                                                          metadata=as_user(82))).keys
    (signer,) = [k for k in keys if k.key_id == ev.details["signing_key_id"]]
    assert signer.algorithm == "ed25519"
    signature = base64.b64decode(ev.details["signature"])
    assert verify_receipt(signer.public_key, ev.details["receipt"].encode(), signature)
    assert not verify_receipt(signer.public_key, ev.details["receipt"].replace("82", "83").encode(), signature)


async def test_rewrap_preserves_plaintext(stubs: dict[str, Stub]) -> None:
    """Rewrap through the RPC (wrapped keys and ciphertexts) and through svckit.envelope over a caller's table."""
    svc, ops = stubs["messaging"], stubs["ops"]
    writer = Envelope(KeysStubSource(svc), ttl_seconds=0)  # a fresh data key per message: many to rewrap
    table = {}
    for row in range(1, 13):
        account = 90 + row % 2
        table[row] = (account, await writer.encrypt(account, aad_for(account, "message", str(row)), b"body %d" % row))
    small = await svc.Encrypt(pb.EncryptRequest(account_id=90, plaintext=b"small", encryption_context={"a": "1"}))
    for account in (90, 91):
        await ops.RotateAccountKey(pb.RotateAccountKeyRequest(account_id=account))
    resp = await svc.Rewrap(pb.RewrapRequest(account_id=90, items=[
        pb.RewrapItem(reference="small", blob=small.ciphertext, encryption_context={"a": "1"}),
        pb.RewrapItem(reference="wrong", blob=small.ciphertext, encryption_context={"a": "2"}),
    ]))
    assert resp.current_version == 2
    ok, wrong = resp.results
    assert (ok.changed, ok.key_version, wrong.error_reason, wrong.blob) == (True, 2, "DECRYPT_FAILED", b"")
    assert (await svc.Decrypt(pb.DecryptRequest(account_id=90, ciphertext=ok.blob, encryption_context={"a": "1"}))
            ) == pb.DecryptResponse(plaintext=b"small", key_version=2)

    async def fetch(after: int | None, limit: int) -> list[tuple[int, int, bytes]]:
        return [(k, a, b) for k, (a, b) in sorted(table.items()) if after is None or k > after][:limit]

    async def save(updates: list[tuple[int, bytes]]) -> None:
        for row, blob in updates:
            table[row] = (table[row][0], blob)

    progress = await rewrap_all(Envelope(KeysStubSource(svc)), fetch, save, batch=5)
    assert (progress.scanned, progress.changed, progress.failed) == (12, 12, 0)
    for account in (90, 91):
        await ops.SetAccountKeyPolicy(pb.SetAccountKeyPolicyRequest(account_id=account, min_decryption_version=2))
    reader = Envelope(KeysStubSource(svc))
    for row, (account, blob) in table.items():
        assert await reader.decrypt(account, aad_for(account, "message", str(row)), blob) == b"body %d" % row


async def test_envelope_caches_follow_key_notices(
    stubs: dict[str, Stub], redis_url: str, redis_prefix: str, clock: Clock
) -> None:
    """A caller's cached data keys go when the account's keys are rotated or destroyed (not after the TTL)."""
    svc, ops = stubs["messaging"], stubs["ops"]
    env = Envelope(KeysStubSource(svc), ttl_seconds=3600)
    redis = make_redis(redis_url)
    follower = env.follow(redis, redis_prefix)
    seen: list[KeyNotice] = []
    probe = Subscriber(redis, redis_prefix, on_notice=seen.append, on_resync=lambda: None)
    follower.start()
    probe.start()
    try:
        assert await follower.wait_ready() and await probe.wait_ready()
        aad = aad_for(95, "message", "m")
        blob = await env.encrypt(95, aad, b"cached")
        assert await env.decrypt(95, aad, blob) == b"cached"
        await ops.RotateAccountKey(pb.RotateAccountKeyRequest(account_id=95))
        await _until(lambda: len(seen) >= 1 and 95 not in env._current)
        second = await env.encrypt(95, aad, b"after rotation")  # a data key of the new version
        # blob: version (1) | wrapped length (2) | wrapped key: format (1) | key version (4) | ...
        assert int.from_bytes(blob[4:8], "big") == 1 and int.from_bytes(second[4:8], "big") == 2
        await ops.ScheduleAccountKeyDestruction(pb.ScheduleAccountKeyDestructionRequest(
            account_id=95, pending_window_seconds=60))
        await _until(lambda: len(seen) >= 2)
        with pytest.raises(DecryptFailed) as info:  # the cached key is gone: the keys service says why
            await env.decrypt(95, aad, blob)
        assert info.value.reason == "KEYS_PENDING_DESTRUCTION"
    finally:
        await follower.close()
        await probe.close()
        await redis.aclose()


async def _until(condition: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.01)


def test_key_material_is_never_exportable() -> None:
    """No response of the keys service carries bytes other than data keys and the blobs that protect them."""
    allowed = {
        ("GenerateDataKeyResponse", "plaintext"), ("GenerateDataKeyResponse", "wrapped_key"),
        ("GenerateDataKeyWithoutPlaintextResponse", "wrapped_key"), ("DecryptDataKeyResponse", "plaintext"),
        ("EncryptResponse", "ciphertext"), ("DecryptResponse", "plaintext"), ("RewrapResult", "blob"),
        ("ReceiptSigningKey", "public_key"),
        # A destroyed account's signed receipt (public: it names versions and hashes of wrapped keys now gone).
        ("PurgeAccountKeysResponse", "receipt"), ("PurgeAccountKeysResponse", "signature"),
    }
    found = set()

    def walk(desc: object, seen: set[str]) -> None:
        if desc.full_name in seen:  # type: ignore[attr-defined]
            return
        seen.add(desc.full_name)  # type: ignore[attr-defined]
        for f in desc.fields:  # type: ignore[attr-defined]
            if f.type == f.TYPE_BYTES:
                found.add((desc.name, f.name))  # type: ignore[attr-defined]
            if f.message_type is not None:
                walk(f.message_type, seen)

    for method in pb.DESCRIPTOR.services_by_name["KeysService"].methods:
        walk(method.output_type, set())
    assert found == allowed


async def test_follow_key_notices_lives_with_the_service(stubs: dict[str, Stub], redis_url: str, redis_prefix: str
                                                         ) -> None:
    import contextlib

    from svckit.envelope import follow_key_notices

    env = Envelope(KeysStubSource(stubs["messaging"]), ttl_seconds=3600)
    async with contextlib.AsyncExitStack() as stack:
        follower = follow_key_notices(env, redis_url, redis_prefix, stack)
        assert await follower.wait_ready()
        await env.encrypt(96, aad_for(96, "m", "1"), b"x")
        await stubs["ops"].RotateAccountKey(pb.RotateAccountKeyRequest(account_id=96))
        await _until(lambda: 96 not in env._current)
    assert follower._task is None  # closed with the stack
