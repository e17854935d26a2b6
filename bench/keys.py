"""Keys: what envelope encryption costs, and what the data-key cache saves.

1. In-process: encrypt+decrypt round trips per second through `svckit.envelope.Envelope` with its data key
   cached (the steady state of a sending service: no keys-service call at all), 160-byte bodies.
2. The keys service as a process (tools.suite: audit + keys), over mTLS gRPC from a "messaging" client:
   DecryptDataKey (an unwrap: what each cache miss costs) and VerifyApiKey (a gateway auth-cache miss) calls/s.
3. The send path through the whole suite (POST /v3/sms/send, 1 message per request), with messaging's data-key
   cache at its default and with MESSAGING_DATA_KEY_TTL_SECONDS=0 (a GenerateDataKey call per message),
   with the keys service's CPU per request; then reading those messages back (GET /v3/sms/history, 100 per
   page: with the cache off, every message's data key is its own and is unwrapped by the keys service).

BENCH_SECONDS (default 8) per figure; BENCH_CONCURRENCY (default 32).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from bench.load import Result, run
from tools.suite import Suite, SuiteConfig, drop_suite_data, ensure_databases, ensure_root_key

BODY = b"Your SendSafe code is 482913. It expires in 10 minutes. Never share it. " * 2 + b"x" * 14  # 160 bytes


class _LocalSource:
    """Data keys made in-process: only the first encrypt needs one, the cache serves the rest."""

    def __init__(self) -> None:
        self.keys: dict[bytes, bytes] = {}

    async def generate(self, account_id: int) -> tuple[bytes, bytes]:
        key, handle = os.urandom(32), os.urandom(73)
        self.keys[handle] = key
        return key, handle

    async def decrypt(self, account_id: int, wrapped_key: bytes) -> bytes:
        return self.keys[wrapped_key]

    async def rewrap(self, account_id: int, wrapped_keys: Any) -> list[bytes | str]:
        return list(wrapped_keys)


async def _in_process(seconds: float) -> str:
    from svckit.envelope import Envelope, aad_for

    env = Envelope(_LocalSource())
    aad = aad_for(1, "message", "00000000-0000-0000-0000-000000000000")
    done = 0
    t0 = time.perf_counter()
    stop = t0 + seconds
    while time.perf_counter() < stop:
        for _ in range(1000):
            blob = await env.encrypt(1, aad, BODY)
            assert await env.decrypt(1, aad, blob) == BODY
        done += 1000
    elapsed = time.perf_counter() - t0
    return f"in-process, data key cached: {done / elapsed:,.0f} encrypt+decrypt round trips/s (160-byte body, one core)"


async def _rpc_rate(label: str, call: Callable[[], Awaitable[Any]], concurrency: int, seconds: float) -> str:
    latencies: list[float] = []
    errors = 0
    kinds: dict[str, int] = {}
    for _ in range(50):  # warm up the channel and the keys service's caches
        await call()
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            t = time.perf_counter()
            try:
                await call()
            except Exception as exc:
                errors += 1
                kind = str(exc.code().name) if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
                kinds[kind] = kinds.get(kind, 0) + 1
                continue
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    r = Result(label, len(latencies), len(latencies), errors, elapsed, latencies)
    return r.line("call") + (f"  {kinds}" if kinds else "")


async def _keys_rpcs(suite: Suite, certs: Path, seconds: float, concurrency: int) -> list[str]:
    from sendsafe.context.v1 import principal_pb2
    from sendsafe.keys.v1 import keys_service_pb2 as pb
    from sendsafe.keys.v1 import keys_service_pb2_grpc
    from svckit.rpc import secure_channel
    from svckit.tls import TlsFiles

    def channel(name: str) -> Any:
        tls = TlsFiles(certs / f"{name}.crt", certs / f"{name}.key", certs / "internal-ca.crt")
        return secure_channel(suite.addrs["keys"], tls, server_name="keys")

    out = []
    async with channel("messaging") as ch:
        stub = keys_service_pb2_grpc.KeysServiceStub(ch)
        gen = await stub.GenerateDataKey(pb.GenerateDataKeyRequest(account_id=1), wait_for_ready=True)
        request = pb.DecryptDataKeyRequest(account_id=1, wrapped_key=gen.wrapped_key)
        out.append(await _rpc_rate("keys DecryptDataKey (unwrap) over mTLS", lambda: stub.DecryptDataKey(request),
                                   concurrency, seconds))
    async with channel("gateway") as ch:
        stub = keys_service_pb2_grpc.KeysServiceStub(ch)
        principal = principal_pb2.Principal(account_id=1, user_id=1, permissions=["api_keys.write", "sms.send"],
                                             auth_method=principal_pb2.AUTH_METHOD_SESSION)
        principal.mfa_time.GetCurrentTime()  # creating a key is privileged: a session steps up first
        made = await stub.CreateApiKey(pb.CreateApiKeyRequest(name="bench", scopes=["*"]), metadata=(
            ("x-sendsafe-principal-bin", principal.SerializeToString()),))
        verify = pb.VerifyApiKeyRequest(api_key=made.secret, client_address="127.0.0.1")
        out.append(await _rpc_rate("keys VerifyApiKey (auth-cache miss)", lambda: stub.VerifyApiKey(verify),
                                   concurrency, seconds))
    return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _suite(work: Path, certs: Path, tag: str, messaging_env: dict[str, str]) -> tuple[Suite, SuiteConfig]:
    run_id = uuid.uuid4().hex[:6]
    env = {"MESSAGING_TRIAL_CREDIT": "100000000", **messaging_env}
    config = SuiteConfig(
        workdir=work / f"run-{tag}", certs=certs, db_prefix=f"ssbenchkeys_{run_id}",
        pg_admin_dsn=os.environ.get("PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
        redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), redis_prefix=f"ssbenchkeys:{run_id}:",
        root_key_file=ensure_root_key(work / "root.key"), log_level="WARNING", workers=0,
        env={"messaging": env},
    )
    ensure_databases(config)
    return Suite(config), config


def _send_path(work: Path, certs: Path, tag: str, messaging_env: dict[str, str], seconds: float, conc: int,
               rpcs: bool = False) -> tuple[Result, float, list[str]]:
    suite, config = _suite(work, certs, tag, messaging_env)
    try:
        suite.start()
        from tools.bootstrap import bootstrap

        creds = asyncio.run(bootstrap(identity=suite.addrs["identity"], keys=suite.addrs["keys"], certs=certs,
                                      out=work / f"demo-{tag}.env", gateway_url=suite.gateway_url,
                                      announce_to_stdout=False))
        pair = f"{creds['SENDSAFE_USERNAME']}:{creds['SENDSAFE_API_KEY']}"
        headers = {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode(),
                   "Content-Type": "application/json"}
        one = json.dumps({"messages": [{"to": os.environ.get("BENCH_TO", "+61412345678"), "body": "bench"}]}).encode()
        keys_pid = suite.procs["keys"].popen.pid
        before = _cpu_seconds(keys_pid)
        result = asyncio.run(run(f"POST /v3/sms/send, 1 msg/req, {tag}", f"{suite.gateway_url}/v3/sms/send",
                                 ca=str(certs / "public-ca.crt"), concurrency=conc, seconds=seconds, method="POST",
                                 body=lambda: one, headers=headers))
        keys_cpu_ms = 1000 * (_cpu_seconds(keys_pid) - before) / max(result.completed, 1)
        before = _cpu_seconds(keys_pid)
        history = asyncio.run(run(f"GET /v3/sms/history, 100/page, {tag}",
                                  f"{suite.gateway_url}/v3/sms/history?limit=100", ca=str(certs / "public-ca.crt"),
                                  concurrency=4, seconds=seconds / 2, headers=headers, items_per_request=100))
        history_cpu = 1000 * (_cpu_seconds(keys_pid) - before) / max(history.completed, 1)
        lines = [history.line(), f"    keys service CPU-ms per page: {history_cpu:.2f}"]
        lines += asyncio.run(_keys_rpcs(suite, certs, seconds, conc)) if rpcs else []
        return result, keys_cpu_ms, lines
    finally:
        suite.stop()
        drop_suite_data(config)


def main() -> int:
    seconds = float(os.environ.get("BENCH_SECONDS", "8"))
    conc = int(os.environ.get("BENCH_CONCURRENCY", "32"))
    print(asyncio.run(_in_process(min(seconds, 5.0))))
    work = Path(tempfile.mkdtemp(prefix="sendsafe-bench-keys-"))
    from tools.certs import ensure_dev_certs

    certs = work / "certs"
    ensure_dev_certs(certs)
    cached, cached_cpu, cached_lines = _send_path(work, certs, "data-key cache on", {}, seconds, conc, rpcs=True)
    uncached, uncached_cpu, uncached_lines = _send_path(
        work, certs, "cache off (TTL 0)", {"MESSAGING_DATA_KEY_TTL_SECONDS": "0"}, seconds, conc
    )
    for line in cached_lines[2:]:
        print(line)
    for r, cpu in ((cached, cached_cpu), (uncached, uncached_cpu)):
        print(r.line())
        print(f"    keys service CPU-ms per request: {cpu:.2f}")
    for line in cached_lines[:2] + uncached_lines[:2]:
        print(line)
    print(f"send path without the data-key cache: {uncached.rps / max(cached.rps, 1e-9):.2f}x the cached rate, "
          f"p50 {uncached.pct(50) - cached.pct(50):+.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
