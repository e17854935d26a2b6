"""Outbound HTTPS for customer webhooks, safe against SSRF.

Each delivery resolves the host itself, refuses it if ANY address is not public (private, loopback,
link-local/cloud metadata, CGNAT, multicast, reserved, IPv6 forms embedding those), then connects only to
the addresses it checked: the connection is pinned, so a DNS answer that changes between the check and the
connect (DNS rebinding) cannot redirect it. TLS is verified against the host name. No redirects are
followed, the answer is read to at most 4 KiB, and the whole attempt has one deadline.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from services.messaging.domain import WebhookAddressRefused, check_webhook_address, parse_webhook_url
from services.messaging.service import WebhookAttempt

_MAX_ANSWER = 4096


class _Pinned(AbstractResolver):
    """A resolver that answers only with the addresses checked beforehand."""

    def __init__(self, results: list[ResolveResult]) -> None:
        self._results = results

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET,
                      ) -> list[ResolveResult]:
        return [dict(r, port=port or r["port"]) for r in self._results]  # type: ignore[misc]

    async def close(self) -> None:
        return None


class HttpsWebhookSender:
    def __init__(self, *, allow_private: bool = False, ca_file: str = "", timeout: float = 10.0) -> None:
        self._allow_private = allow_private
        self._timeout = timeout
        self._ssl = ssl.create_default_context(cafile=ca_file or None)
        self._ssl.minimum_version = ssl.TLSVersion.TLSv1_2

    async def resolve_checked(self, host: str, port: int) -> list[ResolveResult]:
        """Every address of `host`, or WebhookAddressRefused if any of them is not allowed."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        if not infos:
            raise OSError(f"no address for {host}")
        out: list[ResolveResult] = []
        for family, _, proto, _, sockaddr in infos:
            address = str(sockaddr[0])
            check_webhook_address(address, allow_private=self._allow_private)
            out.append(ResolveResult(hostname=host, host=address, port=port, family=family, proto=proto,
                                     flags=socket.AI_NUMERICHOST))
        return out

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> WebhookAttempt:
        started = time.monotonic()
        host = urlsplit(url).hostname or ""

        def took() -> int:
            return int((time.monotonic() - started) * 1000)

        try:
            target = parse_webhook_url(url, allow_private=self._allow_private)
            host = target.host
            async with asyncio.timeout(self._timeout):
                pinned = await self.resolve_checked(target.host, target.port)
                connector = aiohttp.TCPConnector(resolver=_Pinned(pinned), use_dns_cache=False, ssl=self._ssl,
                                                 force_close=True)
                async with aiohttp.ClientSession(connector=connector) as session, session.post(
                    target.url, data=body, headers=headers, allow_redirects=False
                ) as resp:
                    await resp.content.read(_MAX_ANSWER)
                    return WebhookAttempt(host=host, status=resp.status, duration_ms=took(),
                                          error="" if resp.status < 300 else f"HTTP {resp.status}")
        except WebhookAddressRefused as exc:
            return WebhookAttempt(host=host, error=exc.message, duration_ms=took(), refused=True)
        except TimeoutError:
            return WebhookAttempt(host=host, error="timed out", duration_ms=took())
        except (aiohttp.ClientError, OSError, ssl.SSLError) as exc:
            return WebhookAttempt(host=host, error=_describe(exc), duration_ms=took())
        except Exception as exc:  # never let one customer's endpoint stop the others
            return WebhookAttempt(host=host, error=type(exc).__name__, duration_ms=took())


def _describe(exc: Any) -> str:
    """A short, content-free reason (exception type and, for TLS, its reason code)."""
    reason = getattr(exc, "reason", None) or getattr(getattr(exc, "os_error", None), "reason", None)
    return f"{type(exc).__name__}: {reason}"[:120] if reason else type(exc).__name__
