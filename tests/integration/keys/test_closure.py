"""Account closure, keys' part, with the real keys service over mTLS and real PostgreSQL (issue 15): identity alone
revokes every API key of an account at once (the gateway's verification refuses them) and purges a closed account;
the purge is refused while the keys exist (KEYS_NOT_DESTROYED), then deletes the account's API key rows, keeps the
ring's tombstone, and returns the signed receipt - the same bytes every time, verifying with the published key."""

from __future__ import annotations

import grpc
import pytest

from sendsafe.keys.v1 import keys_service_pb2 as pb
from services.keys.domain.receipts import verify_receipt
from svckit.app import App
from svckit.rpcstatus import error_reason
from tests.integration.keys.conftest import Clock
from tests.integration.keys.test_keys_api import stub_as
from tests.support import CertBundle

ACCOUNT, OTHER = 4242, 4243


async def test_revoke_every_key_then_purge_only_after_destruction(
    keys_app: App, certs: CertBundle, clock: Clock
) -> None:
    ich, identity = stub_as(certs, "identity", keys_app)
    gch, gateway = stub_as(certs, "gateway", keys_app)
    async with ich, gch:
        keys = [await identity.IssueApiKey(pb.IssueApiKeyRequest(account_id=ACCOUNT, user_id=u, name="k"))
                for u in (1, 2, 2)]
        kept = await identity.IssueApiKey(pb.IssueApiKeyRequest(account_id=OTHER, user_id=3, name="k"))
        await identity.GenerateDataKey(pb.GenerateDataKeyRequest(account_id=ACCOUNT))  # the account's ring

        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await gateway.RevokeAccountApiKeys(pb.RevokeAccountApiKeysRequest(account_id=ACCOUNT))
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        revoked = await identity.RevokeAccountApiKeys(
            pb.RevokeAccountApiKeysRequest(account_id=ACCOUNT, reason="account_closing"))
        assert sorted(revoked.revoked_key_ids) == sorted(k.key_id for k in keys)
        assert not (await identity.RevokeAccountApiKeys(pb.RevokeAccountApiKeysRequest(account_id=ACCOUNT))
                    ).revoked_key_ids  # idempotent
        for k in keys:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await gateway.VerifyApiKey(pb.VerifyApiKeyRequest(api_key=k.api_key, client_address="127.0.0.1"))
            assert error_reason(refused.value) == "API_KEY_REVOKED"
        assert (await gateway.VerifyApiKey(pb.VerifyApiKeyRequest(api_key=kept.api_key, client_address="127.0.0.1"))
                ).account_id == OTHER

        # No purge while the keys exist, pending or not.
        for schedule in (False, True):
            if schedule:
                await identity.ScheduleAccountKeyDestruction(
                    pb.ScheduleAccountKeyDestructionRequest(account_id=ACCOUNT, pending_window_seconds=60))
            with pytest.raises(grpc.aio.AioRpcError) as early:
                await identity.PurgeAccountKeys(pb.PurgeAccountKeysRequest(account_id=ACCOUNT))
            assert error_reason(early.value) == "KEYS_NOT_DESTROYED"

        clock.advance(seconds=61)
        await keys_app.extras["rings"].run_maintenance()  # type: ignore[attr-defined]
        first = await identity.PurgeAccountKeys(pb.PurgeAccountKeysRequest(account_id=ACCOUNT))
        assert first.deleted_api_keys == 3 and first.receipt and first.signature
        again = await identity.PurgeAccountKeys(pb.PurgeAccountKeysRequest(account_id=ACCOUNT))
        assert (again.receipt, again.signature, again.signing_key_id, again.deleted_api_keys) == (
            first.receipt, first.signature, first.signing_key_id, 0)
        published = {kid: public for kid, public, _ in
                     await keys_app.extras["rings"].list_receipt_signing_keys()}  # type: ignore[attr-defined]
        assert verify_receipt(published[first.signing_key_id], first.receipt, first.signature)
        assert b'"account_id":"4242"' in first.receipt
        status = (await identity.GetAccountKeyStatus(pb.GetAccountKeyStatusRequest(account_id=ACCOUNT))).status
        assert status.state == pb.ACCOUNT_KEY_STATE_DESTROYED  # the tombstone stays
        assert (await gateway.VerifyApiKey(pb.VerifyApiKeyRequest(api_key=kept.api_key, client_address="127.0.0.1"))
                ).account_id == OTHER  # another account's key untouched
