"""The one outbound-webhook policy of every service, and the one signature scheme (Standard Webhooks).

URL policy (customer URLs are untrusted: server-side request forgery is the risk):
- `https` only, port 443 only, no user name or password, no fragment, at most MAX_URL characters; the host
  is IDNA-normalised; an IP literal must be a public address; a name must resolve, and EVERY A/AAAA answer
  must be public (`address_allowed`: an explicit deny list, embedded IPv4 unwrapped, then `is_global`).
- `check_destination` applies it when a URL is configured (400 INVALID_WEBHOOK_URL at once);
  `WebhookClient.post` applies it again at every delivery attempt (DNS may have changed), then connects only
  to the addresses it checked (a pinned resolver: no DNS rebinding between check and connect), verifies TLS
  against the name, follows no redirect (3xx is a failure), reads at most `max_answer` bytes of the answer
  and gives the whole attempt one deadline.
- `allow_private` is the single escape hatch for tests and `make run` (AUDIT_WEBHOOK_ALLOW_PRIVATE,
  MESSAGING_WEBHOOK_ALLOW_PRIVATE; both off by default): it admits loopback and private (RFC 1918, ULA)
  receivers and any port. Link-local (cloud metadata), multicast and the other denied ranges stay refused.

Signatures (https://www.standardwebhooks.com): headers `webhook-id` (the same on every retry),
`webhook-timestamp` (Unix seconds of this attempt) and `webhook-signature: v1,<base64 HMAC-SHA256(key,
"<id>.<timestamp>.<body>")>`; secrets are shown as `whsec_<base64 key>`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
import secrets
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from svckit import metrics
from svckit.errors import InvalidArgument

__all__ = [
    "MAX_URL",
    "Attempt",
    "InvalidWebhookUrl",
    "Target",
    "WebhookClient",
    "address_allowed",
    "check_destination",
    "new_secret",
    "parse_url",
    "secret_key",
    "sign",
    "signed_headers",
]

MAX_URL: Final = 2048


class InvalidWebhookUrl(InvalidArgument):
    reason = "INVALID_WEBHOOK_URL"


# -- addresses --------------------------------------------------------------------------------------------

_DENY: Final = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "::/96",  # unspecified, loopback and IPv4-compatible (::127.0.0.1)
    "::ffff:0:0/96", "::ffff:0:0:0/96",  # IPv4-mapped and -translated
    "64:ff9b::/96", "64:ff9b:1::/48",  # NAT64
    "100::/64", "2001::/23",  # discard-only; IETF protocol assignments (Teredo 2001::/32, ORCHID ...)
    "2001:db8::/32", "2002::/16",  # documentation; 6to4
    "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
))
# What `allow_private` (tests, `make run`) admits: loopback and private ranges, nothing else.
_TEST_RECEIVERS: Final = tuple(ipaddress.ip_network(n) for n in (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "::1/128", "fc00::/7",
))
_EMBEDS_V4: Final = tuple(ipaddress.ip_network(n) for n in ("::/96", "64:ff9b::/96", "64:ff9b:1::/48"))

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _embedded(ip: IPAddress) -> list[IPAddress]:
    """The IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo, NAT64, IPv4-compatible)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    out: list[IPAddress] = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo is not None:
        out.extend(ip.teredo)
    if any(ip in net for net in _EMBEDS_V4):
        out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return out


