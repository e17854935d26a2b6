"""Account closure with the real identity over mTLS, real PostgreSQL, the real keys and audit services, and a
messaging that does not implement the closure RPCs - a peer that is down for this purpose (issue 15). The errors
(wrong name typed back, a sub-account even holding the permission, close twice, cancel when nothing is closing), the
steps done in order up to the failing peer and nothing after it (the keys are not scheduled while sends could not be
stopped), what a main user's fresh session holds while closing, a cancel refused while messaging cannot resume sends
(the account stays closing), and the owner's address kept only sealed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import grpc
import pytest

from sendsafe.context.v1 import principal_pb2
from sendsafe.identity.v1 import auth_service_pb2 as auth_pb
from sendsafe.identity.v1 import (
    auth_service_pb2_grpc,
    closure_service_pb2,
    closure_service_pb2_grpc,
    identity_service_pb2,
    identity_service_pb2_grpc,
)
from sendsafe.keys.v1 import keys_service_pb2, keys_service_pb2_grpc
from svckit.app import App
from tests.conftest import channel_as
from tests.integration.identity.test_auth_concurrency import PASSWORD, Metadata, _anonymous, _customer, _md, _reason
from tests.support import CertBundle

CLOSE = "account.close"


def _session_md(account_id: int, user_id: int, *perms: str) -> Metadata:
    """A session with a second factor verified just now (what the gateway forwards after a fresh login)."""
    p = principal_pb2.Principal(
        account_id=account_id, user_id=user_id, permissions=list(perms), request_id=uuid.uuid4().hex,
        auth_method=principal_pb2.AUTH_METHOD_SESSION, session_id="s-" + uuid.uuid4().hex, client_address="203.0.113.5",
    )
    p.mfa_time.FromDatetime(datetime.now(UTC))
    return _md(p)


async def test_close_errors_a_peer_down_and_what_a_closing_account_holds(
    identity_app: App, keys_app: App, certs: CertBundle, identity_dsn: str
) -> None:
    username, account_id, user_id = await _customer(identity_app, certs)
    async with (
        channel_as(certs, "gateway", identity_app.port, "identity") as ch,
        channel_as(certs, "identity", keys_app.port, "keys") as keys_ch,
    ):
        closure = closure_service_pb2_grpc.AccountClosureServiceStub(ch)
        auth = auth_service_pb2_grpc.AuthServiceStub(ch)
        sub = await identity_service_pb2_grpc.IdentityServiceStub(ch).CreateSubaccount(
            identity_service_pb2.CreateSubaccountRequest(api_username=f"sub{uuid.uuid4().hex[:8]}", password=PASSWORD,
                                                         email="sub@example.com"),
            metadata=_session_md(account_id, user_id, "subaccounts.write", "subaccounts.read"))
        keys = keys_service_pb2_grpc.KeysServiceStub(keys_ch)
        issued = await keys.IssueApiKey(keys_service_pb2.IssueApiKeyRequest(
            account_id=account_id, user_id=user_id, name="main"))
        main = _session_md(account_id, user_id, CLOSE)
        name = "Concurrency Pty Ltd"  # what _customer names it

        async def refused(call: object) -> tuple[grpc.StatusCode, str]:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call  # type: ignore[misc]
            return info.value.code(), _reason(info.value)

        # A sub-account is refused even if a principal claimed the permission (identity checks the main user).
        assert await refused(closure.CloseAccount(
            closure_service_pb2.CloseAccountRequest(account_name=name),
            metadata=_session_md(account_id, sub.subaccount.subaccount_id, CLOSE))) == (
            grpc.StatusCode.PERMISSION_DENIED, "MAIN_USER_ONLY")
        assert await refused(closure.CloseAccount(closure_service_pb2.CloseAccountRequest(account_name="Acme"),
                                                  metadata=main)) == (
            grpc.StatusCode.INVALID_ARGUMENT, "ACCOUNT_NAME_MISMATCH")
        assert (await refused(closure.CancelAccountClosure(closure_service_pb2.CancelAccountClosureRequest(),
                                                           metadata=main)))[1] == "ACCOUNT_NOT_CLOSING"

        # Close: sessions and API keys go; messaging cannot stop sends, so the steps stop there (keys untouched).
        before = await auth.Login(auth_pb.LoginRequest(username=username, password=PASSWORD),
                                  metadata=_anonymous("203.0.113.5"))
        started = (await closure.CloseAccount(closure_service_pb2.CloseAccountRequest(account_name=name),
                                              metadata=main)).closure
        assert started.state == closure_service_pb2.ACCOUNT_CLOSURE_STATE_CLOSING
        assert list(started.steps_done) == ["sessions_ended", "api_keys_revoked"]
        assert (await refused(auth.ResolveSession(auth_pb.ResolveSessionRequest(
            session_token=before.session_token))))[0] == grpc.StatusCode.UNAUTHENTICATED
        status = await keys.GetAccountKeyStatus(keys_service_pb2.GetAccountKeyStatusRequest(account_id=account_id))
        assert status.status.state == keys_service_pb2.ACCOUNT_KEY_STATE_ENABLED  # not scheduled: sends still on
        async with channel_as(certs, "messaging", keys_app.port, "keys") as as_messaging:
            listed = await keys_service_pb2_grpc.KeysServiceStub(as_messaging).ListAccountApiKeys(
                keys_service_pb2.ListAccountApiKeysRequest(account_id=account_id))
        states = {k.key_id: k.state for k in listed.api_keys}
        assert states[issued.key_id] == keys_service_pb2.API_KEY_STATE_REVOKED and set(states.values()) == {
            keys_service_pb2.API_KEY_STATE_REVOKED}
        assert (await refused(closure.CloseAccount(closure_service_pb2.CloseAccountRequest(account_name=name),
                                                   metadata=main))) == (
            grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_CLOSING")
        got = (await closure.GetAccountClosure(closure_service_pb2.GetAccountClosureRequest(), metadata=main)).closure
        assert got.state == closure_service_pb2.ACCOUNT_CLOSURE_STATE_CLOSING and got.destroy_time.seconds > 0

        # A fresh login of the main user holds the closure alone; the sub-account's holds nothing.
        again = await auth.Login(auth_pb.LoginRequest(username=username, password=PASSWORD),
                                 metadata=_anonymous("203.0.113.5"))
        resolved = await auth.ResolveSession(auth_pb.ResolveSessionRequest(session_token=again.session_token))
        assert list(resolved.permissions) == [CLOSE]
        sub_login = await auth.Login(auth_pb.LoginRequest(username=sub.subaccount.api_username, password=PASSWORD),
                                     metadata=_anonymous("203.0.113.5"))
        assert not (await auth.ResolveSession(auth_pb.ResolveSessionRequest(
            session_token=sub_login.session_token))).permissions

        # Cancel needs messaging to resume sends: refused while it cannot, and the account stays closing.
        code, _ = await refused(closure.CancelAccountClosure(closure_service_pb2.CancelAccountClosureRequest(),
                                                             metadata=main))
        assert code != grpc.StatusCode.OK
        got = (await closure.GetAccountClosure(closure_service_pb2.GetAccountClosureRequest(), metadata=main)).closure
        assert got.state == closure_service_pb2.ACCOUNT_CLOSURE_STATE_CLOSING

    # The owner's address is kept only sealed (under the platform's key), never in clear.
    conn = await asyncpg.connect(identity_dsn)
    try:
        row = await conn.fetchrow("SELECT c.owner_email_ct, a.state FROM account_closures c"
                                  " JOIN accounts a ON a.id = c.account_id WHERE c.account_id = $1", account_id)
    finally:
        await conn.close()
    assert row["state"] == "closing" and row["owner_email_ct"]
    assert username.encode() not in bytes(row["owner_email_ct"])
