"""Authentication logic: verification steps, permissions, cache (TTL, failures, no raw key), client address.

The credential services are replaced by small in-memory stubs here; the integration tests run the
same code against real gRPC servers over mTLS.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress

import grpc
import pytest

from gateway.auth import Authenticator, AuthFailure
from gateway.errors import GatewayError
from gateway.principal import Connection, build_principal, client_address
from sendsafe.context.v1 import principal_pb2
from sendsafe.identity.v1 import account_pb2, identity_service_pb2
from sendsafe.keys.v1 import keys_service_pb2
from svckit.server import status_for

GOOD_KEY = "ssk_test_0123456789abcdef"


def _basic(user: str, key: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()


def _rpc_error(code: grpc.StatusCode, reason: str = "X", **meta: str) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata(*status_for(code, reason, "no", meta).trailing_metadata)
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details="no")


class FakeKeys:
    def __init__(self) -> None:
        self.calls = 0
        self.scopes: list[str] = []
        self.error: grpc.aio.AioRpcError | None = None
        self.delay = 0.0
        self.valid_for: float | None = None
        self.limits: keys_service_pb2.SendLimits | None = None
        self.requests: list[keys_service_pb2.VerifyApiKeyRequest] = []

    async def VerifyApiKey(self, request, *, timeout=None, metadata=()):
        self.calls += 1
        self.requests.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        if request.api_key != GOOD_KEY:
            raise _rpc_error(grpc.StatusCode.UNAUTHENTICATED, "INVALID_API_KEY")
        resp = keys_service_pb2.VerifyApiKeyResponse(key_id="key_1", account_id=42, user_id=7, scopes=self.scopes)
        if self.limits is not None:
            resp.send_limits.CopyFrom(self.limits)
        if self.valid_for is not None:
            resp.expire_time.GetCurrentTime()
            resp.valid_for_seconds = self.valid_for
        return resp


class FakeIdentity:
    def __init__(self) -> None:
        self.calls = 0
        self.user = account_pb2.User(
            user_id=7, account_id=42, api_username="alice", active=True, test_mode=True,
            permissions=["sms.send", "sms.read", "account.read"],
        )

    async def GetUser(self, request, *, timeout=None, metadata=()):
        self.calls += 1
        assert request.user_id == 7
        return identity_service_pb2.GetUserResponse(user=self.user)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def parts() -> tuple[FakeKeys, FakeIdentity, Clock, Authenticator]:
    keys, ident, clock = FakeKeys(), FakeIdentity(), Clock()
    return keys, ident, clock, Authenticator(keys, ident, cache_seconds=3, clock=clock)


async def test_success_and_principal(parts) -> None:
    _, _, _, auth = parts
    who = await auth.authenticate(_basic("alice", GOOD_KEY), "rid-12345678")
    assert (who.account_id, who.user_id, who.api_key_id, who.api_username) == (42, 7, "key_1", "alice")
    assert who.permissions == {"sms.send", "sms.read", "account.read"} and who.test_mode
    p = build_principal(who, Connection("203.0.113.9", "ua", "TLSv1.3", "TLS_AES_256_GCM_SHA384"), "rid-12345678")
    assert p.auth_method == principal_pb2.AUTH_METHOD_API_KEY and p.api_key_id == "key_1"
    assert list(p.permissions) == ["account.read", "sms.read", "sms.send"]
    assert (p.client_address, p.tls_version, p.request_id) == ("203.0.113.9", "TLSv1.3", "rid-12345678")
    assert GOOD_KEY.encode() not in p.SerializeToString()


async def test_scopes_narrow_permissions(parts) -> None:
    keys, _, _, auth = parts
    keys.scopes = ["sms.read", "audit.read"]  # audit.read is not the user's: not granted
    who = await auth.authenticate(_basic("alice", GOOD_KEY))
    assert who.permissions == {"sms.read"}


async def test_wildcard_scope_means_all_of_the_users_permissions(parts) -> None:
    keys, _, _, auth = parts
    keys.scopes = ["*"]
    who = await auth.authenticate(_basic("alice", GOOD_KEY))
    assert who.permissions == {"sms.send", "sms.read", "account.read"}


@pytest.mark.parametrize(
    ("header", "reason", "detail"),
    [
        (None, "MISSING_CREDENTIALS", "NO_AUTHORIZATION_HEADER"),
        ("", "MISSING_CREDENTIALS", "NO_AUTHORIZATION_HEADER"),
        ("Bearer abc", "INVALID_CREDENTIALS", "UNSUPPORTED_SCHEME"),
        ("Basic !!!", "INVALID_CREDENTIALS", "MALFORMED_BASIC"),
        ("Basic " + base64.b64encode(b"alice").decode(), "INVALID_CREDENTIALS", "MALFORMED_BASIC"),
        (_basic("alice", "wrong"), "INVALID_CREDENTIALS", "KEY_REJECTED:INVALID_API_KEY"),
        (_basic("bob", GOOD_KEY), "INVALID_CREDENTIALS", "USERNAME_MISMATCH"),
        (_basic("alice", "k" * 600), "INVALID_CREDENTIALS", "CREDENTIALS_TOO_LONG"),
    ],
)
async def test_rejections(parts, header: str | None, reason: str, detail: str) -> None:
    _, _, _, auth = parts
    with pytest.raises(AuthFailure) as exc:
        await auth.authenticate(header)
    assert (exc.value.reason, exc.value.detail) == (reason, detail)


async def test_inactive_user_and_account_mismatch(parts) -> None:
    _, ident, clock, auth = parts
    ident.user.active = False
    with pytest.raises(AuthFailure) as exc:
        await auth.authenticate(_basic("alice", GOOD_KEY))
    assert exc.value.detail == "USER_INACTIVE" and exc.value.api_key_id == "key_1" and exc.value.account_id == 42
    clock.now += 10
    ident.user.active, ident.user.account_id = True, 43
    with pytest.raises(AuthFailure) as exc:
        await auth.authenticate(_basic("alice", GOOD_KEY))
    assert exc.value.detail == "ACCOUNT_MISMATCH"


async def test_successes_and_failures_are_cached_for_the_ttl_only(parts) -> None:
    keys, ident, clock, auth = parts
    for _ in range(3):
        await auth.authenticate(_basic("alice", GOOD_KEY))
    assert keys.calls == 1 and ident.calls == 1
    for _ in range(3):
        with pytest.raises(AuthFailure):
            await auth.authenticate(_basic("alice", "wrong"))
    assert keys.calls == 2
    clock.now += 3.01
    await auth.authenticate(_basic("alice", GOOD_KEY))
    with pytest.raises(AuthFailure):
        await auth.authenticate(_basic("alice", "wrong"))
    assert keys.calls == 4
    # The cache holds digests, never the key.
    assert all(GOOD_KEY.encode() not in k and len(k) == 32 for k in auth.cache)


async def test_a_revoked_key_stops_working_within_the_ttl(parts) -> None:
    keys, _, clock, auth = parts
    await auth.authenticate(_basic("alice", GOOD_KEY))
    keys.error = _rpc_error(grpc.StatusCode.UNAUTHENTICATED, "API_KEY_REVOKED")
    await auth.authenticate(_basic("alice", GOOD_KEY))  # still cached
    clock.now += 3.01
    with pytest.raises(AuthFailure):
        await auth.authenticate(_basic("alice", GOOD_KEY))


async def test_outages_are_5xx_and_not_cached(parts) -> None:
    keys, _, _, auth = parts
    keys.error = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="connection refused"
    )
    with pytest.raises(GatewayError) as exc:
        await auth.authenticate(_basic("alice", GOOD_KEY))
    assert exc.value.http_status == 503
    keys.error = None
    assert (await auth.authenticate(_basic("alice", GOOD_KEY))).user_id == 7


async def test_gateway_not_allowed_is_a_server_error_not_a_401(parts) -> None:
    keys, _, _, auth = parts
    keys.error = _rpc_error(grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED")
    with pytest.raises(RuntimeError):
        await auth.authenticate(_basic("alice", GOOD_KEY))


async def test_concurrent_requests_share_one_verification(parts) -> None:
    keys, _, _, auth = parts
    keys.delay = 0.05
    results = await asyncio.gather(*(auth.authenticate(_basic("alice", GOOD_KEY)) for _ in range(20)))
    assert keys.calls == 1 and {r.user_id for r in results} == {7}


async def test_bearer_seam() -> None:
    auth = Authenticator(FakeKeys(), FakeIdentity(), cache_seconds=0)

    async def session(token: str, request_id: str):
        raise AuthFailure("INVALID_CREDENTIALS", "SESSION_EXPIRED")

    auth.register_scheme("Bearer", session)
    with pytest.raises(AuthFailure, match="SESSION_EXPIRED"):
        await auth.authenticate("Bearer abc")
    with pytest.raises(ValueError, match="built in"):  # API-key Basic auth cannot be swapped out
        auth.register_scheme("BASIC", session)


def test_client_address() -> None:
    trusted = (ipaddress.ip_network("10.0.0.0/8"),)
    assert client_address("203.0.113.9", ["1.2.3.4"], ()) == "203.0.113.9"  # no trusted proxies: peer
    assert client_address("203.0.113.9", ["1.2.3.4"], trusted) == "203.0.113.9"  # peer not trusted
    assert client_address("10.0.0.5", ["1.2.3.4"], trusted) == "1.2.3.4"
    # A client-forged leftmost hop is ignored: the first untrusted hop from the right wins.
    assert client_address("10.0.0.5", ["6.6.6.6, 1.2.3.4, 10.0.0.7"], trusted) == "1.2.3.4"
    assert client_address("10.0.0.5", ["garbage, 10.0.0.7"], trusted) == "10.0.0.7"
    assert client_address("10.0.0.5", [], trusted) == "10.0.0.5"


# -- API keys in depth (issue 4): reasons, allow-lists, expiry and revocation notices --------------------


async def test_reasons_of_a_real_key_pass_through(parts) -> None:
    keys, _, _, auth = parts
    for n, (code, reason, status) in enumerate((
        (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_REVOKED", 401),
        (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_EXPIRED", 401),
        (grpc.StatusCode.PERMISSION_DENIED, "API_KEY_ADDRESS_NOT_ALLOWED", 403),
    )):
        keys.error = _rpc_error(code, reason, key_id="key_1", account_id="42")
        with pytest.raises(AuthFailure) as exc:
            await auth.authenticate(_basic("alice", GOOD_KEY), client_address=f"198.51.100.{n}")
        failure = exc.value
        assert (failure.reason, failure.http_status, failure.api_key_id, failure.account_id) == (
            reason, status, "key_1", 42)
    # Anything else stays the one answer for everyone.
    keys.error = _rpc_error(grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS")
    with pytest.raises(AuthFailure) as exc:
        await auth.authenticate(_basic("alice", GOOD_KEY), client_address="198.51.100.9")
    assert (exc.value.reason, exc.value.http_status) == ("INVALID_CREDENTIALS", 401)


async def test_the_client_address_reaches_the_keys_service_and_keys_the_cache(parts) -> None:
    keys, _, _, auth = parts
    await auth.authenticate(_basic("alice", GOOD_KEY), client_address="203.0.113.1")
    await auth.authenticate(_basic("alice", GOOD_KEY), client_address="203.0.113.1")
    await auth.authenticate(_basic("alice", GOOD_KEY), client_address="203.0.113.2")
    assert [r.client_address for r in keys.requests] == ["203.0.113.1", "203.0.113.2"]
    assert all(b"203.0.113" not in d for d in auth.cache)


async def test_a_cached_answer_never_outlives_the_key(parts) -> None:
    keys, _, clock, auth = parts
    keys.valid_for = 1.5  # the key expires in 1.5 s, well inside the 3 s cache time
    await auth.authenticate(_basic("alice", GOOD_KEY))
    clock.now += 1.49
    await auth.authenticate(_basic("alice", GOOD_KEY))
    assert keys.calls == 1
    clock.now += 0.01
    keys.error = _rpc_error(grpc.StatusCode.UNAUTHENTICATED, "API_KEY_EXPIRED", key_id="key_1", account_id="42")
    with pytest.raises(AuthFailure, match="API_KEY_EXPIRED"):
        await auth.authenticate(_basic("alice", GOOD_KEY))


async def test_a_revocation_notice_empties_the_cache_at_once(parts) -> None:
    from svckit.keyevents import API_KEYS_CHANGED, KeyNotice

    keys, _, _, auth = parts
    await auth.authenticate(_basic("alice", GOOD_KEY))
    keys.error = _rpc_error(grpc.StatusCode.UNAUTHENTICATED, "API_KEY_REVOKED", key_id="key_1", account_id="42")
    await auth.authenticate(_basic("alice", GOOD_KEY))  # cached: the clock has not moved
    auth.on_key_notice(KeyNotice(API_KEYS_CHANGED, 42, ("other",), "revoked"))
    await auth.authenticate(_basic("alice", GOOD_KEY))  # another key's notice changes nothing
    auth.on_key_notice(KeyNotice(API_KEYS_CHANGED, 42, ("key_1",), "revoked"))
    with pytest.raises(AuthFailure, match="API_KEY_REVOKED"):
        await auth.authenticate(_basic("alice", GOOD_KEY))


async def test_a_verification_in_flight_during_a_notice_is_not_cached(parts) -> None:
    from svckit.keyevents import API_KEYS_CHANGED, KeyNotice

    keys, _, _, auth = parts
    keys.delay = 0.05
    pending = asyncio.create_task(auth.authenticate(_basic("alice", GOOD_KEY)))
    await asyncio.sleep(0.01)
    auth.on_key_notice(KeyNotice(API_KEYS_CHANGED, 42, ("key_1",), "revoked"))
    assert (await pending).user_id == 7  # it started before the revocation: it may answer…
    assert len(auth.cache) == 0  # …but is not remembered
    keys.delay = 0
    await auth.authenticate(_basic("alice", GOOD_KEY))
    assert keys.calls == 2


async def test_permissions_left_out_by_scope_are_known(parts) -> None:
    keys, _, _, auth = parts
    keys.scopes = ["sms.read"]
    who = await auth.authenticate(_basic("alice", GOOD_KEY))
    assert who.permissions == {"sms.read"} and who.outside_scope == {"sms.send", "account.read"}


async def test_send_limits_travel_in_the_principal(parts) -> None:
    keys, _, _, auth = parts
    assert build_principal(await auth.authenticate(_basic("alice", GOOD_KEY)), Connection("a"), "r").HasField(
        "send_limits") is False  # no limits: nothing to enforce
    keys.limits = keys_service_pb2.SendLimits(messages_per_minute=5, messages_per_day=50, allowed_countries=["AU"])
    who = await auth.authenticate(_basic("alice", GOOD_KEY), client_address="203.0.113.50")
    p = build_principal(who, Connection("203.0.113.50"), "rid-12345678")
    assert (p.send_limits.messages_per_minute, p.send_limits.messages_per_day, list(p.send_limits.allowed_countries)
            ) == (5, 50, ["AU"])


async def test_sender_limits_are_the_key_and_the_user_intersected(parts) -> None:
    """Issue 21: the principal carries the sender ids both the API key and its user may use; when both limit and
    share none, it is limited to none (never to any)."""
    keys, identity, _, auth = parts
    identity.user.allowed_senders[:] = ["Brand", "+61411111111"]
    p = build_principal(await auth.authenticate(_basic("alice", GOOD_KEY)), Connection("a"), "r")
    assert p.send_limits.senders_limited and list(p.send_limits.allowed_senders) == ["Brand", "+61411111111"]
    auth.cache.pop_where(lambda _, v: True)
    keys.limits = keys_service_pb2.SendLimits(allowed_senders=["BRAND", "Other"])
    p = build_principal(await auth.authenticate(_basic("alice", GOOD_KEY)), Connection("a"), "r")
    assert p.send_limits.senders_limited and list(p.send_limits.allowed_senders) == ["BRAND"]
    auth.cache.pop_where(lambda _, v: True)
    keys.limits = keys_service_pb2.SendLimits(allowed_senders=["Other"])
    p = build_principal(await auth.authenticate(_basic("alice", GOOD_KEY)), Connection("a"), "r")
    assert p.send_limits.senders_limited and list(p.send_limits.allowed_senders) == []