def address_allowed(address: str, *, allow_private: bool = False) -> bool:
    """May a webhook connect to `address`? Only public unicast addresses (and, with `allow_private`,
    loopback/private test receivers); IPv6 forms that embed an IPv4 address are judged by both."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if allow_private and any(ip in net for net in _TEST_RECEIVERS if net.version == ip.version):
        return True
    for candidate in (ip, *_embedded(ip)):
        if any(candidate in net for net in _DENY if net.version == candidate.version):
            return False
        if not candidate.is_global or candidate.is_multicast:
            return False
    return True


# -- URLs -------------------------------------------------------------------------------------------------

_LABEL: Final = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME: Final = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})+")  # at least one dot: no bare names
_INTERNAL_SUFFIXES: Final = (".localhost", ".local", ".internal", ".svc", ".cluster.local", ".home.arpa",
                             ".arpa")
_NOT_PUBLIC: Final = ("Webhooks only go to public internet addresses: {host} is {what}. "
                      "Use a host name that resolves only to public addresses.")


@dataclass(frozen=True, slots=True)
class Target:
    host: str  # lowercase ASCII (IDNA); an IP literal without brackets
    port: int
    path: str  # path and query, at least "/"

    @property
    def is_literal(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}{'' if self.port == 443 else f':{self.port}'}{self.path}"


def parse_url(url: str, *, allow_private: bool = False) -> Target:
    """The URL rule without DNS (pure): scheme, port, credentials, host syntax, IP literals."""
    url = url.strip()
    if len(url) > MAX_URL:
        raise InvalidWebhookUrl(f"The webhook URL is longer than {MAX_URL} characters.")
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        raise InvalidWebhookUrl("The webhook URL contains spaces or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidWebhookUrl("The webhook URL is not a valid URL (check the host and port).") from None
    if parts.scheme.lower() != "https":
        raise InvalidWebhookUrl("Webhook URLs must start with https://.")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidWebhookUrl("Webhook URLs must not contain a user name or password; authenticate "
                                "deliveries by their webhook-signature header instead.")
    if parts.fragment:
        raise InvalidWebhookUrl("Webhook URLs must not contain a #fragment.")
    port = 443 if port is None else port
    if port != 443 and not allow_private:
        raise InvalidWebhookUrl(f"Webhook URLs must use the standard HTTPS port 443, not {port}.")
    raw = (parts.hostname or "").rstrip(".")
    try:
        literal: IPAddress | None = ipaddress.ip_address(raw)
    except ValueError:
        literal = None
    if literal is not None:
        host = str(literal)
        if not address_allowed(host, allow_private=allow_private):
            raise InvalidWebhookUrl(_NOT_PUBLIC.format(host=host, what="not a public address"))
    else:
        try:
            host = raw.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise InvalidWebhookUrl("The webhook URL's host name is not a valid (international) domain name.") from None
        if not _HOSTNAME.fullmatch(host) and not (allow_private and host == "localhost"):
            raise InvalidWebhookUrl("The webhook URL needs a fully qualified host name such as hooks.example.com.")
        if host.endswith(_INTERNAL_SUFFIXES) and not allow_private:
            raise InvalidWebhookUrl(_NOT_PUBLIC.format(host=host, what="an internal name"))
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(host, port, path)


Resolve = Callable[[str, int], Awaitable[Sequence[tuple[socket.AddressFamily, str]]]]


async def system_resolve(host: str, port: int) -> list[tuple[socket.AddressFamily, str]]:
    """Every A/AAAA answer for `host` (raises OSError when there is none)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys((socket.AddressFamily(f), str(sa[0])) for f, _, _, _, sa in infos))


async def _resolve_checked(target: Target, allow_private: bool, resolve: Resolve
                           ) -> list[tuple[socket.AddressFamily, str]]:
    """The checked addresses of `target`; InvalidWebhookUrl if any is not allowed, OSError if none."""
    if target.is_literal:
        family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
        return [(family, target.host)]
    answers = list(await resolve(target.host, target.port))
    if not answers:
        raise OSError(f"no address for {target.host}")
    if not all(address_allowed(a, allow_private=allow_private) for _, a in answers):
        raise InvalidWebhookUrl(_NOT_PUBLIC.format(host=target.host, what="resolving to a non-public address"))
    return answers


async def check_destination(url: str, *, allow_private: bool = False, resolve: Resolve = system_resolve) -> str:
    """Configuration time: the URL in canonical form, or InvalidWebhookUrl (the rule above, and the name
    must resolve with every answer public)."""
    target = parse_url(url, allow_private=allow_private)
    try:
        await _resolve_checked(target, allow_private, resolve)
    except OSError:
        raise InvalidWebhookUrl(f"The webhook host {target.host} does not resolve (no A or AAAA record).") from None
    return target.url


# -- delivery ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempt:
    """What happened to one POST: `status` 0 when no HTTP answer came back; `error` is content-free."""

    host: str
    status: int = 0
    error: str = ""
    duration_ms: int = 0
    refused: bool = False  # the policy refused the destination: never retried

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class _Pinned(AbstractResolver):
    """Answers only with the addresses checked beforehand."""

    def __init__(self, host: str, answers: list[tuple[socket.AddressFamily, str]]) -> None:
        self._host, self._answers = host, answers

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET,
                      ) -> list[ResolveResult]:
        return [ResolveResult(hostname=self._host, host=a, port=port, family=f, proto=socket.IPPROTO_TCP,
                              flags=socket.AI_NUMERICHOST) for f, a in self._answers]

    async def close(self) -> None:
        return None


