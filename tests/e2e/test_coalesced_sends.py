"""Concurrent single sends through the real HTTPS gateway travel to messaging in batch calls (issue 17,
svckit.batching), and each request is still answered, checked and counted on its own: its own message id and
status, its own refusal, its own idempotent replay, and one SendSms in messaging's RPC metrics per request."""

from __future__ import annotations

import asyncio
import base64
import ssl
import urllib.request
import uuid
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Customer
from tools.suite import Suite

SEND = "/sendsafe.messaging.v1.MessagingService/SendSms"
BATCH = "/sendsafe.batch.v1.BatchService/CallBatch"


def _rpc_counts(suite: Suite) -> dict[tuple[str, str], float]:
    port = suite.metrics_ports()["messaging"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    counts: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "sendsafe_rpc_requests_total":
                key = (s.labels["method"], s.labels.get("reason", "") or s.labels["code"])
                counts[key] = counts.get(key, 0.0) + s.value
    return counts


async def _send_all(customer: Customer, bodies: list[dict[str, Any]], headers: list[dict[str, str]]
                    ) -> list[tuple[int, dict[str, Any]]]:
    ctx = ssl.create_default_context(cafile=str(customer.ca))
    auth = base64.b64encode(f"{customer.username}:{customer.api_key}".encode()).decode()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=64)) as session:

        async def one(body: dict[str, Any], extra: dict[str, str]) -> tuple[int, dict[str, Any]]:
            async with session.post(f"{customer.url}/v3/sms/send", json=body,
                                    headers={"Authorization": f"Basic {auth}", **extra}) as resp:
                return resp.status, await resp.json()

        return await asyncio.gather(*(one(b, h) for b, h in zip(bodies, headers, strict=True)))


def test_concurrent_single_sends_are_batched_and_answered_one_by_one(customer: Customer, suite: Suite) -> None:
    before = _rpc_counts(suite)
    n = 40
    retry = {"Idempotency-Key": uuid.uuid4().hex}
    bodies = [{"messages": [{"to": "+61411111111", "body": f"coalesced {i}", "custom_string": f"c{i}"}]}
              for i in range(n)]
    bodies += [{"messages": [{"to": "+61411111111", "body": "retried"}]}] * 2
    bodies += [{"messages": [{"to": "not a number", "body": "refused"}]}]
    headers = [{} for _ in range(n)] + [retry, retry] + [{}]
    answers = asyncio.run(_send_all(customer, bodies, headers))

    assert [status for status, _ in answers] == [200] * (n + 3)
    messages = [a["data"]["messages"][0] for _, a in answers]
    assert all(m["status"] == "SUCCESS" for m in messages[: n + 2])
    # Each request got its own message back, not a neighbour's from the same batch.
    assert [m["custom_string"] for m in messages[:n]] == [f"c{i}" for i in range(n)]
    assert len({m["message_id"] for m in messages[:n]}) == n
    assert messages[n]["message_id"] == messages[n + 1]["message_id"]  # one idempotent send, answered twice
    assert messages[-1]["status"] == "INVALID_RECIPIENT"

    after = _rpc_counts(suite)
    sends = after.get((SEND, "OK"), 0) - before.get((SEND, "OK"), 0)
    batches = after.get((BATCH, "OK"), 0) - before.get((BATCH, "OK"), 0)
    assert sends == n + 3  # each request is still one SendSms in the callee's own metrics
    assert 1 <= batches <= n + 3  # and every one of them travelled inside a batch call
