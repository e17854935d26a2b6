"""The gateway's session cache and an account's sign-in policy (issue 15): identity sees every new client address
of a session (an account's allowed networks apply to each use), a cached session never outlives the expiry
identity gave it (an account's lifetime may cut it short), any other policy change (a session held to enrolment,
revoked, refused) shows within the cache's own bound, and a session refused for its network is a 403 that says
why. A fake clock drives the cache; identity is an in-memory stub."""

from __future__ import annotations

import time

import grpc
import pytest

from gateway.auth import Authenticator, AuthFailure
from sendsafe.identity.v1 import auth_service_pb2
from svckit.server import status_for

TOKEN = "ss_sess_" + "b" * 40
CACHE_SECONDS = 3.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSessions:
    def __init__(self) -> None:
        self.requests: list[auth_service_pb2.ResolveSessionRequest] = []
        self.permissions = ["self.manage", "sms.send"]
        self.expires_in: float | None = None
        self.refuse: tuple[grpc.StatusCode, str] | None = None

    async def ResolveSession(self, request, *, timeout=None, metadata=()):  # type: ignore[no-untyped-def]
        self.requests.append(request)
        if self.refuse is not None:
            code, reason = self.refuse
            trailing = grpc.aio.Metadata(*status_for(code, reason, "no", {"account_id": "42"}).trailing_metadata)
            raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details="no")
        resp = auth_service_pb2.ResolveSessionResponse(
            session_id="ses_1", account_id=42, user_id=7, username="ann", permissions=self.permissions)
        if self.expires_in is not None:
            resp.expire_time.FromNanoseconds(int((time.time() + self.expires_in) * 1e9))
        return resp


@pytest.fixture
def parts() -> tuple[FakeSessions, Clock, Authenticator]:
    sessions, clock = FakeSessions(), Clock()
    auth = Authenticator(object(), object(), cache_seconds=CACHE_SECONDS, sessions=sessions, clock=clock)  # type: ignore[arg-type]
    return sessions, clock, auth


async def test_identity_sees_the_client_address_of_each_new_place_a_session_is_used_from(parts) -> None:  # type: ignore[no-untyped-def]
    sessions, _, auth = parts
    await auth.authenticate(f"Bearer {TOKEN}", client_address="192.0.2.1")
    await auth.authenticate(f"Bearer {TOKEN}", client_address="192.0.2.1")  # cached for this address
    await auth.authenticate(f"Bearer {TOKEN}", client_address="198.51.100.7")  # a new address: asked again
    assert [r.client_address for r in sessions.requests] == ["192.0.2.1", "198.51.100.7"]


async def test_a_policy_change_shows_within_the_cache_bound(parts) -> None:  # type: ignore[no-untyped-def]
    sessions, clock, auth = parts
    assert "sms.send" in (await auth.authenticate(f"Bearer {TOKEN}", client_address="192.0.2.1")).permissions
    sessions.permissions = ["account.read", "self.manage"]  # the account now requires a second factor
    clock.now += CACHE_SECONDS - 0.1
    assert "sms.send" in (await auth.authenticate(f"Bearer {TOKEN}", client_address="192.0.2.1")).permissions
    clock.now += 0.2  # past the bound: identity's answer now
    held = await auth.authenticate(f"Bearer {TOKEN}", client_address="192.0.2.1")
    assert held.permissions == {"account.read", "self.manage"}
    sessions.refuse = (grpc.StatusCode.UNAUTHENTICATED, "SESSION_INVALID")  # revoked by the change
    clock.now += CACHE_SECONDS + 0.1
    with pytest.raises(AuthFailure) as err:
        await auth.authenticate(f"Bearer {TOKEN}", client_address="192.0.2.1")
    assert (err.value.reason, err.value.http_status) == ("INVALID_CREDENTIALS", 401)


async def test_a_cached_session_never_outlives_its_expiry(parts) -> None:  # type: ignore[no-untyped-def]
    sessions, clock, auth = parts
    sessions.expires_in = 1.0  # the account's lifetime ends it in a second, well inside the cache's 3 s
    first = await auth.authenticate(f"Bearer {TOKEN}", client_address="192.0.2.1")
    assert first.cache_for is not None and 0 < first.cache_for <= 1.0
    clock.now += 1.01
    await auth.authenticate(f"Bearer {TOKEN}", client_address="192.0.2.1")
    assert len(sessions.requests) == 2  # asked again once the session's own end passed


async def test_a_session_used_from_outside_its_networks_is_a_403_that_says_why(parts) -> None:  # type: ignore[no-untyped-def]
    sessions, _, auth = parts
    sessions.refuse = (grpc.StatusCode.PERMISSION_DENIED, "NETWORK_NOT_ALLOWED")
    with pytest.raises(AuthFailure) as err:
        await auth.authenticate(f"Bearer {TOKEN}", client_address="198.51.100.7")
    assert (err.value.reason, err.value.http_status, err.value.account_id) == ("NETWORK_NOT_ALLOWED", 403, 42)
