"""The gateway's auth cache against the real keys service and Redis: a cached key is refused as soon as the
revocation notice arrives (the cache's clock is frozen, so nothing else could have expired it), and without
notices at the end of the bounded cache time."""

from __future__ import annotations

import asyncio
import base64

import pytest

from gateway.auth import Authenticator, AuthFailure
from sendsafe.context.v1 import principal_pb2
from sendsafe.identity.v1 import account_pb2, identity_service_pb2
from sendsafe.keys.v1 import keys_service_pb2 as pb
from sendsafe.keys.v1 import keys_service_pb2_grpc
from svckit.app import App
from svckit.keyevents import API_KEYS_CHANGED, Subscriber
from svckit.redisconn import make_redis
from tests.conftest import channel_as
from tests.support import CertBundle, stepped_up_now


class FrozenClock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


class Identity:
    async def GetUser(self, request, *, timeout=None, metadata=()):  # type: ignore[no-untyped-def]
        return identity_service_pb2.GetUserResponse(user=account_pb2.User(
            user_id=request.user_id, account_id=77, api_username="carol", active=True,
            permissions=["account.read", "api_keys.write"],
        ))


class CountingKeys:
    def __init__(self, stub: keys_service_pb2_grpc.KeysServiceStub) -> None:
        self.stub = stub
        self.calls = 0

    def VerifyApiKey(self, request, **kw):  # type: ignore[no-untyped-def]
        self.calls += 1
        return self.stub.VerifyApiKey(request, **kw)


def _basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"carol:{key}".encode()).decode()


async def _new_key(stub: keys_service_pb2_grpc.KeysServiceStub) -> pb.CreateApiKeyResponse:
    p = principal_pb2.Principal(account_id=77, user_id=5, permissions=["account.read", "api_keys.write"],
                                auth_method=principal_pb2.AUTH_METHOD_SESSION, mfa_time=stepped_up_now())
    return await stub.CreateApiKey(pb.CreateApiKeyRequest(name="c", scopes=["*"]),
                                   metadata=(("x-sendsafe-principal-bin", p.SerializeToString()),))


@pytest.mark.parametrize("notices", [True, False], ids=["with-notices", "cache-time-only"])
async def test_a_revoked_key_leaves_the_gateway_cache(
    keys_app: App, certs: CertBundle, redis_url: str, redis_prefix: str, notices: bool
) -> None:
    clock = FrozenClock()
    async with channel_as(certs, "gateway", keys_app.port, "keys") as ch:
        stub = keys_service_pb2_grpc.KeysServiceStub(ch)
        keys = CountingKeys(stub)
        auth = Authenticator(keys, Identity(), cache_seconds=5.0, clock=clock)  # the hard maximum
        redis = make_redis(redis_url)
        follower = Subscriber(redis, redis_prefix, on_notice=auth.on_key_notice, on_resync=auth.cache.clear,
                              kinds=(API_KEYS_CHANGED,))
        if notices:
            follower.start()
            assert await follower.wait_ready()
        try:
            made = await _new_key(stub)
            for _ in range(3):
                assert (await auth.authenticate(_basic(made.secret), client_address="203.0.113.4")).user_id == 5
            assert keys.calls == 1  # the cache holds it
            async with channel_as(certs, "identity", keys_app.port, "keys") as ich:
                await keys_service_pb2_grpc.KeysServiceStub(ich).RevokeUserApiKeys(
                    pb.RevokeUserApiKeysRequest(account_id=77, user_id=5, reason="user_disabled"))
            if notices:
                # The clock is frozen: only the notice can make the cache let go.
                async with asyncio.timeout(5):
                    while auth.cache.invalidations == 0:
                        await asyncio.sleep(0.01)
            else:
                assert (await auth.authenticate(_basic(made.secret), client_address="203.0.113.4")).user_id == 5
                clock.now += 5.0  # no notices: the bounded cache time is the backstop
            with pytest.raises(AuthFailure) as info:
                await auth.authenticate(_basic(made.secret), client_address="203.0.113.4")
            assert (info.value.reason, info.value.api_key_id) == ("API_KEY_REVOKED", made.api_key.key_id)
            assert keys.calls == 2
        finally:
            await follower.close()
            await redis.aclose()
