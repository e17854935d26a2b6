"""`python -m gateway` as a real process: TLS 1.3 limited to AES-GCM through OPENSSL_CONF (which only
works when set at process start, hence a subprocess), port reporting, serving, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway import tls
from tests.integration.gateway.gw_support import ALICE, ALICE_KEY, Backends, RunningGateway, basic, client_ssl
from tests.support import CertBundle

REPO = Path(__file__).resolve().parents[3]

# A TLS 1.3-only client whose OpenSSL offers exactly the suites given in its own OPENSSL_CONF.
PROBE = r"""
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            print("OK", s.version(), s.cipher()[0])
except (ssl.SSLError, ConnectionError) as exc:
    print("REFUSED", type(exc).__name__, exc)
"""
CLIENT_CNF = """openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
Ciphersuites = {suites}
"""


def _env(certs: CertBundle, backends: Backends, workdir: Path, **extra: str) -> dict[str, str]:
    gw = certs.tls("gateway")
    env = {k: v for k, v in os.environ.items() if k != "OPENSSL_CONF" and not k.startswith(("GATEWAY_", "TLS_"))}
    env.update(
        PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'gen' / 'python'}",
        GATEWAY_HTTPS_LISTEN="127.0.0.1:0",
        GATEWAY_HTTPS_CERT_FILE=str(certs.https_cert),
        GATEWAY_HTTPS_KEY_FILE=str(certs.https_key),
        TLS_CERT_FILE=str(gw.cert),
        TLS_KEY_FILE=str(gw.key),
        TLS_CA_FILE=str(gw.ca),
        IDENTITY_ADDR=backends.addr("identity"),
        KEYS_ADDR=backends.addr("keys"),
        MESSAGING_ADDR=backends.addr("messaging"),
        AUDIT_ADDR=backends.addr("audit"),
        PORT_FILE=str(workdir / "gateway.port"),
        LOG_LEVEL="INFO",
    )
    env.update(extra)
    return env


async def _probe(port: int, certs: CertBundle, tmp_path: Path, suites: str) -> str:
    cnf = tmp_path / f"client-{abs(hash(suites))}.cnf"
    cnf.write_text(CLIENT_CNF.format(suites=suites))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PROBE, str(port), str(certs.public_ca),
        env={**os.environ, "OPENSSL_CONF": str(cnf)}, stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    return out.decode().strip()


@pytest.fixture
async def gateway_process(
    certs: CertBundle, gw_backends: Backends, tmp_path: Path
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int, Path]]:
    log = tmp_path / "gateway.log"
    with open(log, "wb") as fh:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", cwd=REPO, env=_env(certs, gw_backends, tmp_path),
            stdout=fh, stderr=fh,
        )
    port_file = tmp_path / "gateway.port"
    for _ in range(600):
        if port_file.exists() or proc.returncode is not None:
            break
        await asyncio.sleep(0.05)
    assert port_file.exists(), log.read_text()
    yield proc, int(port_file.read_text()), log
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def test_tls13_chacha_refused_only_with_the_openssl_conf(
    gateway_process, certs: CertBundle, gw: RunningGateway, tmp_path: Path
) -> None:
    _, port, _log = gateway_process
    assert (await _probe(port, certs, tmp_path, "TLS_CHACHA20_POLY1305_SHA256")).startswith("REFUSED")
    for suite in sorted(tls.TLS13_SUITES):
        assert await _probe(port, certs, tmp_path, suite) == f"OK TLSv1.3 {suite}"
    # Control: the same probe against the in-process gateway (this process started without the
    # OpenSSL config) negotiates CHACHA20, so the refusal above is the config's doing.
    control = await _probe(gw.port, certs, tmp_path, "TLS_CHACHA20_POLY1305_SHA256")
    expected = "REFUSED" if tls.tls13_restricted() else "OK TLSv1.3 TLS_CHACHA20_POLY1305_SHA256"
    assert control.startswith(expected), control


async def test_process_serves_logs_json_and_stops_gracefully(
    gateway_process, certs: CertBundle, gw_backends: Backends
) -> None:
    proc, port, log = gateway_process
    connector = aiohttp.TCPConnector(ssl=client_ssl(certs))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.get(f"https://localhost:{port}/v3/account", headers=ALICE) as resp,
    ):
        assert resp.status == 200
        rid = resp.headers["X-Request-Id"]
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 15) == 0
    # The audit event of that request was flushed before the process exited.
    assert [e.action for e in gw_backends.audit.by_request(rid)] == ["gateway.GetAccount"]
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any("listening" in rec["message"] for rec in lines)
    assert all(rec["service"] == "gateway" for rec in lines)
    assert "ssk_test_alice" not in log.read_text()


async def test_refuses_to_start_with_an_openssl_conf_that_allows_chacha(
    certs: CertBundle, gw_backends: Backends, tmp_path: Path
) -> None:
    weak = tmp_path / "weak.cnf"
    weak.write_text(CLIENT_CNF.format(suites="TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", cwd=REPO, env=_env(certs, gw_backends, tmp_path, OPENSSL_CONF=str(weak)),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 78 and b"refusing to start" in err
    assert not (tmp_path / "gateway.port").exists()


async def test_access_log_one_json_line_per_request_without_secrets(
    gateway_process, certs: CertBundle, gw_backends: Backends
) -> None:
    """The real process's stderr: one `gateway.access` line per request with its ids, the route TEMPLATE,
    status, latency, bytes, client and key id, and none of the key, the Authorization header, the body,
    the number or the query's values."""
    proc, port, log = gateway_process
    number, text = "+61433377799", "access-log-secret-body"
    wrong = basic("alice", "ssk_test_wrong_0123456789abcdef0123456789")
    connector = aiohttp.TCPConnector(ssl=client_ssl(certs))
    seen: dict[str, tuple[str, int]] = {}
    async with aiohttp.ClientSession(connector=connector) as http:
        for method, path, headers, body in [
            ("POST", "/v3/sms/send", ALICE, {"messages": [{"to": number, "body": text}]}),
            ("GET", f"/v3/sms/history?q={number}&limit=5", ALICE, None),
            ("GET", "/v3/account", wrong, None),
            ("GET", f"/v3/no-such/{number}", ALICE, None),
        ]:
            async with http.request(method, f"https://localhost:{port}{path}", headers=headers, json=body) as resp:
                payload = await resp.read()
                seen[resp.headers["X-Request-Id"]] = (resp.headers["traceparent"].split("-")[1], len(payload))
                assert resp.status in (200, 401, 404), (path, resp.status)
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 15) == 0
    raw = log.read_text()
    access = {rec["request_id"]: rec for rec in map(json.loads, filter(lambda s: s.startswith("{"), raw.splitlines()))
              if rec.get("event") == "http.access"}
    assert set(access) == set(seen)
    by_route = {rec["route"]: rec for rec in access.values()}
    assert set(by_route) == {"/v3/sms/send", "/v3/sms/history", "/v3/account", "unmatched"}
    for rid, rec in access.items():
        trace_id, size = seen[rid]
        assert rec["logger"] == "gateway.access" and rec["level"] == "INFO" and rec["service"] == "gateway"
        assert rec["trace_id"] == trace_id and rec["bytes"] == size and rec["client_address"] == "127.0.0.1"
        assert isinstance(rec["latency_ms"], float) and rec["latency_ms"] > 0 and rec["time"].endswith("Z")
    assert (by_route["/v3/sms/send"]["method"], by_route["/v3/sms/send"]["status"]) == ("POST", 200)
    assert by_route["/v3/sms/send"]["key_id"] == "key_alice"
    assert (by_route["/v3/account"]["status"], by_route["/v3/account"]["key_id"]) == (401, "")
    assert by_route["/v3/account"]["reason"] and by_route["unmatched"]["status"] == 404
    for secret in (ALICE_KEY, "ssk_test_wrong", ALICE["Authorization"], "Basic ", text, number, number[1:]):
        assert secret not in raw, secret


async def test_access_log_level_off_and_invalid(certs: CertBundle, gw_backends: Backends, tmp_path: Path) -> None:
    from gateway.config import Settings
    from svckit.config import ConfigError, load

    with pytest.raises(ConfigError, match="GATEWAY_ACCESS_LOG_LEVEL"):
        load(Settings, env={**_env(certs, gw_backends, tmp_path), "GATEWAY_ACCESS_LOG_LEVEL": "LOUD"})
    log = tmp_path / "quiet.log"
    with open(log, "wb") as fh:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", cwd=REPO, stdout=fh, stderr=fh,
            env=_env(certs, gw_backends, tmp_path, GATEWAY_ACCESS_LOG_LEVEL="OFF"),
        )
    port_file = tmp_path / "gateway.port"
    for _ in range(600):
        if port_file.exists() or proc.returncode is not None:
            break
        await asyncio.sleep(0.05)
    connector = aiohttp.TCPConnector(ssl=client_ssl(certs))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.get(f"https://localhost:{int(port_file.read_text())}/v3/account", headers=ALICE) as resp,
    ):
        assert resp.status == 200
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 15) == 0
    assert "listening" in log.read_text() and "http.access" not in log.read_text()
