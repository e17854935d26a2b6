"""Real local HTTPS peers for the messaging tests: a customer's webhook receiver and a generic HTTP/JSON
carrier (the protocol `services.messaging.adapters.carriers.HttpCarrier` speaks), both with the test PKI's public
certificate (SAN localhost / 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from services.messaging.domain.delivery import webhook_signature
from tests.support import CertBundle


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_tls(certs: CertBundle) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs.https_cert, certs.https_key)
    return ctx


async def _serve(app: web.Application, certs: CertBundle) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls(certs))
    await site.start()
    return runner, int(runner.addresses[0][1])


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """Answers each POST with the next status of `statuses` (then 200) and keeps what it got."""

    certs: CertBundle
    statuses: list[int] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    async def start(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self.runner, self.port = await _serve(app, self.certs)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def url(self, path: str = "/hook") -> str:
        return f"https://localhost:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.Response:
        self.hits.append(Hit(request.path, dict(request.headers), await request.read()))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok" if status < 300 else "nope")


@dataclass
class FakeCarrier:
    """`POST /messages` as a carrier would answer it, deduplicating by our message id (a resubmission gets
    the first answer and is not "delivered to a handset" again), then a signed delivery receipt to the
    message's callback URL after `receipt_delay` seconds.

    `hang` > 0: the next `hang` submissions are accepted and recorded, but the answer never comes back in
    time (the carrier took them; the client times out) -- the ambiguous failure the pipeline must survive.
    """

    certs: CertBundle
    api_key: str = "carrier-key"
    callback_secret: bytes = b"carrier-callback-secret"
    receipt_delay: float = 0.05
    hang: int = 0
    hang_seconds: float = 5.0
    submissions: Counter[str] = field(default_factory=Counter)  # message id -> submit calls
    delivered: Counter[str] = field(default_factory=Counter)  # message id -> handset deliveries
    refs: dict[str, str] = field(default_factory=dict)
    to: dict[str, str] = field(default_factory=dict)
    callbacks: list[int] = field(default_factory=list)  # HTTP statuses our receiver answered
    calls: int = 0
    runner: web.AppRunner | None = None
    port: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> FakeCarrier:
        app = web.Application()
        app.router.add_post("/messages", self._submit)
        self.runner, self.port = await _serve(app, self.certs)
        return self

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    async def _submit(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": "unauthorized"}, status=401)
        self.calls += 1
        doc = await request.json()
        results = []
        for m in doc["messages"]:
            mid = m["id"]
            self.submissions[mid] += 1
            if mid not in self.refs:
                self.refs[mid] = "C" + uuid.uuid4().hex[:12]
                self.to[mid] = m["to"]
                self.delivered[mid] += 1  # the handset gets it once, whatever happens to our answer
                self._later(self._receipt(m["callback_url"], mid))
            results.append({"id": mid, "accepted": True, "ref": self.refs[mid]})
        if self.hang > 0:
            self.hang -= 1
            await asyncio.sleep(self.hang_seconds)
        return web.json_response({"results": results})

    def _later(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _receipt(self, callback_url: str, mid: str) -> None:
        await asyncio.sleep(self.receipt_delay)
        doc = {"receipts": [{"id": mid, "ref": self.refs[mid], "status": "delivered"}]}
        for _ in range(50):  # a carrier retries until acknowledged
            status = await self.callback(callback_url, doc)
            if status == 200:
                return
            await asyncio.sleep(0.2)

    async def callback(self, url: str, doc: dict[str, Any], *, secret: bytes | None = None,
                       timestamp: int | None = None) -> int:
        body = json.dumps(doc).encode()
        ts = int(time.time()) if timestamp is None else timestamp
        headers = {"Content-Type": "application/json", "X-Carrier-Timestamp": str(ts),
                   "X-Carrier-Signature": webhook_signature(secret or self.callback_secret, ts, body)}
        ctx = ssl.create_default_context(cafile=str(self.certs.public_ca))
        try:
            async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers, ssl=ctx) as r:
                self.callbacks.append(r.status)
                return r.status
        except aiohttp.ClientError:
            self.callbacks.append(0)
            return 0
