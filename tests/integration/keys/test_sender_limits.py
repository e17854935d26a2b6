"""API keys limited to sender ids over real mTLS and PostgreSQL (issue 21): stored normalised, listed, verified,
kept by a roll, bounded for keys made with a limited key; bad limits refused with nothing stored."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest

from sendsafe.keys.v1 import keys_service_pb2 as pb
from sendsafe.keys.v1 import keys_service_pb2_grpc
from svckit.app import App
from svckit.rpcstatus import error_reason
from tests.conftest import channel_as
from tests.integration.keys.test_keys_in_depth import as_user
from tests.support import CertBundle

PERMS = ("sms.send", "api_keys.read", "api_keys.write")


@pytest.fixture
async def gw(keys_app: App, certs: CertBundle) -> AsyncIterator[keys_service_pb2_grpc.KeysServiceStub]:
    async with channel_as(certs, "gateway", keys_app.port, "keys") as ch:
        yield keys_service_pb2_grpc.KeysServiceStub(ch)


async def test_a_key_limited_to_senders(gw: keys_service_pb2_grpc.KeysServiceStub, keys_database: str) -> None:
    made = await gw.CreateApiKey(pb.CreateApiKeyRequest(
        name="brand only", scopes=["*"], send_limits=pb.SendLimits(allowed_senders=["61 411 111 111", " Brand "])),
        metadata=as_user(80, 1, PERMS))
    assert list(made.api_key.send_limits.allowed_senders) == ["+61411111111", "Brand"]
    listed = await gw.ListApiKeys(pb.ListApiKeysRequest(), metadata=as_user(80, 1, PERMS))
    assert [list(k.send_limits.allowed_senders) for k in listed.api_keys] == [["+61411111111", "Brand"]]
    verified = await gw.VerifyApiKey(pb.VerifyApiKeyRequest(api_key=made.secret))
    assert list(verified.send_limits.allowed_senders) == ["+61411111111", "Brand"]
    rolled = await gw.RollApiKey(pb.RollApiKeyRequest(key_id=made.api_key.key_id), metadata=as_user(80, 1, PERMS))
    assert list(rolled.api_key.send_limits.allowed_senders) == ["+61411111111", "Brand"]
    via_key = as_user(80, 1, PERMS, key_id=rolled.api_key.key_id)
    child = await gw.CreateApiKey(pb.CreateApiKeyRequest(name="child", scopes=["sms.send"]), metadata=via_key)
    assert list(child.api_key.send_limits.allowed_senders) == ["+61411111111", "Brand"]
    # At rest the number is sealed under the account's key (it may be the customer's own); the tag is in clear.
    conn = await asyncpg.connect(keys_database)
    try:
        rows = await conn.fetch("SELECT send_senders, send_sender_numbers_ct FROM api_keys WHERE account_id = 80")
    finally:
        await conn.close()
    assert len(rows) == 3 and all(list(r["send_senders"]) == ["Brand"] for r in rows)
    assert all(r["send_sender_numbers_ct"] and b"61411111111" not in bytes(r["send_sender_numbers_ct"]) for r in rows)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gw.CreateApiKey(pb.CreateApiKeyRequest(
            name="wider", scopes=["sms.send"], send_limits=pb.SendLimits(allowed_senders=["Brand", "Other"])),
            metadata=via_key)
    assert (err.value.code(), error_reason(err.value)) == (grpc.StatusCode.PERMISSION_DENIED, "EXCEEDS_CALLING_KEY")


@pytest.mark.parametrize("senders", [["Bank&Co"], ["+0412"], [f"Tag{i}" for i in range(21)]])
async def test_a_bad_limit_is_refused_and_nothing_is_stored(
    gw: keys_service_pb2_grpc.KeysServiceStub, senders: list[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gw.CreateApiKey(pb.CreateApiKeyRequest(
            name="bad", scopes=["*"], send_limits=pb.SendLimits(allowed_senders=senders)),
            metadata=as_user(81, 1, PERMS))
    assert (err.value.code(), error_reason(err.value)) == (grpc.StatusCode.INVALID_ARGUMENT, "ALLOWED_SENDERS_INVALID")
    assert (await gw.ListApiKeys(pb.ListApiKeysRequest(show_inactive=True), metadata=as_user(81, 1, PERMS))
            ).api_keys == []
