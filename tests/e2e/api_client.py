"""Tiny HTTPS helpers for e2e tests: raw calls (for error paths), the official ClickSend SDK, and polling."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import urllib3

T = TypeVar("T")


def until(fetch: Callable[[], T], ok: Callable[[T], bool], what: str, deadline_s: float = 30.0) -> T:
    """Poll observable state (`fetch`) until `ok` holds, failing the test after the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        value = fetch()
        if ok(value):
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}: {value!r:.300}")
        time.sleep(0.2)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Http:
    def __init__(self, base_url: str, ca: str) -> None:
        self.base = base_url.rstrip("/")
        self.pool = urllib3.PoolManager(ca_certs=ca, cert_reqs="CERT_REQUIRED", retries=False, timeout=30)

    def call(
        self, method: str, path: str, *, auth: tuple[str, str] | None = None, body: bytes | None = None,
        json_body: Any = None, headers: dict[str, str] | None = None,
    ) -> Response:
        h = {"Accept": "application/json", **(headers or {})}
        if auth is not None:
            h["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        if json_body is not None:
            body = json.dumps(json_body).encode()
            h.setdefault("Content-Type", "application/json")
        r = self.pool.request(method, self.base + path, body=body, headers=h)
        return Response(r.status, {k.lower(): v for k, v in r.headers.items()}, r.data)


def sdk_client(url: str, username: str, api_key: str, ca: str) -> Any:
    import clicksend

    conf = clicksend.Configuration(host=url, username=username, password=api_key, ssl_ca_cert=ca, retries=False)
    return clicksend.ApiClient(conf)
