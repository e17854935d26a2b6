"""Send path: figures through the real gateway beside a bare TLS baseline, same run.

Starts its own copy of the suite (own databases and Redis prefix, dropped afterwards), creates an
account, then measures, interleaved with the baseline so machine noise hits both alike:
  - bare aiohttp HTTPS hello (the ceiling for any Python HTTPS endpoint here),
  - POST /v3/sms/send with 100 messages per request, to a 10,000-number contact list,
  - POST /v3/sms/send with 1 message per request, to the same (by now known) numbers,
  - 100 messages per request to numbers never seen before,
and prints accepted messages/s, p50/p99 and the ratio to the baseline. A pool of BENCH_WORKERS (default 2)
dispatch workers runs the whole time, delivering to the suite's carrier (the built-in simulator) while the
intake is measured, as in production: each figure also prints the messages delivered per second during it
(SENT or DELIVERED), and the CPU per request includes the workers'. A second line then says how long the
same workers took to deliver the backlog left when intake stopped. Set BENCH_SECONDS (default 8) and
BENCH_CONCURRENCY (default 32).

The messaging API runs as BENCH_MESSAGING_REPLICAS processes (default 1; with more, the gateway spreads
its calls over them round robin, as over a Deployment's pods). On one 2-core machine a second process
adds no core: it shares the same two with the gateway, PostgreSQL, Redis and the load client, and each
process shares its fixed costs (event-loop wake-ups, group commits) among half as many requests, so
single-message sends lose about a fifth (README, `make bench`). Tracing is as configured in the
environment: with no OTEL_EXPORTER_OTLP_ENDPOINT no span is recorded (trace ids still propagate). Rate
limits stay on but far above the load (the Lua round trip is part of the figure), so nothing is refused.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from bench.load import Result, run
from tools.suite import REPO, Suite, SuiteConfig, drop_suite_data, ensure_databases, ensure_root_key

# Limits on, but far above what the bench can offer: their cost is measured, nothing is refused.
_NO_THROTTLE = {
    "MESSAGING_ACCOUNT_RATE": "100000000", "MESSAGING_ACCOUNT_BURST": "100000000",
    "MESSAGING_KEY_RATE": "100000000", "MESSAGING_KEY_BURST": "100000000", "MESSAGING_PREFIX_LIMIT": "1000000000",
}


def _cpu_seconds(pid: int) -> float:
    """User+system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_port(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            return int(path.read_text())
        if proc.poll() is not None:
            raise RuntimeError("baseline server exited")
        time.sleep(0.05)
    raise RuntimeError("baseline server did not start")


async def _counts(config: SuiteConfig) -> tuple[int, int]:
    """(messages accepted, messages delivered to the carrier: submitted and acknowledged, SENT or DELIVERED)."""
    import asyncpg

    conn = await asyncpg.connect(config.database_url("messaging"))
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS total, count(*) FILTER (WHERE status IN ('SENT', 'DELIVERED')) AS done FROM messages"
        )
        assert row is not None
        return int(row["total"]), int(row["done"])
    finally:
        await conn.close()


def drain(config: SuiteConfig, workers: int, timeout: float = 300.0) -> str:
    """Time the (already running) dispatch workers to deliver the backlog left when intake stopped."""
    total, done0 = asyncio.run(_counts(config))
    t0 = time.perf_counter()
    done = done0
    while done < total and time.perf_counter() - t0 < timeout:
        time.sleep(0.25)
        _, done = asyncio.run(_counts(config))
    secs = time.perf_counter() - t0
    rate = f" = {(done - done0) / secs:,.0f} messages/s" if done > done0 else ""
    return (f"backlog when intake stopped: {total - done0:,} of {total:,} accepted messages; {workers} workers"
            f" delivered {done - done0:,} of it in {secs:.1f}s{rate}")


