"""The shared mechanisms every service imports from svckit: the TTL cache, ClickSend paging and reading
ErrorInfo back from a failed call (its path through a real server is covered by every integration test
that checks a reason)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from svckit.errors import ERROR_DOMAIN
from svckit.paging import InvalidPaging, PageWindow, clicksend_paging, page_window
from svckit.rpcstatus import error_info, error_metadata, error_reason
from svckit.ttlcache import TtlCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- TtlCache ------------------------------------------------------------------------------------------------


def test_entries_expire_after_ttl() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(10.0, 5, clock)
    cache.put("a", 1)
    clock.now += 9.9
    assert cache.get("a") == 1
    clock.now += 0.1
    assert cache.get("a") is None
    assert len(cache) == 0


def test_least_recently_used_is_evicted_first() -> None:
    cache: TtlCache[str, int] = TtlCache(None, 2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)
    assert cache.keys() == ["a", "c"]


def test_a_shorter_ttl_per_entry_is_kept_and_never_extends_the_cache_ttl() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(10.0, 5, clock)
    cache.put("short", 1, ttl=2.0)
    cache.put("long", 2, ttl=60.0)
    cache.put("none", 3, ttl=0.0)
    assert cache.get("none") is None
    clock.now += 2.0
    assert cache.get("short") is None
    assert cache.get("long") == 2
    clock.now += 8.0
    assert cache.get("long") is None


def test_pop_where_drops_matching_entries_and_counts_them() -> None:
    cache: TtlCache[tuple[int, int], str] = TtlCache(None, 10)
    for account in (1, 2):
        for version in (1, 2):
            cache.put((account, version), f"{account}/{version}")
    assert cache.pop_where(lambda key, _v: key[0] == 1) == 2
    assert sorted(cache.keys()) == [(2, 1), (2, 2)]
    assert cache.invalidations == 2
    cache.pop((2, 1))
    cache.clear()
    assert len(cache) == 0 and cache.invalidations == 4


async def test_concurrent_loads_of_one_key_share_one_load() -> None:
    cache: TtlCache[str, int] = TtlCache(60.0, 10)
    calls = 0
    release = asyncio.Event()

    async def load() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return 7

    waiters = [asyncio.create_task(cache.get_or_load("k", load)) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiters) == [7] * 5
    assert calls == 1
    assert (cache.misses, cache.hits) == (1, 4)
    assert await cache.get_or_load("k", load) == 7 and calls == 1


async def test_a_load_running_across_an_invalidation_is_not_cached() -> None:
    cache: TtlCache[str, int] = TtlCache(60.0, 10)
    started, release = asyncio.Event(), asyncio.Event()

    async def load() -> int:
        started.set()
        await release.wait()
        return 1

    task = asyncio.create_task(cache.get_or_load("k", load))
    await started.wait()
    cache.clear()
    release.set()
    assert await task == 1
    assert cache.get("k") is None


async def test_a_failed_load_is_raised_to_every_waiter_and_not_cached() -> None:
    cache: TtlCache[str, int] = TtlCache(60.0, 10)
    release = asyncio.Event()

    async def load() -> int:
        await release.wait()
        raise RuntimeError("boom")

    tasks = [asyncio.create_task(cache.get_or_load("k", load)) for _ in range(2)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert len(cache) == 0


async def test_the_first_caller_giving_up_does_not_fail_the_others_waiting() -> None:
    """A cancelled first caller (client gone, deadline) cancels only its own wait, not the shared load."""
    cache: TtlCache[str, int] = TtlCache(60.0, 10)
    started, release = asyncio.Event(), asyncio.Event()
    calls = 0

    async def load() -> int:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return 9

    first = asyncio.create_task(cache.get_or_load("k", load))
    await started.wait()
    second = asyncio.create_task(cache.get_or_load("k", load))
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    assert await second == 9
    assert first.cancelled() and calls == 1
    assert cache.get("k") == 9


async def test_ttl_of_the_loaded_value_caps_its_life() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(60.0, 10, clock)

    async def load() -> int:
        return 5

    await cache.get_or_load("k", load, ttl_of=lambda v: float(v))
    clock.now += 5
    assert cache.get("k") is None


# -- paging --------------------------------------------------------------------------------------------------


def test_page_window_defaults_and_bounds() -> None:
    assert page_window(0, 0) == PageWindow(page=1, limit=15)
    assert page_window(3, 100).offset == 200
    for page, limit in ((-1, 15), (1, 14), (1, 101), (1, -5)):
        with pytest.raises(InvalidPaging) as err:
            page_window(page, limit)
        assert err.value.reason == "INVALID_PAGING"
    with pytest.raises(InvalidPaging) as err:
        page_window(1, 101)
    assert err.value.metadata == {"min_limit": "15", "max_limit": "100"}


def test_clicksend_paging_fields() -> None:
    middle = clicksend_paging(PageWindow(page=2, limit=15), total=40, count=15)
    assert middle == {
        "total": 40, "per_page": 15, "current_page": 2, "last_page": 3,
        "next_page_url": "/?page=3", "prev_page_url": "/?page=1", "first_index": 16, "last_index": 30,
    }
    empty = clicksend_paging(PageWindow(page=1, limit=15), total=0, count=0)
    assert empty == {"total": 0, "per_page": 15, "current_page": 1, "last_page": 1}


# -- ErrorInfo -----------------------------------------------------------------------------------------------


class FailedCall(grpc.RpcError):
    """What a failed call exposes (grpc.aio.AioRpcError has the same three methods)."""

    def __init__(self, code: grpc.StatusCode, message: str, trailing: tuple[tuple[str, bytes], ...]) -> None:
        self._code, self._message, self._trailing = code, message, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return self._trailing


def _failed(code: grpc.StatusCode, message: str, reason: str, **metadata: str) -> FailedCall:
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata))
    return FailedCall(code, message, (("grpc-status-details-bin", status.SerializeToString()),))


def test_error_info_is_read_from_the_status_details() -> None:
    err = _failed(grpc.StatusCode.RESOURCE_EXHAUSTED, "Slow down.", "RATE_LIMITED", retry_after_seconds="3")
    info = error_info(err)
    assert info is not None and info.domain == ERROR_DOMAIN
    assert error_reason(err) == "RATE_LIMITED"
    assert error_metadata(err) == {"retry_after_seconds": "3"}


@pytest.mark.parametrize(
    "err",
    [
        FailedCall(grpc.StatusCode.UNAVAILABLE, "connection refused", ()),
        FailedCall(grpc.StatusCode.INTERNAL, "x", (("grpc-status-details-bin", b"\xff\xfe not a status"),)),
        # a trailer that contradicts the call's own code (a proxy rewrote it) is not believed
        FailedCall(grpc.StatusCode.INTERNAL, "Slow down.",
                   _failed(grpc.StatusCode.RESOURCE_EXHAUSTED, "Slow down.", "RATE_LIMITED").trailing_metadata()),
        ValueError("not a call at all"),
    ],
)
def test_missing_or_untrustworthy_details_read_as_absent(err: object) -> None:
    assert error_info(err) is None
    assert error_reason(err) == ""
    assert error_metadata(err) == {}


# -- settings ------------------------------------------------------------------------------------------------


def test_a_settings_repr_never_shows_a_secret() -> None:
    import services.messaging.config as messaging_config
    from svckit import config

    env = {"SERVICE_NAME": "messaging", "TLS_CERT_FILE": "c", "TLS_KEY_FILE": "k", "TLS_CA_FILE": "a",
           "DATABASE_URL": "postgresql://u:db-pass-123@h/d", "MESSAGING_SMTP_PASSWORD": "smtp-pass-456",
           "KEYS_ADDR": "127.0.0.1:1"}
    settings = config.load(messaging_config.Settings, env)
    assert settings.database_url.endswith("db-pass-123@h/d")  # read, not lost
    shown = repr(settings)
    assert "service_name='messaging'" in shown
    assert "db-pass-123" not in shown and "smtp-pass-456" not in shown
