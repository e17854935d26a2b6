"""An account's sign-in policy over real mTLS and PostgreSQL, with the real audit and keys services (issue 15):
who may read and change it, each refusal with its reason (bad values, a main user locking themselves out, a login
or a session's use from outside the allowed networks, a session past the account's lifetime), a sub-account
without a second factor held to enrolment until it verifies one, sessions ended at once by a change, and the
audit evidence. The gateway's part (the principal, the client address) is played by the test."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pyotp
import pytest

from sendsafe.context.v1 import principal_pb2
from sendsafe.identity.v1 import account_policy_service_pb2 as pol
from sendsafe.identity.v1 import (
    account_policy_service_pb2_grpc,
    auth_service_pb2_grpc,
    identity_service_pb2,
    identity_service_pb2_grpc,
)
from sendsafe.identity.v1 import auth_service_pb2 as auth_pb
from svckit.app import App
from tests.conftest import channel_as
from tests.integration.identity.test_auth_concurrency import (
    PASSWORD,
    Metadata,
    _anonymous,
    _customer,
    _feed,
    _md,
    _reason,
)
from tests.support import CertBundle

OFFICE = "2001:db8:ff1::/48"
HOME = "2001:db8:ff1:7::25"  # inside OFFICE
CAFE = "198.51.100.77"  # outside it


def _api_key(account_id: int, user_id: int, permissions: list[str], address: str = HOME) -> Metadata:
    """The principal of a call with an API key (privileged calls need no step-up on a machine credential)."""
    return _md(principal_pb2.Principal(
        account_id=account_id, user_id=user_id, permissions=permissions, request_id=uuid.uuid4().hex,
        auth_method=principal_pb2.AUTH_METHOD_API_KEY, api_key_id="key1", client_address=address,
    ))


def _session(s: auth_pb.ResolveSessionResponse, address: str) -> Metadata:
    p = principal_pb2.Principal(
        account_id=s.account_id, user_id=s.user_id, api_username=s.username, permissions=list(s.permissions),
        auth_method=principal_pb2.AUTH_METHOD_SESSION, session_id=s.session_id, client_address=address,
        request_id=uuid.uuid4().hex,
    )
    if s.HasField("mfa_time"):
        p.mfa_time.CopyFrom(s.mfa_time)
    return _md(p)


def _policy(*networks: str, require: bool = False, lifetime: int = 0) -> pol.UpdateAccountPolicyRequest:
    return pol.UpdateAccountPolicyRequest(policy=pol.AccountPolicy(
        require_second_factor=require, allowed_networks=list(networks), session_lifetime_seconds=lifetime))


class Account:
    def __init__(self, username: str, account_id: int, user_id: int, permissions: list[str]) -> None:
        self.username, self.account_id, self.user_id, self.permissions = username, account_id, user_id, permissions

    @property
    def main(self) -> Metadata:
        return _api_key(self.account_id, self.user_id, self.permissions)


@pytest.fixture
async def gw(identity_app: App, certs: CertBundle) -> AsyncIterator[grpc.aio.Channel]:
    async with channel_as(certs, "gateway", identity_app.port, "identity") as ch:
        yield ch


async def _account(identity_app: App, certs: CertBundle, gw: grpc.aio.Channel) -> Account:
    username, account_id, user_id = await _customer(identity_app, certs)
    async with channel_as(certs, "ops", identity_app.port, "identity") as ch:
        user = (await identity_service_pb2_grpc.IdentityServiceStub(ch).GetUser(
            identity_service_pb2.GetUserRequest(user_id=user_id))).user
    assert "account.policy" in user.permissions  # the main user holds it (MAIN_USER)
    return Account(username, account_id, user_id, list(user.permissions))


async def _subaccount(gw: grpc.aio.Channel, account: Account, **flags: int) -> tuple[str, int]:
    name = f"sub{uuid.uuid4().hex[:10]}"
    sub = (await identity_service_pb2_grpc.IdentityServiceStub(gw).CreateSubaccount(
        identity_service_pb2.CreateSubaccountRequest(api_username=name, password=PASSWORD,
                                                     email=f"{name}@example.com", **flags),
        metadata=account.main)).subaccount
    return name, sub.subaccount_id


def _refused(err: pytest.ExceptionInfo[grpc.aio.AioRpcError]) -> tuple[grpc.StatusCode, str]:
    return err.value.code(), _reason(err.value)


async def _raises(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return _refused(err)


async def test_every_user_reads_it_only_the_main_user_changes_it_and_the_change_is_audited(
    identity_app: App, audit_app: App, certs: CertBundle, gw: grpc.aio.Channel,
) -> None:
    account = await _account(identity_app, certs, gw)
    _, sub_id = await _subaccount(gw, account, access_users=1, access_settings=1, access_reporting=1)
    policies = account_policy_service_pb2_grpc.AccountPolicyServiceStub(gw)
    fresh = await policies.GetAccountPolicy(pol.GetAccountPolicyRequest(), metadata=account.main)
    assert fresh.policy == pol.AccountPolicy()  # nothing set: the platform's rules alone
    async with channel_as(certs, "ops", identity_app.port, "identity") as ch:
        sub_perms = list((await identity_service_pb2_grpc.IdentityServiceStub(ch).GetUser(
            identity_service_pb2.GetUserRequest(user_id=sub_id))).user.permissions)
    assert "account.read" in sub_perms and "account.policy" not in sub_perms  # every flag on, still no policy
    sub = _api_key(account.account_id, sub_id, sub_perms)

    changed = await policies.UpdateAccountPolicy(_policy(OFFICE, "192.0.2.0/24", require=True, lifetime=3600),
                                                 metadata=account.main)
    assert (changed.policy.require_second_factor, list(changed.policy.allowed_networks),
            changed.policy.session_lifetime_seconds) == (True, [OFFICE, "192.0.2.0/24"], 3600)
    assert changed.policy.HasField("update_time")
    read = await policies.GetAccountPolicy(pol.GetAccountPolicyRequest(), metadata=sub)  # a sub-account reads it
    assert read.policy == changed.policy
    assert await _raises(policies.UpdateAccountPolicy(_policy(), metadata=sub)) == (
        grpc.StatusCode.PERMISSION_DENIED, "MISSING_PERMISSION")
    events = await _feed(audit_app, certs, account.account_id, "account.policy.update", lambda e: len(e) >= 1)
    [ev] = events
    assert ev.actor.id == str(account.user_id) and ev.resource.id == str(account.account_id)
    assert dict(ev.details) == {
        "changed": "require_second_factor,allowed_networks,session_lifetime_seconds",
        "require_second_factor": "true", "allowed_networks": f"{OFFICE},192.0.2.0/24",
        "session_lifetime_seconds": "3600", "previous_allowed_networks": "",
        "previous_session_lifetime_seconds": "0",
    }
    assert account.username not in ev.SerializeToString().decode("latin-1")  # ids and network facts only


async def test_bad_values_and_a_lock_out_are_refused_with_their_reasons(
    identity_app: App, certs: CertBundle, gw: grpc.aio.Channel,
) -> None:
    account = await _account(identity_app, certs, gw)
    policies = account_policy_service_pb2_grpc.AccountPolicyServiceStub(gw)
    cases = {
        "NETWORK_INVALID": _policy("10.0.0.1/8"),  # host bits: probably not what was meant
        "TOO_MANY_NETWORKS": _policy(OFFICE, *(f"192.0.2.{i}/32" for i in range(20))),
        "SESSION_LIFETIME_INVALID": _policy(lifetime=60),  # under the 300 s floor
    }
    for reason, request in cases.items():
        assert await _raises(policies.UpdateAccountPolicy(request, metadata=account.main)) == (
            grpc.StatusCode.INVALID_ARGUMENT, reason)
    # Networks that leave out where the main user calls from would lock them out: refused, nothing changes.
    assert await _raises(policies.UpdateAccountPolicy(_policy("192.0.2.0/24"), metadata=account.main)) == (
        grpc.StatusCode.FAILED_PRECONDITION, "CALLER_OUTSIDE_NETWORKS")
    got = await policies.GetAccountPolicy(pol.GetAccountPolicyRequest(), metadata=account.main)
    assert list(got.policy.allowed_networks) == [] and not got.policy.HasField("update_time")
    # An address alone is its /32 or /128; an IPv4-mapped caller counts as its IPv4 address.
    mapped = _api_key(account.account_id, account.user_id, account.permissions, "::ffff:192.0.2.9")
    ok = await policies.UpdateAccountPolicy(_policy("192.0.2.9", "2001:db8::1"), metadata=mapped)
    assert list(ok.policy.allowed_networks) == ["192.0.2.9/32", "2001:db8::1/128"]


async def test_networks_refuse_logins_and_uses_from_outside_and_end_sessions_from_outside(
    identity_app: App, audit_app: App, certs: CertBundle, gw: grpc.aio.Channel,
) -> None:
    account = await _account(identity_app, certs, gw)
    auth = auth_service_pb2_grpc.AuthServiceStub(gw)
    policies = account_policy_service_pb2_grpc.AccountPolicyServiceStub(gw)
    login = auth_pb.LoginRequest(username=account.username, password=PASSWORD)
    at_cafe = await auth.Login(login, metadata=_anonymous(CAFE))  # before the policy: anywhere
    at_home = await auth.Login(login, metadata=_anonymous(HOME))

    changed = await policies.UpdateAccountPolicy(_policy(OFFICE), metadata=account.main)
    assert changed.revoked_sessions == 1  # the session logged in at the cafe ends at once
    assert await _raises(auth.ResolveSession(auth_pb.ResolveSessionRequest(
        session_token=at_cafe.session_token, client_address=HOME))) == (
        grpc.StatusCode.UNAUTHENTICATED, "SESSION_INVALID")
    resolved = await auth.ResolveSession(auth_pb.ResolveSessionRequest(
        session_token=at_home.session_token, client_address=HOME))
    assert resolved.user_id == account.user_id
    # The session from home, carried to the cafe, is refused there (and still works at home).
    assert await _raises(auth.ResolveSession(auth_pb.ResolveSessionRequest(
        session_token=at_home.session_token, client_address=CAFE))) == (
        grpc.StatusCode.PERMISSION_DENIED, "NETWORK_NOT_ALLOWED")
    await auth.ResolveSession(auth_pb.ResolveSessionRequest(session_token=at_home.session_token, client_address=HOME))

    # A login from outside: refused after the password, with its reason; a wrong password still gets the usual.
    assert await _raises(auth.Login(login, metadata=_anonymous(CAFE))) == (
        grpc.StatusCode.PERMISSION_DENIED, "NETWORK_NOT_ALLOWED")
    wrong = auth_pb.LoginRequest(username=account.username, password="not the password at all")
    assert await _raises(auth.Login(wrong, metadata=_anonymous(CAFE))) == (
        grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS")
    assert (await auth.Login(login, metadata=_anonymous(HOME))).session_token
    events = await _feed(audit_app, certs, account.account_id, "auth.login",
                         lambda evs: any(e.error_reason == "NETWORK_NOT_ALLOWED" for e in evs))
    [denied] = [e for e in events if e.error_reason == "NETWORK_NOT_ALLOWED"]
    assert denied.details["network"] == "198.51.100.0/24" and denied.actor.id == str(account.user_id)
    revoked = await _feed(audit_app, certs, account.account_id, "auth.session.revoke",
                          lambda evs: any(e.details.get("reason") == "account_policy" for e in evs))
    assert [e.details["sessions"] for e in revoked if e.details.get("reason") == "account_policy"] == [
        at_cafe.session.session_id]


async def test_a_user_without_a_second_factor_can_only_enrol_until_one_is_verified(
    identity_app: App, certs: CertBundle, gw: grpc.aio.Channel,
) -> None:
    account = await _account(identity_app, certs, gw)
    sub_name, _ = await _subaccount(gw, account, access_sms=1, access_reporting=1)
    auth = auth_service_pb2_grpc.AuthServiceStub(gw)
    policies = account_policy_service_pb2_grpc.AccountPolicyServiceStub(gw)
    sub_login = auth_pb.LoginRequest(username=sub_name, password=PASSWORD)
    before = await auth.Login(sub_login, metadata=_anonymous(HOME))
    assert not before.second_factor_enrolment_required
    await policies.UpdateAccountPolicy(_policy(require=True), metadata=account.main)

    # An existing session without a verified second factor is held to enrolment from its next resolve on.
    held = await auth.ResolveSession(auth_pb.ResolveSessionRequest(
        session_token=before.session_token, client_address=HOME))
    assert sorted(held.permissions) == ["account.read", "self.manage"]
    login = await auth.Login(sub_login, metadata=_anonymous(HOME))
    assert login.second_factor_enrolment_required
    resolved = await auth.ResolveSession(auth_pb.ResolveSessionRequest(
        session_token=login.session_token, client_address=HOME))
    assert sorted(resolved.permissions) == ["account.read", "self.manage"]
    assert resolved.expire_time == login.session.expire_time
    session = _session(resolved, HOME)
    assert (await policies.GetAccountPolicy(pol.GetAccountPolicyRequest(), metadata=session)).policy \
        .require_second_factor  # it can read why

    enrolment = await auth.StartTotpEnrollment(auth_pb.StartTotpEnrollmentRequest(password=PASSWORD),
                                               metadata=session)
    totp = pyotp.parse_uri(enrolment.otpauth_uri)
    codes = (await auth.ConfirmTotpEnrollment(auth_pb.ConfirmTotpEnrollmentRequest(
        code=totp.at(int(time.time()))), metadata=session)).recovery_codes
    still = await auth.ResolveSession(auth_pb.ResolveSessionRequest(
        session_token=login.session_token, client_address=HOME))
    assert sorted(still.permissions) == ["account.read", "self.manage"]  # enrolled, but nothing verified on it yet
    await auth.StepUp(auth_pb.StepUpRequest(recovery_code=codes[0]), metadata=session)
    full = await auth.ResolveSession(auth_pb.ResolveSessionRequest(
        session_token=login.session_token, client_address=HOME))
    assert {"sms.send", "sms.read"} <= set(full.permissions) and full.HasField("mfa_time")
    # Now that it has one, the password alone is not enough to log in.
    assert await _raises(auth.Login(sub_login, metadata=_anonymous(HOME))) == (
        grpc.StatusCode.UNAUTHENTICATED, "MFA_REQUIRED")
    with_code = await auth.Login(auth_pb.LoginRequest(username=sub_name, password=PASSWORD,
                                                      recovery_code=codes[1]), metadata=_anonymous(HOME))
    assert not with_code.second_factor_enrolment_required


async def test_the_session_lifetime_cuts_sessions_existing_ones_too(
    identity_app: App, certs: CertBundle, gw: grpc.aio.Channel,
) -> None:
    account = await _account(identity_app, certs, gw)
    auth = auth_service_pb2_grpc.AuthServiceStub(gw)
    policies = account_policy_service_pb2_grpc.AccountPolicyServiceStub(gw)
    login = auth_pb.LoginRequest(username=account.username, password=PASSWORD)
    old = await auth.Login(login, metadata=_anonymous(HOME))
    young = await auth.Login(login, metadata=_anonymous(HOME))
    store = identity_app.extras["store"]
    async with store._pool.acquire() as conn:  # an hour-old login, without waiting an hour
        await conn.execute("UPDATE sessions SET create_time = now() - interval '1 hour' WHERE id = $1",
                           old.session.session_id)
    changed = await policies.UpdateAccountPolicy(_policy(lifetime=1800), metadata=account.main)
    assert changed.revoked_sessions == 1
    assert await _raises(auth.ResolveSession(auth_pb.ResolveSessionRequest(
        session_token=old.session_token, client_address=HOME))) == (grpc.StatusCode.UNAUTHENTICATED, "SESSION_INVALID")
    # The young one now ends 30 minutes after its login (the platform would have allowed 12 hours).
    resolved = await auth.ResolveSession(auth_pb.ResolveSessionRequest(
        session_token=young.session_token, client_address=HOME))
    assert resolved.expire_time.seconds - young.session.create_time.seconds == 1800
    assert young.session.expire_time.seconds - young.session.create_time.seconds == 12 * 3600
    # A session that outlives the lifetime after the change ends at its next use.
    async with store._pool.acquire() as conn:
        await conn.execute("UPDATE sessions SET create_time = now() - interval '31 minutes' WHERE id = $1",
                           young.session.session_id)
        assert await _raises(auth.ResolveSession(auth_pb.ResolveSessionRequest(
            session_token=young.session_token, client_address=HOME))) == (
            grpc.StatusCode.UNAUTHENTICATED, "SESSION_INVALID")
        reason = await conn.fetchval("SELECT revoke_reason FROM sessions WHERE id = $1", young.session.session_id)
    assert reason == "account_policy"
    # A new login's expiry already says so.
    fresh = await auth.Login(login, metadata=_anonymous(HOME))
    assert fresh.session.expire_time.seconds - fresh.session.create_time.seconds == 1800


async def test_a_change_the_audit_log_cannot_record_changes_nothing(
    identity_app: App, cut_off_identity: App, certs: CertBundle, gw: grpc.aio.Channel,
) -> None:
    """Privileged: the change's audit event is stored before it commits; without the audit log, no change (and
    no session ended)."""
    account = await _account(identity_app, certs, gw)
    auth = auth_service_pb2_grpc.AuthServiceStub(gw)
    at_cafe = await auth.Login(auth_pb.LoginRequest(username=account.username, password=PASSWORD),
                               metadata=_anonymous(CAFE))
    async with channel_as(certs, "gateway", cut_off_identity.port, "identity") as cut:
        refused = await _raises(account_policy_service_pb2_grpc.AccountPolicyServiceStub(cut).UpdateAccountPolicy(
            _policy(OFFICE, require=True), metadata=account.main))
    assert refused == (grpc.StatusCode.UNAVAILABLE, "AUDIT_UNAVAILABLE")
    got = await account_policy_service_pb2_grpc.AccountPolicyServiceStub(gw).GetAccountPolicy(
        pol.GetAccountPolicyRequest(), metadata=account.main)
    assert got.policy == pol.AccountPolicy()
    await auth.ResolveSession(auth_pb.ResolveSessionRequest(session_token=at_cafe.session_token, client_address=CAFE))
