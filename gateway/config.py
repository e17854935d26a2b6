"""Gateway settings, read from the environment by `svckit.config.load`.

The gateway stores nothing, so it has its own settings class rather than a `KitSettings` subclass
(no database). Redis is optional: with `REDIS_URL` the gateway follows the keys service's notices and drops a
revoked or rolled API key from its auth cache at once; without it, after at most `GATEWAY_AUTH_CACHE_SECONDS`.
Tests construct `Settings(...)` directly.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

from svckit.config import ConfigError, setting
from svckit.tls import TlsFiles

# Authentication results may be reused for a few seconds at most: a revoked key or a deactivated
# user must stop working almost at once.
AUTH_CACHE_HARD_MAX_SECONDS = 5.0

ACCESS_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "OFF")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    service_name: str = setting("SERVICE_NAME", default="gateway")
    https_listen: str = setting("GATEWAY_HTTPS_LISTEN", default="127.0.0.1:8443", doc="host:port; port 0 = any")
    https_cert_file: Path = setting("GATEWAY_HTTPS_CERT_FILE", doc="public certificate chain (PEM)")
    https_key_file: Path = setting("GATEWAY_HTTPS_KEY_FILE", doc="its private key (PEM)")
    # mTLS client identity towards the services (SPIFFE name `gateway`).
    tls_cert_file: Path = setting("TLS_CERT_FILE")
    tls_key_file: Path = setting("TLS_KEY_FILE")
    tls_ca_file: Path = setting("TLS_CA_FILE")
    identity_addr: str = setting("IDENTITY_ADDR")
    keys_addr: str = setting("KEYS_ADDR")
    messaging_addr: str = setting("MESSAGING_ADDR")
    audit_addr: str = setting("AUDIT_ADDR")
    max_body_bytes: int = setting("GATEWAY_MAX_BODY_BYTES", default=1024 * 1024)
    auth_cache_seconds: float = setting(
        "GATEWAY_AUTH_CACHE_SECONDS", default=3.0, doc=f"0..{AUTH_CACHE_HARD_MAX_SECONDS:g}"
    )
    trusted_proxies: tuple[str, ...] = setting(
        "GATEWAY_TRUSTED_PROXIES", default=(), doc="CIDRs whose X-Forwarded-For is believed; empty = none"
    )
    upstream_timeout_seconds: float = setting("GATEWAY_UPSTREAM_TIMEOUT_SECONDS", default=10.0)
    coalesce_max_batch: int = setting(
        "GATEWAY_COALESCE_MAX_BATCH", default=64,
        doc="concurrent calls of an RPC declaring `coalesce` (SendSms) travel together, up to this many per"
        " batch call; 1 = each call alone",
    )
    coalesce_max_in_flight: int = setting(
        "GATEWAY_COALESCE_MAX_IN_FLIGHT", default=2,
        doc="batch calls on their way to one service at once; calls made meanwhile wait for the next batch",
    )
    step_up_max_age_seconds: int = setting(
        "STEP_UP_MAX_AGE_SECONDS", default=300,
        doc="privileged routes on a session need a second factor this recent (RFC 9470); every service's guard"
        " reads the same setting",
    )
    unauth_limit: int = setting(
        "GATEWAY_UNAUTH_LIMIT", default=60,
        doc="requests failing authentication (or for unknown routes) per client IPv4 /24 or IPv6 /64 per window;"
        " more answer 429; 0 = no limit",
    )
    unauth_window_seconds: float = setting("GATEWAY_UNAUTH_WINDOW_SECONDS", default=60.0)
    unauth_dedup_seconds: float = setting(
        "GATEWAY_UNAUTH_DEDUP_SECONDS", default=60.0,
        doc="identical unauthenticated failures within this are one audit event with a count; 0 = one event each",
    )
    redis_url: str = setting("REDIS_URL", default="", secret=True, doc="key notices (revocations); empty = none")
    redis_prefix: str = setting("REDIS_PREFIX", default="sendsafe:", doc="the keys service's prefix")
    health_listen: str = setting("HEALTH_LISTEN", default="", doc="plaintext gRPC health port; empty = off")
    metrics_listen: str = setting("METRICS_LISTEN", default="", doc="plaintext Prometheus /metrics; empty = off")
    log_level: str = setting("LOG_LEVEL", default="INFO")
    access_log_level: str = setting(
        "GATEWAY_ACCESS_LOG_LEVEL", default="INFO",
        doc="level of the one JSON access line per request (logger gateway.access): DEBUG, INFO, WARNING or OFF",
    )
    shutdown_grace_seconds: float = setting("SHUTDOWN_GRACE_SECONDS", default=5.0)

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not 0 <= self.auth_cache_seconds <= AUTH_CACHE_HARD_MAX_SECONDS:
            problems.append(
                f"GATEWAY_AUTH_CACHE_SECONDS: must be between 0 and {AUTH_CACHE_HARD_MAX_SECONDS:g}"
                f" (got {self.auth_cache_seconds:g})"
            )
        if self.max_body_bytes <= 0:
            problems.append("GATEWAY_MAX_BODY_BYTES: must be positive")
        if self.upstream_timeout_seconds <= 0:
            problems.append("GATEWAY_UPSTREAM_TIMEOUT_SECONDS: must be positive")
        if not 1 <= self.coalesce_max_batch <= 1000:
            problems.append("GATEWAY_COALESCE_MAX_BATCH: must be between 1 and 1000")
        if self.coalesce_max_in_flight < 1:
            problems.append("GATEWAY_COALESCE_MAX_IN_FLIGHT: must be 1 or more")
        if self.step_up_max_age_seconds <= 0:
            problems.append("STEP_UP_MAX_AGE_SECONDS: must be positive")
        if self.unauth_limit < 0:
            problems.append("GATEWAY_UNAUTH_LIMIT: must be 0 (no limit) or more")
        if self.unauth_window_seconds <= 0:
            problems.append("GATEWAY_UNAUTH_WINDOW_SECONDS: must be positive")
        if not 0 <= self.unauth_dedup_seconds <= 3600:
            problems.append("GATEWAY_UNAUTH_DEDUP_SECONDS: must be between 0 and 3600")
        if self.access_log_level.upper() not in ACCESS_LOG_LEVELS:
            problems.append(f"GATEWAY_ACCESS_LOG_LEVEL: one of {', '.join(ACCESS_LOG_LEVELS)}"
                            f" (got {self.access_log_level!r})")
        for cidr in self.trusted_proxies:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                problems.append(f"GATEWAY_TRUSTED_PROXIES: {cidr!r} is not an IP network")
        if problems:
            raise ConfigError(problems)

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles(cert=self.tls_cert_file, key=self.tls_key_file, ca=self.tls_ca_file)

    @property
    def trusted_proxy_networks(self) -> tuple[Network, ...]:
        return tuple(ipaddress.ip_network(c, strict=False) for c in self.trusted_proxies)

    def upstream_addr(self, service: str) -> str:
        """The address of service `service` (the second part of its proto package)."""
        addrs = {
            "identity": self.identity_addr,
            "keys": self.keys_addr,
            "messaging": self.messaging_addr,
            "audit": self.audit_addr,
        }
        try:
            return addrs[service]
        except KeyError:
            raise ConfigError([f"no address configured for service {service!r}"]) from None

    def listen_host_port(self) -> tuple[str, int]:
        host, sep, port = self.https_listen.rpartition(":")
        if not sep:
            raise ConfigError([f"GATEWAY_HTTPS_LISTEN: expected host:port, got {self.https_listen!r}"])
        return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - explicit empty host means all
