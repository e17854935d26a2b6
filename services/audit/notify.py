"""Outbound HTTPS for alert webhooks and SIEM forwarding.

Customer URLs are untrusted: only https, no redirects, a short timeout, the response body is not read
beyond 64 KiB, and (unless AUDIT_WEBHOOK_ALLOW_PRIVATE) every address the host resolves to must be a
public one — checked in the connector's resolver, so a DNS answer cannot change between the check and
the connection.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from services.audit.service import DeliveryError

_MAX_RESPONSE = 64 * 1024


class _Blocked(OSError):
    pass


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return ip.is_global and not ip.is_multicast


class _PublicOnlyResolver(AbstractResolver):
    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        if not answers or not all(_public(a["host"]) for a in answers):
            raise _Blocked(f"{host} resolves to an address webhooks may not reach")
        return answers

    async def close(self) -> None:
        await self._inner.close()


class HttpsWebhooks:
    """`WebhookPoster` over aiohttp."""

    def __init__(self, *, allow_private: bool = False, ca_file: Path | None = None, timeout: float = 5.0) -> None:
        self._allow_private = allow_private
        self._ssl = ssl.create_default_context()
        if ca_file is not None:
            self._ssl.load_verify_locations(cafile=str(ca_file))
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            resolver: Any = None if self._allow_private else _PublicOnlyResolver()
            connector = aiohttp.TCPConnector(ssl=self._ssl, resolver=resolver, limit=50, ttl_dns_cache=0)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, trust_env=False)
        return self._session

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        host = urlsplit(url).hostname or ""
        if urlsplit(url).scheme != "https":
            raise DeliveryError("URL_NOT_HTTPS", retryable=False)
        if not self._allow_private:
            try:
                if not _public(host.strip("[]")):
                    raise DeliveryError("DESTINATION_NOT_ALLOWED", retryable=False)
            except ValueError:
                pass  # a name: the resolver checks what it resolves to
        try:
            async with self._client().post(url, data=body, headers=headers, allow_redirects=False) as resp:
                await resp.content.read(_MAX_RESPONSE)
                if 200 <= resp.status < 300:
                    return
                retryable = resp.status >= 500 or resp.status in (408, 425, 429)
                raise DeliveryError(f"HTTP_{resp.status}", retryable=retryable)
        except DeliveryError:
            raise
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, _Blocked):
                raise DeliveryError("DESTINATION_NOT_ALLOWED", retryable=False) from None
            if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
                raise DeliveryError("TLS_ERROR", retryable=True) from None
            raise DeliveryError("CONNECTION_FAILED", retryable=True) from None
        except (aiohttp.ClientError, TimeoutError, OSError):
            raise DeliveryError("CONNECTION_FAILED", retryable=True) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
