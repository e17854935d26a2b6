"""Gateway settings from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import Settings
from svckit.config import ConfigError, load

REQUIRED = {
    "GATEWAY_HTTPS_CERT_FILE": "/c/gw.crt",
    "GATEWAY_HTTPS_KEY_FILE": "/c/gw.key",
    "TLS_CERT_FILE": "/c/gateway.crt",
    "TLS_KEY_FILE": "/c/gateway.key",
    "TLS_CA_FILE": "/c/ca.crt",
    "IDENTITY_ADDR": "127.0.0.1:7001",
    "KEYS_ADDR": "127.0.0.1:7002",
    "MESSAGING_ADDR": "127.0.0.1:7003",
    "AUDIT_ADDR": "127.0.0.1:7004",
}


def test_defaults() -> None:
    s = load(Settings, REQUIRED)
    assert s.service_name == "gateway"
    assert s.https_listen == "127.0.0.1:8443" and s.listen_host_port() == ("127.0.0.1", 8443)
    assert s.max_body_bytes == 1024 * 1024
    assert s.auth_cache_seconds == 3.0
    assert s.trusted_proxies == ()
    assert s.tls.cert == Path("/c/gateway.crt")
    assert s.upstream_addr("messaging") == "127.0.0.1:7003"


def test_missing_settings_are_all_listed() -> None:
    with pytest.raises(ConfigError) as exc:
        load(Settings, {})
    assert len(exc.value.problems) == len(REQUIRED)


@pytest.mark.parametrize("value", ["5.5", "-1", "60"])
def test_auth_cache_hard_max(value: str) -> None:
    with pytest.raises(ConfigError, match="GATEWAY_AUTH_CACHE_SECONDS"):
        load(Settings, {**REQUIRED, "GATEWAY_AUTH_CACHE_SECONDS": value})


def test_trusted_proxies() -> None:
    s = load(Settings, {**REQUIRED, "GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.1"})
    assert s.trusted_proxies == ("10.0.0.0/8", "192.168.1.1")
    assert len(s.trusted_proxy_networks) == 2
    with pytest.raises(ConfigError, match="not an IP network"):
        load(Settings, {**REQUIRED, "GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8,nope"})
