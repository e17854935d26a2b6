"""RFC 9470 step-up at the gateway: a privileged route on a session needs a second factor within max_age; the
challenge is the exact `WWW-Authenticate` header; a step-up shows at once, past the auth cache. (End to end with
real services: tests/e2e/test_identity_staff.py.)"""

from __future__ import annotations

import time

from google.protobuf import timestamp_pb2

from gateway.auth import Authenticator, Identity, second_factor_within
from gateway.config import Settings
from gateway.errors import step_up_required
from sendsafe.context.v1 import principal_pb2
from sendsafe.identity.v1 import auth_service_pb2

TOKEN = "ss_sess_" + "a" * 43
CHALLENGE = (
    'Bearer error="insufficient_user_authentication", error_description="A second factor is required", max_age=300'
)


def _ts(when: float) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(int(when * 1e9))
    return t


def _session(mfa_time: float | None) -> Identity:
    return Identity(
        account_id=1, user_id=2, api_username="ann", auth_method=principal_pb2.AUTH_METHOD_SESSION,
        permissions=frozenset({"staff.accounts.read"}), session_id="ses_1", staff=True,
        mfa_time=None if mfa_time is None else _ts(mfa_time),
    )


def test_second_factor_within_max_age() -> None:
    now = 1_700_000_000.0
    assert second_factor_within(_session(now - 10), 300, now)
    assert second_factor_within(_session(now - 300), 300, now)
    assert not second_factor_within(_session(now - 300.5), 300, now)
    assert not second_factor_within(_session(None), 300, now)


def test_challenge_is_rfc9470_with_max_age() -> None:
    err = step_up_required(300)
    assert (err.http_status, err.status, err.reason) == (401, "UNAUTHENTICATED", "INSUFFICIENT_USER_AUTHENTICATION")
    assert err.headers == {"WWW-Authenticate": CHALLENGE}
    assert err.clicksend_code == "UNAUTHORIZED"


def test_max_age_defaults_to_identitys() -> None:
    from services.identity.config import Settings as IdentitySettings

    gateway_default = Settings.__dataclass_fields__["step_up_max_age_seconds"].default
    identity_default = IdentitySettings.__dataclass_fields__["step_up_max_age_seconds"].default
    assert gateway_default == identity_default == 300


class FakeSessions:
    def __init__(self) -> None:
        self.calls = 0
        self.mfa_time = time.time() - 600

    async def ResolveSession(self, request, *, timeout=None, metadata=()):  # type: ignore[no-untyped-def]
        self.calls += 1
        assert request.session_token == TOKEN
        resp = auth_service_pb2.ResolveSessionResponse(
            session_id="ses_1", account_id=1, user_id=2, username="ann", staff=True, permissions=["self.manage"]
        )
        resp.mfa_time.CopyFrom(_ts(self.mfa_time))
        return resp


async def test_reauthenticate_sees_a_step_up_the_cache_would_hide() -> None:
    sessions = FakeSessions()
    auth = Authenticator(object(), object(), cache_seconds=5, sessions=sessions)  # type: ignore[arg-type]
    stale = await auth.authenticate(f"Bearer {TOKEN}")
    assert not second_factor_within(stale, 300)
    sessions.mfa_time = time.time()  # POST /v1/auth/step-up happened
    assert not second_factor_within(await auth.authenticate(f"Bearer {TOKEN}"), 300)  # cached
    assert sessions.calls == 1
    fresh = await auth.reauthenticate(f"Bearer {TOKEN}")
    assert second_factor_within(fresh, 300) and sessions.calls == 2
    assert second_factor_within(await auth.authenticate(f"Bearer {TOKEN}"), 300) and sessions.calls == 2


def test_a_services_step_up_refusal_is_the_same_challenge() -> None:
    """Every service's guard checks the step-up age too; its refusal reaches the client as the gateway's own."""
    import grpc

    from gateway.errors import from_rpc_error
    from svckit.server import status_for

    trailing = grpc.aio.Metadata()
    for key, value in status_for(grpc.StatusCode.UNAUTHENTICATED, "STEP_UP_REQUIRED", "needs a step-up",
                                 {"max_age": "300"}).trailing_metadata:
        trailing.add(key, value)
    err = from_rpc_error(grpc.aio.AioRpcError(grpc.StatusCode.UNAUTHENTICATED, grpc.aio.Metadata(), trailing))
    assert err == step_up_required(300)
    assert err.headers == {"WWW-Authenticate": CHALLENGE}