def _valid_numbers(n: int, *, seed: int, avoid: set[str] | None = None) -> list[str]:
    """`n` distinct Australian mobile numbers (+61 40-43 and 46: every number there is a valid mobile for
    phonenumbers, which the service validates with; a sample is checked so a metadata change shows)."""
    import random

    import phonenumbers

    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        candidate = f"+614{rng.choice('01236')}{rng.randrange(10**7):07d}"
        if candidate not in out and not (avoid and candidate in avoid):
            out[candidate] = None
    numbers = list(out)
    bad = [x for x in numbers[:200] if not phonenumbers.is_valid_number(phonenumbers.parse(x))]
    if bad:
        raise RuntimeError(f"bench numbers are not valid mobiles any more: {bad[:3]}")
    return numbers


def _cycle(payloads: list[bytes]) -> Callable[[], bytes]:
    it = itertools.cycle(payloads)
    return lambda: next(it)


def _once(payloads: list[bytes]) -> Callable[[], bytes]:
    """Each payload once (BENCH_UNSEEN numbers, enough for ~3,000 requests); past the end the requests
    carry no messages, are refused, and count as errors, so running out shows."""
    it = iter(payloads)
    return lambda: next(it, b'{"messages":[]}')


def main() -> int:
    seconds = float(os.environ.get("BENCH_SECONDS", "8"))
    conc = int(os.environ.get("BENCH_CONCURRENCY", "32"))
    replicas = int(os.environ.get("BENCH_MESSAGING_REPLICAS", "1"))
    workers = int(os.environ.get("BENCH_WORKERS", "2"))
    work = Path(tempfile.mkdtemp(prefix="sendsafe-bench-"))
    from tools.certs import ensure_dev_certs

    certs = work / "certs"
    ensure_dev_certs(certs)
    run_id = uuid.uuid4().hex[:6]
    config = SuiteConfig(
        workdir=work / "run", certs=certs, db_prefix=f"ssbench_{run_id}",
        pg_admin_dsn=os.environ.get("PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
        redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), redis_prefix=f"ssbench:{run_id}:",
        root_key_file=ensure_root_key(work / "root.key"), log_level="WARNING", workers=workers,
        replicas={"messaging": replicas},
        env={role: {"MESSAGING_TRIAL_CREDIT": "100000000", **_NO_THROTTLE} for role in ("messaging", "worker")},
    )
    ensure_databases(config)
    cores = os.cpu_count()
    print(f"machine: {cores} cores; python {sys.version.split()[0]}; {seconds:.0f}s per figure, concurrency {conc}")
    tracing = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "off (no OTLP endpoint; trace ids still propagate)"
    print(f"suite: messaging API x{replicas} processes, 1 of each other service, {workers} dispatch workers"
          f" delivering (simulator carrier) during intake; tracing: {tracing}")
    bare_port_file = work / "bare.port"
    bare = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_tls", str(certs / "gateway-https.crt"), str(certs / "gateway-https.key"),
         str(bare_port_file)], cwd=REPO,
    )
    suite = Suite(config)
    try:
        bare_url = f"https://localhost:{_wait_port(bare_port_file, bare)}/"
        suite.start()
        from tools.bootstrap import bootstrap

        creds = asyncio.run(bootstrap(identity=suite.addrs["identity"], keys=suite.addrs["keys"], certs=certs,
                                      out=work / "demo.env", gateway_url=suite.gateway_url, announce_to_stdout=False))
        pair = f"{creds['SENDSAFE_USERNAME']}:{creds['SENDSAFE_API_KEY']}"
        auth = "Basic " + base64.b64encode(pair.encode()).decode()
        headers = {"Authorization": auth, "Content-Type": "application/json"}
        # Real (charged) destinations, not ClickSend test numbers: the paid path locks and debits the
        # account's balance, which is what customers actually exercise. Every message of a request goes to
        # a different number of a 10,000-number contact list, cycled through (numbers already validated
        # are remembered, as a customer's regular recipients would be); the last figure sends only to
        # numbers never seen before, so every one is validated in full.
        contacts = _valid_numbers(10_000, seed=1)
        ones = [json.dumps({"messages": [{"to": n, "body": "bench message"}]}).encode() for n in contacts]
        hundreds = [json.dumps({"messages": [{"to": contacts[(k + i) % len(contacts)], "body": f"bench {i}"}
                                              for i in range(100)]}).encode() for k in range(0, len(contacts), 100)]
        unseen = _valid_numbers(int(os.environ.get("BENCH_UNSEEN", "300000")), seed=2, avoid=set(contacts))
        fresh = [json.dumps({"messages": [{"to": n, "body": "bench fresh"} for n in unseen[k:k + 100]]}).encode()
                 for k in range(0, len(unseen) - 99, 100)]
        ca = str(certs / "public-ca.crt")
        send = f"{suite.gateway_url}/v3/sms/send"

        pids = {p.name: p.popen.pid for p in suite.procs.values()}
        pids["bare-tls"] = bare.pid

        async def measured(coro) -> tuple[Result, dict[str, float], float]:  # type: ignore[no-untyped-def]
            """The figure, each process's CPU seconds, and messages delivered per second, over the whole call
            (its warm-up included)."""
            before = {n: _cpu_seconds(pid) for n, pid in pids.items()}
            _, done0 = await _counts(config)
            t0 = time.perf_counter()
            result = await coro
            secs = time.perf_counter() - t0
            cpu = {n: _cpu_seconds(pid) - before[n] for n, pid in pids.items()}
            _, done1 = await _counts(config)
            return result, cpu, (done1 - done0) / secs

        async def figures() -> list[tuple[Result, dict[str, float], float]]:
            return [
                await measured(run("bare TLS hello (aiohttp, same TLS policy)", bare_url, ca=ca,
                                   concurrency=conc, seconds=seconds)),
                # Warm-up: about two passes over the contact list, so each replica has validated it once
                # (the single-message figure that follows sends to the same, now known, recipients).
                await measured(run("POST /v3/sms/send, 100 messages/request", send, ca=ca,
                                   concurrency=max(4, conc // 4), seconds=seconds, method="POST",
                                   body=_cycle(hundreds), headers=headers, items_per_request=100, warmup=4.0)),
                await measured(run("POST /v3/sms/send, 1 message/request", send, ca=ca, concurrency=conc,
                                   seconds=seconds, method="POST", body=_cycle(ones), headers=headers)),
                await measured(run("bare TLS hello (again, for drift)", bare_url, ca=ca, concurrency=conc,
                                   seconds=seconds)),
                await measured(run("  same, every recipient never seen before", send, ca=ca,
                                   concurrency=max(4, conc // 4), seconds=seconds, method="POST",
                                   body=_once(fresh), headers=headers, items_per_request=100)),
            ]

        results = asyncio.run(figures())
        for r, cpu, delivered in results:
            print(r.line())
            # CPU is measured over the warm-up too, so it is divided by every request that completed.
            per = {n: 1000 * c / max(r.completed, 1) for n, c in cpu.items()}
            busy = ", ".join(f"{n} {ms:.2f}" for n, ms in per.items() if ms >= 0.01)
            print(f"    server CPU-ms per request: {busy}")
            print(f"    delivered to the carrier meanwhile: {delivered:,.0f} messages/s ({workers} workers)")
        base = (results[0][0].rps + results[3][0].rps) / 2
        print(f"single-message sends / bare TLS rate: {results[2][0].rps / base:.3f}x (target >= 0.100x)")
        print(f"100-message batches: {results[1][0].items_per_s:,.0f} accepted messages/s (target >= 10,000);"
              f" to never-seen numbers: {results[4][0].items_per_s:,.0f}")
        print(f"delivery during intake ({workers} workers running): single-message sends {results[2][2]:,.0f}"
              f" delivered/s while {results[2][0].items_per_s:,.0f} accepted/s; 100-message batches"
              f" {results[1][2]:,.0f} delivered/s while {results[1][0].items_per_s:,.0f} accepted/s")
        print("drained after: " + drain(config, workers))
    finally:
        suite.stop()
        bare.terminate()
        bare.wait()
        drop_suite_data(config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
