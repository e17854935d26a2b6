"""Key rotation -> retirement for identity's TOTP secrets, with the real identity and keys services over mTLS
and PostgreSQL: retirement is refused while identity's last rewrap pass still counted the secret under the
old version, identity's pass moves it, then retirement succeeds and the second factor still works (issue 15)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import timestamp_pb2

from sendsafe.identity.v1 import auth_service_pb2 as auth_pb
from sendsafe.identity.v1 import auth_service_pb2_grpc
from sendsafe.keys.v1 import keys_service_pb2 as kpb
from sendsafe.keys.v1 import keys_service_pb2_grpc
from services.identity.adapters.store.pg import PgIdentityStore
from svckit.app import App
from svckit.envelope_rewrap import kek_version
from svckit.rpcstatus import error_reason
from tests.conftest import channel_as
from tests.integration.identity.test_auth_concurrency import (
    PASSWORD,
    _address,
    _anonymous,
    _as_session,
    _customer,
    _enrol_totp,
)
from tests.support import CertBundle


async def _secret_version(app: App, user_id: int) -> int:
    store: PgIdentityStore = app.extras["store"]
    factor = await store.totp_factor("user", user_id)
    assert factor is not None
    return kek_version(factor.secret_blob)


async def test_totp_secret_is_rewrapped_before_its_version_is_retired(
    identity_app: App, keys_app: App, certs: CertBundle
) -> None:
    username, account_id, user_id = await _customer(identity_app, certs)
    address = _address()
    async with (
        channel_as(certs, "gateway", identity_app.port, "identity") as ch,
        channel_as(certs, "ops", keys_app.port, "keys") as ops_ch,
        channel_as(certs, "messaging", keys_app.port, "keys") as messaging_ch,
    ):
        auth = auth_service_pb2_grpc.AuthServiceStub(ch)
        ops = keys_service_pb2_grpc.KeysServiceStub(ops_ch)
        first = await auth.Login(auth_pb.LoginRequest(username=username, password=PASSWORD),
                                 metadata=_anonymous(address))
        totp, step = await _enrol_totp(auth, await _as_session(auth, first.session_token, address))
        assert await _secret_version(identity_app, user_id) == 1
        await ops.RotateAccountKey(kpb.RotateAccountKeyRequest(account_id=account_id))
        # Messaging holds nothing of this account here; it says so after a pass of its own.
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(datetime.now(UTC))
        assert (await keys_service_pb2_grpc.KeysServiceStub(messaging_ch).ReportKeyUsage(
            kpb.ReportKeyUsageRequest(pass_start_time=stamp))).accepted

        await identity_app.extras["rewrap"]()
        assert await _secret_version(identity_app, user_id) == 2
        retire = kpb.SetAccountKeyPolicyRequest(account_id=account_id, min_decryption_version=3)
        await ops.RotateAccountKey(kpb.RotateAccountKeyRequest(account_id=account_id))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await ops.SetAccountKeyPolicy(retire)  # version 3 is newer than identity's last pass
        assert error_reason(refused.value) == "REWRAP_INCOMPLETE"
        # The TOTP secret (and the user's sealed personal data, when those columns are rewrapped too).
        held = re.search(r"identity: (\d+) items below version 3", refused.value.details() or "")
        assert held is not None and int(held.group(1)) >= 1, refused.value.details()

        await identity_app.extras["rewrap"]()
        await keys_app.extras["rewrap"]()  # keys' own sealed items (none here) are a data owner too
        stamp.FromDatetime(datetime.now(UTC))
        await keys_service_pb2_grpc.KeysServiceStub(messaging_ch).ReportKeyUsage(
            kpb.ReportKeyUsageRequest(pass_start_time=stamp))
        assert await _secret_version(identity_app, user_id) == 3
        status = (await ops.SetAccountKeyPolicy(retire)).status
        assert status.min_decryption_version == 3

        # The second factor still works: the secret decrypts under version 3 alone (the retirement's key notice
        # cleared identity's cached data keys).
        code = totp.at((step + 1) * 30)
        login = await auth.Login(auth_pb.LoginRequest(username=username, password=PASSWORD, totp_code=code),
                                 metadata=_anonymous(address))
        assert list(login.session.amr) == ["pwd", "otp"]
