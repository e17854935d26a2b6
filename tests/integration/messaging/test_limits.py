"""Rate limits in real Redis (the Lua script) and through the messaging API: whole-request 429s with
Retry-After metadata, per-key send limits and countries, destination-prefix velocity."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as aioredis
from google.rpc import error_details_pb2, status_pb2

from sendsafe.context.v1 import principal_pb2
from sendsafe.messaging.v1 import messaging_service_pb2 as pb
from services.messaging.adapters.limits import RedisLimiter
from services.messaging.config import Settings
from services.messaging.domain.limits import Bucket, LimitRequest, Velocity
from svckit.redisconn import make_redis
from tests.integration.messaging.conftest import Messaging, principal_md
from tests.integration.messaging.test_api import TEST_NUMBER, reason_of, sms, stub_for
from tests.support import CertBundle


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = make_redis(redis_url)
    yield client
    await client.aclose()


def req(n: int, *buckets: Bucket, velocity: Velocity | None = None) -> LimitRequest:
    return LimitRequest(tuple(buckets), tuple(velocity for _ in range(n)))


def info_of(err: grpc.aio.AioRpcError) -> dict[str, str]:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for d in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if d.Unpack(info):
                    return dict(info.metadata)
    return {}


async def test_token_bucket_is_all_or_nothing_and_says_how_long_to_wait(redis, redis_prefix: str) -> None:  # type: ignore[no-untyped-def]
    lim = RedisLimiter(redis, redis_prefix)
    bucket = Bucket("account:1", capacity=1000, rate=100.0)
    (ok,) = await lim.check([req(600, bucket)])
    assert ok.retry_after == 0
    (refused,) = await lim.check([req(600, bucket)])
    assert 1.0 < refused.retry_after <= 2.1 and refused.exceeded == "account"  # 200 missing at 100/s
    (fits,) = await lim.check([req(400, bucket)])  # the refusal consumed nothing
    assert fits.retry_after == 0
    (never,) = await lim.check([req(1001, bucket)])
    assert never.retry_after == -1


async def test_windows_and_buckets_are_checked_together(redis, redis_prefix: str) -> None:  # type: ignore[no-untyped-def]
    lim = RedisLimiter(redis, redis_prefix)
    account = Bucket("account:2", capacity=1000, rate=10.0)
    day = Bucket("key_day:k2", capacity=5, window=86_400)
    assert (await lim.check([req(3, account, day)]))[0].retry_after == 0
    (over,) = await lim.check([req(3, account, day)])
    assert over.exceeded == "key_day" and over.retry_after > 0
    tokens = float(await redis.hget(redis_prefix + "account:2", "t"))
    assert 996 < tokens <= 997.1  # only the first request's 3 were taken
    assert (await lim.check([req(2, account, day)]))[0].retry_after == 0
    assert (await lim.check([req(6, account, day)]))[0].retry_after == -1


async def test_a_group_is_decided_in_order(redis, redis_prefix: str) -> None:  # type: ignore[no-untyped-def]
    lim = RedisLimiter(redis, redis_prefix)
    minute = Bucket("key_minute:k3", capacity=10, window=60)
    verdicts = await lim.check([req(6, minute), req(6, minute), req(4, minute)])
    assert [v.retry_after == 0 for v in verdicts] == [True, False, True]


async def test_velocity_throttles_the_messages_past_the_limit_only(redis, redis_prefix: str) -> None:  # type: ignore[no-untyped-def]
    lim = RedisLimiter(redis, redis_prefix)
    v = Velocity("prefix:4:tok", limit=3, window=60)
    account = Bucket("account:4", capacity=1000, rate=1.0)
    mixed = LimitRequest((account,), (v, None, v, v, v, v))
    (first,) = await lim.check([mixed])
    assert first.throttled == (False, False, False, False, True, True)
    tokens = float(await redis.hget(redis_prefix + "account:4", "t"))
    assert 995 < tokens <= 996.1  # 3 allowed + 1 exempt drew from the bucket; the throttled did not
    (second,) = await lim.check([req(2, account, velocity=v)])
    assert second.throttled == (True, True)
    other = Velocity("prefix:4:other", limit=3, window=60)
    assert (await lim.check([req(2, account, velocity=other)]))[0].throttled == (False, False)


async def test_redis_down_means_fail_open() -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    try:
        (v,) = await RedisLimiter(dead, "x:", timeout=1.0).check([req(2, Bucket("account:1", 1000, 1.0))])
        assert v.retry_after == 0 and v.throttled == (False, False)
    finally:
        await dead.aclose()


# -- through the API --------------------------------------------------------------------------------------


@pytest.fixture
async def limited(messaging_settings: Settings) -> AsyncIterator[Messaging]:
    from services.messaging.app import build

    settings = dataclasses.replace(messaging_settings, account_rate=1.0, account_burst=1000, key_rate=1.0,
                                   key_burst=1000, prefix_limit=2)
    api = await build(settings)
    yield Messaging(settings, api, None)  # type: ignore[arg-type]
    await api.stop()


async def test_api_answers_429_with_retry_after_and_stores_nothing(limited: Messaging, certs: CertBundle) -> None:
    ch, stub = stub_for(limited, certs)
    async with ch:
        full = await stub.SendSms(pb.SendSmsRequest(messages=[sms(TEST_NUMBER, "x")] * 1000),  # type: ignore[attr-defined]
                                  metadata=principal_md(8801))
        assert full.queued_count == 1000
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SendSms(pb.SendSmsRequest(messages=[sms(TEST_NUMBER, "x")] * 5),  # type: ignore[attr-defined]
                               metadata=principal_md(8801))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert reason_of(err.value) == "TOO_MANY_REQUESTS"
        meta = info_of(err.value)
        assert meta["limit"] in ("account", "api_key") and 1 <= int(meta["retry_after_seconds"]) <= 5
        assert await limited.pool.fetchval("SELECT count(*) FROM messages WHERE account_id = 8801") == 1000


async def test_api_key_send_limits_and_countries(limited: Messaging, certs: CertBundle) -> None:
    limits = principal_pb2.SendLimits(messages_per_minute=3, allowed_countries=["AU"])
    md = principal_md(8802, api_key_id="key-8802", limits=limits)
    ch, stub = stub_for(limited, certs)
    async with ch:
        r = await stub.SendSms(pb.SendSmsRequest(messages=[  # type: ignore[attr-defined]
            sms(TEST_NUMBER, "a"), sms("+14155550123", "b"), sms(TEST_NUMBER, "c")]), metadata=md)
        assert [m.status for m in r.messages] == ["SUCCESS", "COUNTRY_NOT_ALLOWED", "SUCCESS"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SendSms(pb.SendSmsRequest(messages=[sms(TEST_NUMBER, "d")] * 2),  # type: ignore[attr-defined]
                               metadata=md)
        assert reason_of(err.value) == "SEND_LIMIT_EXCEEDED" and info_of(err.value)["limit"] == "key_minute"
        with pytest.raises(grpc.aio.AioRpcError) as never:
            await stub.SendSms(pb.SendSmsRequest(messages=[sms(TEST_NUMBER, "e")] * 4),  # type: ignore[attr-defined]
                               metadata=md)
        assert reason_of(never.value) == "SEND_LIMIT_EXCEEDED" and "retry_after_seconds" not in info_of(never.value)
        # Another key of the same account has its own limits.
        other = await stub.SendSms(pb.SendSmsRequest(messages=[sms(TEST_NUMBER, "f")] * 4),  # type: ignore[attr-defined]
                                   metadata=principal_md(8802, api_key_id="key-other"))
        assert other.queued_count == 4


async def test_api_throttles_a_pumped_prefix_per_message(limited: Messaging, certs: CertBundle) -> None:
    ch, stub = stub_for(limited, certs)
    async with ch:
        pumped = [sms(f"+614123456{n:02d}", "code 1234") for n in range(4)]
        r = await stub.SendSms(pb.SendSmsRequest(messages=[*pumped, sms("+61498765432", "hi")]),  # type: ignore[attr-defined]
                               metadata=principal_md(8803))
        assert [m.status for m in r.messages] == ["SUCCESS", "SUCCESS", "THROTTLED", "THROTTLED", "SUCCESS"]
        assert r.queued_count == 3 and r.blocked_count == 2
        assert r.total_price == pytest.approx(3 * 0.077)
        rows = await limited.pool.fetchval("SELECT count(*) FROM messages WHERE account_id = 8803")
        assert rows == 3
