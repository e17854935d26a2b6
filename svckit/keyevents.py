"""Key change notices from the keys service, over Redis pub/sub, for everyone who caches key material.

The keys service publishes one small JSON notice on ``<REDIS_PREFIX>keys:events`` whenever something others
may hold in a cache stops being true:

* ``api_keys.changed``: API keys were revoked, rolled or had their expiry shortened. Gateways drop cached
  verifications of those key ids (`key_ids`).
* ``account_keys.changed``: an account's key-encryption keys were rotated, retired, scheduled for destruction,
  restored or destroyed. Callers of `svckit.envelope.Envelope` drop the account's cached data keys.

Pub/sub is fire-and-forget: a subscriber that was disconnected may have missed notices. So `Subscriber` calls
`on_resync` every time its subscription is (re)established, and the subscriber drops *everything* it caches
then; the bounded cache times are the backstop for a subscriber that cannot reach Redis at all. Notices carry
ids only, never key material.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from svckit.tasks import spawn

_LOG = logging.getLogger(__name__)

API_KEYS_CHANGED = "api_keys.changed"
ACCOUNT_KEYS_CHANGED = "account_keys.changed"
KINDS = frozenset({API_KEYS_CHANGED, ACCOUNT_KEYS_CHANGED})
MAX_NOTICE_BYTES = 64 * 1024


def channel(prefix: str) -> str:
    return f"{prefix}keys:events"


@dataclass(frozen=True)
class KeyNotice:
    kind: str
    account_id: int
    key_ids: tuple[str, ...] = ()
    # What happened (for logs): revoked, rolled, rotated, retired, destruction_scheduled, destroyed, ...
    change: str = ""

    def encode(self) -> bytes:
        return json.dumps(
            {"kind": self.kind, "account_id": self.account_id, "key_ids": list(self.key_ids), "change": self.change},
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> KeyNotice | None:
        """The notice, or None when `raw` is not one (ignored: a newer publisher may send more kinds)."""
        try:
            if len(raw) > MAX_NOTICE_BYTES:
                return None
            data = json.loads(raw)
            kind, account_id = data["kind"], data["account_id"]
            key_ids = data.get("key_ids") or []
            change = data.get("change") or ""
        except (ValueError, KeyError, TypeError):
            return None
        if kind not in KINDS or not isinstance(account_id, int) or not isinstance(change, str):
            return None
        if not isinstance(key_ids, list) or not all(isinstance(k, str) for k in key_ids):
            return None
        return cls(kind, account_id, tuple(key_ids), change)


class Publisher:
    """Publishes notices. Best effort by design: the caller's change is already committed, and subscribers
    that miss a notice still stop trusting their caches within their bounded cache time."""

    def __init__(self, redis: aioredis.Redis, prefix: str, *, timeout: float = 1.0) -> None:
        self._redis = redis
        self._channel = channel(prefix)
        self._timeout = timeout

    async def publish(self, notice: KeyNotice) -> int:
        """Number of subscribers that received it (0 when Redis could not be reached)."""
        try:
            async with asyncio.timeout(self._timeout):
                return int(await self._redis.publish(self._channel, notice.encode()))
        except Exception as exc:
            _LOG.warning("could not publish key notice %s (%s)", notice.kind, type(exc).__name__)
            return 0


OnNotice = Callable[[KeyNotice], None]
OnResync = Callable[[], None]


class Subscriber:
    """Follows the notices channel in a background task, reconnecting with backoff.

    `on_notice` runs for each notice; `on_resync` runs each time the subscription is established (first
    start included), because notices published while disconnected are lost. Both are plain callables that
    must not block (they clear in-memory caches). `ready` is set once the first subscription is live.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        *,
        on_notice: OnNotice,
        on_resync: OnResync,
        kinds: Sequence[str] = tuple(KINDS),
        max_backoff: float = 2.0,
    ) -> None:
        self.redis = redis
        self._channel = channel(prefix)
        self._on_notice = on_notice
        self._on_resync = on_resync
        self._kinds = frozenset(kinds)
        self._max_backoff = max_backoff
        self._stack = contextlib.AsyncExitStack()
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.received = 0
        self.resyncs = 0

    def start(self) -> None:
        if self._task is None:
            self._task = spawn(self._stack, self._run(), "key-notices")

    async def wait_ready(self, timeout: float = 5.0) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.ready.wait()
        return self.ready.is_set()

    async def close(self) -> None:
        if self._task is not None:
            await self._stack.aclose()  # cancels and awaits the task (svckit.tasks.spawn)
            self._task = None

    async def _run(self) -> None:
        delay = 0.05
        while True:
            resyncs = self.resyncs
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _LOG.warning("key notices: subscription lost (%s); reconnecting", type(exc).__name__)
            delay = 0.05 if self.resyncs != resyncs else min(delay * 2, self._max_backoff)
            await asyncio.sleep(delay)

    async def _follow(self) -> None:
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            while True:
                message: dict[str, Any] | None = await pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                if message.get("type") == "subscribe":
                    # Anything published before this moment may have been missed: forget it all.
                    self.resyncs += 1
                    self._call(self._on_resync)
                    self.ready.set()
                    continue
                if message.get("type") != "message":
                    continue
                notice = KeyNotice.decode(message.get("data") or b"")
                if notice is None or notice.kind not in self._kinds:
                    continue
                self.received += 1
                self._call(self._on_notice, notice)
        finally:
            self.ready.clear()
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    @staticmethod
    def _call(fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            _LOG.exception("key notices: handler failed")
