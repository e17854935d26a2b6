"""Unauthenticated requests at the real gateway (real TLS, aiohttp, mTLS to the fake backends): limited per
client network before they reach the audit log, and repeated identical failures recorded as one event with a
count (issue 12, "Limits that hold"). Each test runs its own gateway with small limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import aiohttp

from gateway.app import build
from sendsafe.audit.v1 import event_pb2
from tests.integration.gateway.gw_support import ALICE, Backends, basic, gateway_settings
from tests.support import CertBundle

BAD = basic("nobody", "ssk_test_garbage_0123456789abcdef0123456")


async def _gateway(certs: CertBundle, backends: Backends, **settings: object) -> AsyncIterator[str]:
    gateway = await build(gateway_settings(certs, backends, **settings))
    await gateway.start()
    try:
        yield f"https://localhost:{gateway.port}"
    finally:
        await gateway.stop()


async def _get(http: aiohttp.ClientSession, url: str, path: str, headers: dict[str, str]) -> tuple[int, dict, str]:
    async with http.get(url + path, headers=headers) as resp:
        return resp.status, dict(resp.headers), (await resp.read()).decode()


async def _until(events: Callable[[], list[event_pb2.Event]], ok: Callable[[list[event_pb2.Event]], bool],
                 deadline_s: float = 10.0) -> list[event_pb2.Event]:
    end = time.monotonic() + deadline_s
    while True:
        got = events()
        if ok(got) or time.monotonic() > end:
            return got
        await asyncio.sleep(0.05)


def _mine(backends: Backends, path: str) -> Callable[[], list[event_pb2.Event]]:
    return lambda: [e for e in backends.audit.events if e.resource.id == path or e.details.get("route") == path]


async def test_n_identical_failures_are_one_event_with_a_count(
    certs: CertBundle, gw_backends: Backends, http: aiohttp.ClientSession
) -> None:
    n = 25
    path = "/v3/sms/history"
    async for url in _gateway(certs, gw_backends, unauth_limit=1000, unauth_dedup_seconds=1.0):
        before = len(_mine(gw_backends, path)())
        for _ in range(n):
            status, _, _ = await _get(http, url, path, BAD)
            assert status == 401
        got = await _until(_mine(gw_backends, path), lambda evs, start=before: len(evs) - start >= 2)
        new = got[before:]
        first, summary = new  # not n events: the first at once, one summary when the window closed
        assert first.action == "gateway.unauthenticated" and first.details["count"] == "1"
        assert summary.details["count"] == str(n) and summary.details["summarises"] == first.event_id
        assert summary.error_reason == first.error_reason == "INVALID_CREDENTIALS"
        assert summary.source.client_address == "127.0.0.1"
        # A valid key from the same network is still served and recorded on its own.
        status, _, _ = await _get(http, url, "/v3/account", ALICE)
        assert status == 200


async def test_the_limit_answers_429_with_retry_after_and_valid_keys_still_work(
    certs: CertBundle, gw_backends: Backends, http: aiohttp.ClientSession
) -> None:
    limit = 5
    path = "/v1/audit/events"
    async for url in _gateway(certs, gw_backends, unauth_limit=limit, unauth_window_seconds=3600,
                              unauth_dedup_seconds=3600):
        before = len(_mine(gw_backends, path)())
        statuses = [(await _get(http, url, path, BAD))[0] for _ in range(limit)]
        assert statuses == [401] * limit
        status, headers, body = await _get(http, url, path, BAD)
        assert status == 429 and '"UNAUTHENTICATED_RATE_LIMITED"' in body
        assert 1 <= int(headers["Retry-After"]) <= 3600
        status, _, _ = await _get(http, url, "/nowhere", {})  # unknown routes count too
        assert status == 429
        assert (await _get(http, url, "/v3/account", ALICE))[0] == 200  # real credentials are never refused
        for _ in range(20):
            assert (await _get(http, url, path, BAD))[0] == 429
    # Stopped: every open window was summarised on shutdown, nothing lost, and no event per request.
    new = _mine(gw_backends, path)()[before:]
    by_reason: dict[str, list[event_pb2.Event]] = {}
    for e in new:
        by_reason.setdefault(e.error_reason, []).append(e)
    assert sorted(by_reason) == ["INVALID_CREDENTIALS", "UNAUTHENTICATED_RATE_LIMITED"]
    assert [e.details["count"] for e in by_reason["INVALID_CREDENTIALS"]] == ["1", str(limit)]
    assert [e.details["count"] for e in by_reason["UNAUTHENTICATED_RATE_LIMITED"]] == ["1", "21"]
    assert all(e.details["http_status"] == "429" for e in by_reason["UNAUTHENTICATED_RATE_LIMITED"])
