"""Keys' own rewrap pass, with the real keys service over mTLS and PostgreSQL: the numbers of an API key's
sender limit are sealed under the account's key (keys migration 0007), so retiring the version they are under
used to go through and then fail that key's verification. Now keys rewraps them itself and reports as the
data owner "keys": retirement is refused (REWRAP_INCOMPLETE, naming keys) until keys' pass has moved them,
then it succeeds and the key still verifies with its whole sender limit, which still bounds keys made with it."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import grpc
import pytest
from google.protobuf import timestamp_pb2

from sendsafe.keys.v1 import keys_service_pb2 as pb
from sendsafe.keys.v1 import keys_service_pb2_grpc
from services.keys.domain.envelope import parse_blob
from svckit.app import App
from svckit.rpcstatus import error_reason
from tests.conftest import channel_as
from tests.integration.keys.test_keys_in_depth import as_user
from tests.support import CertBundle, NewDatabase

PERMS = ("sms.send", "api_keys.read", "api_keys.write")
Stub = keys_service_pb2_grpc.KeysServiceStub


@pytest.fixture
async def owned_keys(
    certs: CertBundle, new_database: NewDatabase, audit_app: App, redis_url: str, redis_prefix: str
) -> AsyncIterator[tuple[App, str]]:
    """A keys service whose retirements are checked against a data owner (messaging) - and so against its own
    sealed items too - on a database of its own (usage reports are not emptied between the module's tests)."""
    from services.keys.app import build
    from services.keys.config import Settings

    tls = certs.tls("keys")
    dsn = await new_database("keysown")
    app = await build(Settings(
        tls_cert_file=tls.cert, tls_key_file=tls.key, tls_ca_file=tls.ca, database_url=dsn, redis_url=redis_url,
        redis_prefix=redis_prefix, audit_addr=f"127.0.0.1:{audit_app.port}", root_key=os.urandom(32).hex(),
        rewrap_services="messaging", maintenance_seconds=3600, last_used_flush_seconds=3600,
    ))
    yield app, dsn
    await app.stop()


async def _numbers_version(dsn: str, key_id: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        blob = await conn.fetchval("SELECT send_sender_numbers_ct FROM api_keys WHERE key_id = $1", key_id)
    finally:
        await conn.close()
    return parse_blob(bytes(blob)).version


async def _messaging_reports_nothing(messaging: Stub) -> None:
    """Messaging holds nothing of the account: it says so after a pass that started now."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.now(UTC))
    assert (await messaging.ReportKeyUsage(pb.ReportKeyUsageRequest(pass_start_time=stamp))).accepted


async def test_retire_waits_for_keys_own_rewrap_and_the_limited_key_keeps_working(
    owned_keys: tuple[App, str], certs: CertBundle
) -> None:
    app, dsn = owned_keys
    account = 60_000 + uuid.uuid4().int % 10_000
    async with (
        channel_as(certs, "gateway", app.port, "keys") as gw_ch,
        channel_as(certs, "ops", app.port, "keys") as ops_ch,
        channel_as(certs, "messaging", app.port, "keys") as msg_ch,
    ):
        gw, ops, messaging = Stub(gw_ch), Stub(ops_ch), Stub(msg_ch)
        made = await gw.CreateApiKey(pb.CreateApiKeyRequest(
            name="own number only", scopes=["*"],
            send_limits=pb.SendLimits(allowed_senders=["+61411111111", "Brand"])), metadata=as_user(account, 1, PERMS))
        key_id = made.api_key.key_id
        assert await _numbers_version(dsn, key_id) == 1

        assert (await ops.RotateAccountKey(pb.RotateAccountKeyRequest(account_id=account))).status.current_version == 2
        await _messaging_reports_nothing(messaging)
        retire = pb.SetAccountKeyPolicyRequest(account_id=account, min_decryption_version=2)
        # Refused: keys' own pass has not run since version 2 exists (and then: its one sealed item is below).
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await ops.SetAccountKeyPolicy(retire)
        assert (refused.value.code(), error_reason(refused.value)) == (
            grpc.StatusCode.FAILED_PRECONDITION, "REWRAP_INCOMPLETE")
        details = refused.value.details() or ""
        assert re.search(r"keys: (no rewrap pass reported yet|.*no rewrap pass has finished)", details), details
        assert "messaging" not in details

        report = await app.extras["rewrap"]()  # what the KEYS_REWRAP_SECONDS loop runs
        assert (report.changed, report.failed, report.skipped) == (1, 0, 0)
        assert await _numbers_version(dsn, key_id) == 2
        status = (await ops.SetAccountKeyPolicy(retire)).status
        assert status.min_decryption_version == 2

        # The key still verifies, with its whole limit (the sealed number opens under version 2)...
        verified = await gw.VerifyApiKey(pb.VerifyApiKeyRequest(api_key=made.secret))
        assert verified.key_id == key_id
        assert list(verified.send_limits.allowed_senders) == ["+61411111111", "Brand"]
        # ...and the limit still bounds what is made with the key: inside it is accepted, outside refused.
        via_key = as_user(account, 1, PERMS, key_id=key_id)
        child = await gw.CreateApiKey(pb.CreateApiKeyRequest(
            name="child", scopes=["sms.send"], send_limits=pb.SendLimits(allowed_senders=["+61411111111"])),
            metadata=via_key)
        assert list(child.api_key.send_limits.allowed_senders) == ["+61411111111"]
        with pytest.raises(grpc.aio.AioRpcError) as wider:
            await gw.CreateApiKey(pb.CreateApiKeyRequest(
                name="wider", scopes=["sms.send"], send_limits=pb.SendLimits(allowed_senders=["+61422222222"])),
                metadata=via_key)
        assert error_reason(wider.value) == "EXCEEDS_CALLING_KEY"

        # A later rotation: the next retirement again waits for keys' pass, naming what its last one counted.
        await ops.RotateAccountKey(pb.RotateAccountKeyRequest(account_id=account))
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await ops.SetAccountKeyPolicy(pb.SetAccountKeyPolicyRequest(account_id=account, min_decryption_version=3))
        assert "keys: 1 items below version 3 at its last pass" in (again.value.details() or ""), again.value.details()
        assert (await app.extras["rewrap"]()).changed == 2  # the key and its child
        await _messaging_reports_nothing(messaging)
        assert await _numbers_version(dsn, key_id) == 3
        assert (await ops.SetAccountKeyPolicy(pb.SetAccountKeyPolicyRequest(
            account_id=account, min_decryption_version=3))).status.min_decryption_version == 3
        assert list((await gw.VerifyApiKey(pb.VerifyApiKeyRequest(api_key=made.secret))).send_limits.allowed_senders
                    ) == ["+61411111111", "Brand"]


async def test_keys_own_pass_skips_a_closing_account_and_moves_the_others(
    owned_keys: tuple[App, str], certs: CertBundle
) -> None:
    app, dsn = owned_keys
    closing, other = (70_000 + uuid.uuid4().int % 10_000 * 2 + i for i in range(2))
    async with (
        channel_as(certs, "gateway", app.port, "keys") as gw_ch,
        channel_as(certs, "ops", app.port, "keys") as ops_ch,
    ):
        gw, ops = Stub(gw_ch), Stub(ops_ch)
        made = {}
        for account in (closing, other):
            made[account] = (await gw.CreateApiKey(pb.CreateApiKeyRequest(
                name="limited", scopes=["*"], send_limits=pb.SendLimits(allowed_senders=["+61411111111"])),
                metadata=as_user(account, 1, PERMS))).api_key.key_id
            await ops.RotateAccountKey(pb.RotateAccountKeyRequest(account_id=account))
        await ops.ScheduleAccountKeyDestruction(pb.ScheduleAccountKeyDestructionRequest(
            account_id=closing, pending_window_seconds=7 * 86_400))

        report = await app.extras["rewrap"]()
        assert report.refused == {closing: "KEYS_PENDING_DESTRUCTION"}
        assert (report.skipped, report.failed) == (1, 0)
        assert report.usage[(closing, 1)] == 1  # still counted where it is
        assert await _numbers_version(dsn, made[closing]) == 1
        assert await _numbers_version(dsn, made[other]) == 2
