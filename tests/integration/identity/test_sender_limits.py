"""Sub-accounts' sender limits over real mTLS, PostgreSQL, keys (sealing) and audit (issue 21): set by a user manager
under the delegation rule, inherited by the users a limited user creates, never lifted or widened by them; carried
to the gateway by GetUser and ResolveSession; sealed at rest; each change a subaccount.update event."""

from __future__ import annotations

import asyncpg
import grpc
import pytest

from sendsafe.identity.v1 import auth_service_pb2 as auth_pb
from sendsafe.identity.v1 import auth_service_pb2_grpc, identity_service_pb2_grpc
from sendsafe.identity.v1 import identity_service_pb2 as pb
from svckit.app import App
from svckit.rpcstatus import error_reason
from tests.integration.identity.test_account_policy import HOME, _account, _api_key, _subaccount, gw  # noqa: F401
from tests.integration.identity.test_auth_concurrency import PASSWORD, _anonymous
from tests.integration.identity.test_identity_api import _audit_events
from tests.support import CertBundle

NUMBER = "+61411111111"


async def _refused(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    return err.value.code(), error_reason(err.value)


async def test_sender_limits_follow_the_delegation_rule(
    identity_app: App, audit_app: App, certs: CertBundle, gw: grpc.aio.Channel, identity_dsn: str,  # noqa: F811
) -> None:
    account = await _account(identity_app, certs, gw)
    ids = identity_service_pb2_grpc.IdentityServiceStub(gw)
    manager_name, manager_id = await _subaccount(gw, account, access_users=1, access_sms=1)
    set_limits = pb.UpdateSubaccountSenderLimitsRequest(subaccount_id=manager_id,
                                                        allowed_senders=["61 411 111 111", " Brand "])
    assert await _refused(ids.UpdateSubaccountSenderLimits(pb.UpdateSubaccountSenderLimitsRequest(
        subaccount_id=manager_id, allowed_senders=["Bank&Co"]), metadata=account.main)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "ALLOWED_SENDERS_INVALID")
    done = await ids.UpdateSubaccountSenderLimits(set_limits, metadata=account.main)
    assert list(done.sender_limits.allowed_senders) == [NUMBER, "Brand"]

    # The gateway learns it from GetUser (API keys) and ResolveSession (sessions).
    assert list((await ids.GetUser(pb.GetUserRequest(user_id=manager_id))).user.allowed_senders) == [NUMBER, "Brand"]
    auth = auth_service_pb2_grpc.AuthServiceStub(gw)
    session = await auth.Login(auth_pb.LoginRequest(username=manager_name, password=PASSWORD),
                               metadata=_anonymous(HOME))
    resolved = await auth.ResolveSession(auth_pb.ResolveSessionRequest(session_token=session.session_token,
                                                                       client_address=HOME))
    assert list(resolved.allowed_senders) == [NUMBER, "Brand"]

    # A user the limited manager creates inherits its limit; the manager can narrow it, not widen or lift it.
    manager = _api_key(account.account_id, manager_id, list(resolved.permissions))
    kid = (await ids.CreateSubaccount(pb.CreateSubaccountRequest(
        api_username=f"{manager_name}k", password=PASSWORD, email="kid@example.com", access_sms=1),
        metadata=manager)).subaccount
    kid_limits = pb.GetSubaccountSenderLimitsRequest(subaccount_id=kid.subaccount_id)
    assert list((await ids.GetSubaccountSenderLimits(kid_limits, metadata=manager)).sender_limits.allowed_senders
                ) == [NUMBER, "Brand"]
    for senders, refusal in ((["Brand", "Other"], "DELEGATION_EXCEEDS_ACTOR"), ([], "RESTRICTION_NOT_LIFTABLE")):
        assert await _refused(ids.UpdateSubaccountSenderLimits(pb.UpdateSubaccountSenderLimitsRequest(
            subaccount_id=kid.subaccount_id, allowed_senders=senders), metadata=manager)) == (
            grpc.StatusCode.PERMISSION_DENIED, refusal)
    assert await _refused(ids.UpdateSubaccountSenderLimits(pb.UpdateSubaccountSenderLimitsRequest(
        subaccount_id=manager_id), metadata=manager)) == (grpc.StatusCode.PERMISSION_DENIED, "OWN_ACCESS_UNCHANGEABLE")
    narrowed = await ids.UpdateSubaccountSenderLimits(pb.UpdateSubaccountSenderLimitsRequest(
        subaccount_id=kid.subaccount_id, allowed_senders=["brand"]), metadata=manager)
    assert list(narrowed.sender_limits.allowed_senders) == ["brand"]
    # Another account's user is not even named; the main user's senders cannot be limited.
    other = await _account(identity_app, certs, gw)
    assert await _refused(ids.GetSubaccountSenderLimits(kid_limits, metadata=other.main)) == (
        grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    assert await _refused(ids.UpdateSubaccountSenderLimits(pb.UpdateSubaccountSenderLimitsRequest(
        subaccount_id=account.user_id, allowed_senders=["Brand"]), metadata=account.main)) == (
        grpc.StatusCode.PERMISSION_DENIED, "MAIN_USER_PROTECTED")

    # At rest the limit is sealed (it may hold the customer's own numbers); the audit details count numbers.
    conn = await asyncpg.connect(identity_dsn)
    try:
        blob = await conn.fetchval("SELECT allowed_senders_ct FROM users WHERE id = $1", manager_id)
    finally:
        await conn.close()
    assert blob and b"61411111111" not in bytes(blob) and b"Brand" not in bytes(blob)
    changes = [e for e in await _audit_events(audit_app) if e.action == "subaccount.update"
               and e.resource.id in (str(manager_id), str(kid.subaccount_id))
               and e.details.get("fields") == "allowed_senders"]
    assert [dict(e.details)["allowed_senders"] for e in changes] == ["Brand,1 number", "brand"]
    assert all("61411111111" not in str(e) for e in changes)
    created = [e for e in await _audit_events(audit_app) if e.action == "subaccount.create"
               and e.resource.id == str(kid.subaccount_id)]
    assert created and created[0].details["allowed_senders"] == "Brand,1 number"