class WebhookClient:
    """POSTs to customer URLs under the policy above, re-checked at every attempt."""

    def __init__(self, *, allow_private: bool = False, ca_file: str | Path | None = None, timeout: float = 10.0,
                 max_answer: int = 4096, resolve: Resolve = system_resolve) -> None:
        self._allow_private = allow_private
        self._timeout = timeout
        self._max_answer = max_answer
        self._resolve = resolve
        self._ssl = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self._ssl.minimum_version = ssl.TLSVersion.TLSv1_2

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Attempt:
        """One delivery attempt; counted by outcome (svckit.metrics), never by destination."""
        attempt = await self._post(url, body, headers)
        metrics.WEBHOOK_DELIVERIES.labels(_outcome(attempt)).inc()
        return attempt

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> Attempt:
        started = time.monotonic()
        host = urlsplit(url).hostname or ""

        def took() -> int:
            return int((time.monotonic() - started) * 1000)

        try:
            target = parse_url(url, allow_private=self._allow_private)
            host = target.host
            async with asyncio.timeout(self._timeout):
                answers = await _resolve_checked(target, self._allow_private, self._resolve)
                connector = aiohttp.TCPConnector(resolver=_Pinned(target.host, answers), use_dns_cache=False,
                                                 ssl=self._ssl, force_close=True)
                async with aiohttp.ClientSession(connector=connector, trust_env=False) as session, session.post(
                    target.url, data=body, headers=headers, allow_redirects=False
                ) as resp:
                    await resp.content.read(self._max_answer)
                    return Attempt(host=host, status=resp.status, duration_ms=took(),
                                   error="" if 200 <= resp.status < 300 else f"HTTP {resp.status}")
        except InvalidWebhookUrl:
            return Attempt(host=host, error="destination not allowed", duration_ms=took(), refused=True)
        except TimeoutError:
            return Attempt(host=host, error="timed out", duration_ms=took())
        except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
            return Attempt(host=host, error=f"TLS: {_reason(exc)}", duration_ms=took())
        except (aiohttp.ClientError, OSError) as exc:
            return Attempt(host=host, error=_reason(exc), duration_ms=took())
        except Exception as exc:  # never let one customer's endpoint stop the others
            return Attempt(host=host, error=type(exc).__name__, duration_ms=took())


def _outcome(attempt: Attempt) -> str:
    """ok, http_4xx / http_5xx, refused (not a public HTTPS destination), timeout, tls or error."""
    if attempt.ok:
        return "ok"
    if attempt.status:
        return f"http_{attempt.status // 100}xx"
    if attempt.refused:
        return "refused"
    if attempt.error == "timed out":
        return "timeout"
    return "tls" if attempt.error.startswith("TLS:") else "error"


def _reason(exc: BaseException) -> str:
    """A short, content-free reason (exception type and, for TLS, its reason code)."""
    reason = getattr(exc, "reason", None) or getattr(getattr(exc, "os_error", None), "reason", None)
    return f"{type(exc).__name__}: {reason}"[:120] if reason else type(exc).__name__


# -- signatures -------------------------------------------------------------------------------------------

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 (a prefix, not a secret)


def new_secret() -> str:
    """A fresh signing secret as customers see it: `whsec_` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def secret_key(secret: str | bytes) -> bytes:
    """The HMAC key of a `whsec_` secret: its base64-decoded bytes. Secrets issued before Standard Webhooks
    (messaging's URL-safe base64 without padding) decode to the same key bytes they always encoded."""
    text = (secret.decode("ascii") if isinstance(secret, bytes) else secret).strip()
    text = text.removeprefix(SECRET_PREFIX).replace("-", "+").replace("_", "/")
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not a whsec_ secret") from None
    if not key:
        raise ValueError("empty webhook secret")
    return key


def sign(secret: str | bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256(key, "<msg_id>.<timestamp>.<body>")>`."""
    mac = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def signed_headers(secrets_: Sequence[str | bytes], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers; several secrets (a rotation's overlap) give several
    space-separated signatures. `msg_id` is the same on every retry and contains no '.'."""
    if "." in msg_id or not msg_id:
        raise ValueError("a webhook id is non-empty and has no '.'")
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(timestamp)),
            "webhook-signature": " ".join(sign(s, msg_id, int(timestamp), body) for s in secrets_)}
