"""Key rotation -> retirement with the real keys, messaging and identity services over mTLS and PostgreSQL:
retiring a version is refused (REWRAP_INCOMPLETE, with how many items messaging holds below it) until the
data owners' rewrap passes have moved every stored blob to the new version; then it succeeds and every old
message, reply, idempotent answer and webhook secret still reads (issue 15)."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import grpc
import pytest

from sendsafe.keys.v1 import keys_service_pb2 as kpb
from sendsafe.keys.v1 import keys_service_pb2_grpc
from sendsafe.messaging.v1 import messaging_service_pb2 as pb
from services.messaging.adapters.store.rewrap import ENCRYPTED_COLUMNS
from services.messaging.config import Settings
from services.messaging.domain.settings import WEBHOOK_SECRET_RECORD
from svckit.app import App
from svckit.envelope import aad_for
from svckit.envelope_rewrap import kek_version
from tests.conftest import channel_as
from tests.integration.messaging.conftest import Messaging, principal_md
from tests.integration.messaging.test_api import REAL_NUMBER, eventually, reason_of, sms, stub_for
from tests.support import CertBundle
from tools.keyadmin import _run_or_explain as keyadmin
from tools.keyadmin import parser


async def _versions(m: Messaging, account_id: int) -> dict[str, list[int]]:
    """Key version of every blob messaging stores for the account, by table.column."""
    out: dict[str, list[int]] = {}
    for table, column, _ in ENCRYPTED_COLUMNS:
        blobs = await m.pool.fetch(
            f"SELECT {column} AS b FROM {table} WHERE account_id = $1 AND {column} IS NOT NULL", account_id)
        out[f"{table}.{column}"] = sorted(kek_version(bytes(r["b"])) for r in blobs)
    return out


def _ops(certs: CertBundle, keys_addr: str) -> tuple[grpc.aio.Channel, Any]:
    ch = channel_as(certs, "ops", int(keys_addr.rsplit(":", 1)[1]), "keys")
    return ch, keys_service_pb2_grpc.KeysServiceStub(ch)


async def _keyadmin(certs: CertBundle, keys_addr: str, *argv: str) -> int:
    return await keyadmin(parser().parse_args(["--keys", keys_addr, "--certs", str(certs.dir), *argv]))


async def test_retire_is_refused_until_rewrap_then_old_data_reads(
    messaging: Messaging, identity_app: App, keys_service: App, keys_addr: str, certs: CertBundle,
    capsys: pytest.CaptureFixture[str],
) -> None:
    account = 9800 + uuid.uuid4().int % 100
    await messaging.start_worker()
    md = principal_md(account, test_mode=True)
    replay = principal_md(account, test_mode=True, idempotency_key=f"k-{uuid.uuid4().hex}")
    ch, stub = stub_for(messaging, certs)
    ops_ch, ops = _ops(certs, keys_addr)
    async with ch, ops_ch:
        settings = await stub.UpdateMessagingSettings(  # type: ignore[attr-defined]
            pb.UpdateMessagingSettingsRequest(receipt_webhook_url="https://127.0.0.1:9/hook"), metadata=md)
        secret = settings.webhook_secret
        assert secret
        request = pb.SendSmsRequest(messages=[sms(REAL_NUMBER, f"old body {i}") for i in range(3)])  # type: ignore[attr-defined]
        sent = await stub.SendSms(request, metadata=replay)  # type: ignore[attr-defined]
        first = sent.messages[0].message_id
        reply = (await stub.CreateTestInboundSms(pb.CreateTestInboundSmsRequest(  # type: ignore[attr-defined]
            url="poll", original_message_id=first, body="old reply"), metadata=md)).inbound
        before = await _versions(messaging, account)
        stored = sum(len(v) for v in before.values())
        assert before["messages.body_ct"] == [1, 1, 1] and before["inbound_messages.from_ct"] == [1]
        assert before["idempotency_keys.result_ct"] == [1] and before["account_settings.webhook_secret_ct"] == [1]

        # Both data owners finish a pass under version 1 (their loops would, every few minutes).
        await messaging.api.extras["rewrap"]()
        await identity_app.extras["rewrap"]()
        status = (await ops.RotateAccountKey(kpb.RotateAccountKeyRequest(account_id=account))).status
        assert status.current_version == 2
        await keys_service.extras["rewrap"]()  # keys' own sealed items (none of this account's) are a data owner too

        # Retire now: refused, naming messaging and how many items it holds below version 2.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await ops.SetAccountKeyPolicy(kpb.SetAccountKeyPolicyRequest(account_id=account, min_decryption_version=2))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason_of(refused.value) == "REWRAP_INCOMPLETE"
        assert f"messaging: {stored} items below version 2" in (refused.value.details() or "")
        # The operator's tool says the same, without a traceback.
        capsys.readouterr()
        assert await _keyadmin(certs, keys_addr, "retire", str(account), "2") == 1
        err = capsys.readouterr().err
        assert "retire refused: FAILED_PRECONDITION REWRAP_INCOMPLETE" in err and f"{stored} items" in err

        # Messaging's pass moves everything; identity has not run one since the rotation: still refused.
        progress = await messaging.api.extras["rewrap"]()
        assert sum(p.changed for p in progress.values()) == stored
        assert all(v == [2] * len(v) for v in (await _versions(messaging, account)).values())
        with pytest.raises(grpc.aio.AioRpcError) as still:
            await ops.SetAccountKeyPolicy(kpb.SetAccountKeyPolicyRequest(account_id=account, min_decryption_version=2))
        assert reason_of(still.value) == "REWRAP_INCOMPLETE"
        assert "identity: 0 items below version 2" in (still.value.details() or "")
        assert "messaging" not in (still.value.details() or "")

        await identity_app.extras["rewrap"]()
        assert await _keyadmin(certs, keys_addr, "retire", str(account), "2") == 0
        status = (await ops.GetAccountKeyStatus(kpb.GetAccountKeyStatusRequest(account_id=account))).status
        assert status.min_decryption_version == 2

        # Every old item still reads, through a fresh envelope cache (nothing served from before the rotation).
        messaging.envelope.clear()
        page = await stub.ListSmsHistory(pb.ListSmsHistoryRequest(), metadata=md)  # type: ignore[attr-defined]
        assert sorted((h.body, h.to) for h in page.data) == [(f"old body {i}", REAL_NUMBER) for i in range(3)]
        found = await stub.ListSmsHistory(pb.ListSmsHistoryRequest(q=f"to:{REAL_NUMBER}"), metadata=md)  # type: ignore[attr-defined]
        assert found.total == 3  # the index key (for keyed hashes of numbers) still opens
        inbound = (await stub.ListInboundSms(pb.ListInboundSmsRequest(), metadata=md)).data  # type: ignore[attr-defined]
        assert [(i.message_id, i.body, i.sender) for i in inbound] == [(reply.message_id, "old reply", REAL_NUMBER)]
        again = await stub.SendSms(request, metadata=replay)  # type: ignore[attr-defined]
        assert [m.message_id for m in again.messages] == [m.message_id for m in sent.messages]
        blob = await messaging.pool.fetchval(
            "SELECT webhook_secret_ct FROM account_settings WHERE account_id = $1", account)
        aad = aad_for(account, WEBHOOK_SECRET_RECORD, str(account))
        assert await messaging.envelope.decrypt(account, aad, bytes(blob)) == secret.encode()


async def test_the_rewrap_loop_runs_by_itself(
    messaging_settings: Settings, identity_app: App, keys_service: App, keys_addr: str, certs: CertBundle
) -> None:
    """With a short period, messaging's own loop moves new rotations' data without anyone calling it."""
    from services.messaging.app import build

    api = await build(dataclasses.replace(messaging_settings, rewrap_seconds=0.2))
    m = Messaging(messaging_settings, api, _no_worker)
    account = 9900 + uuid.uuid4().int % 100
    ch, stub = stub_for(m, certs)
    ops_ch, ops = _ops(certs, keys_addr)
    try:
        async with ch, ops_ch:
            md = principal_md(account, test_mode=True)
            await stub.SendSms(pb.SendSmsRequest(messages=[sms(REAL_NUMBER, "loop body")]), metadata=md)  # type: ignore[attr-defined]
            await ops.RotateAccountKey(kpb.RotateAccountKeyRequest(account_id=account))

            async def moved() -> bool:
                versions = await _versions(m, account)
                return versions["messages.body_ct"] == [2] and versions["messages.to_ct"] == [2]

            await eventually(moved, what="the rewrap loop to move the message to version 2")
            await identity_app.extras["rewrap"]()
            await keys_service.extras["rewrap"]()

            async def retired() -> bool:  # keys hears of it once the loop's next report lands
                try:
                    await ops.SetAccountKeyPolicy(
                        kpb.SetAccountKeyPolicyRequest(account_id=account, min_decryption_version=2))
                except grpc.aio.AioRpcError as exc:
                    assert reason_of(exc) == "REWRAP_INCOMPLETE"
                    return False
                return True

            await eventually(retired, what="retirement to be accepted")
            page = await stub.ListSmsHistory(pb.ListSmsHistoryRequest(), metadata=md)  # type: ignore[attr-defined]
            assert [h.body for h in page.data] == ["loop body"]
    finally:
        await api.stop()


async def _no_worker(**_: object) -> App:
    raise AssertionError("this test starts no worker")
