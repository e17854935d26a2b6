"""`make bench`: send-path figures through the real gateway beside a bare TLS baseline, same run.

Starts its own copy of the suite (own databases and Redis prefix, dropped afterwards), creates an
account, then measures, interleaved with the baseline so machine noise hits both alike:
  - bare aiohttp HTTPS hello (the ceiling for any Python HTTPS endpoint here),
  - POST /v3/sms/send with 1 message per request,
  - POST /v3/sms/send with 100 messages per request,
and prints accepted messages/s, p50/p99 and the ratio to the baseline. Set BENCH_SECONDS (default 8)
and BENCH_CONCURRENCY (default 32).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.load import Result, run
from tools.suite import REPO, Suite, SuiteConfig, ensure_databases, ensure_root_key


def _wait_port(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            return int(path.read_text())
        if proc.poll() is not None:
            raise RuntimeError("baseline server exited")
        time.sleep(0.05)
    raise RuntimeError("baseline server did not start")


def main() -> int:
    seconds = float(os.environ.get("BENCH_SECONDS", "8"))
    conc = int(os.environ.get("BENCH_CONCURRENCY", "32"))
    work = Path(tempfile.mkdtemp(prefix="sendsafe-bench-"))
    from tools.certs import ensure_dev_certs

    certs = work / "certs"
    ensure_dev_certs(certs)
    run_id = uuid.uuid4().hex[:6]
    config = SuiteConfig(
        workdir=work / "run", certs=certs, db_prefix=f"ssbench_{run_id}",
        pg_admin_dsn=os.environ.get("PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
        redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), redis_prefix=f"ssbench:{run_id}:",
        root_key_file=ensure_root_key(work / "root.key"), log_level="WARNING",
        env={"messaging": {"MESSAGING_TRIAL_CREDIT": "100000000"}, "worker": {"MESSAGING_TRIAL_CREDIT": "100000000"}},
    )
    ensure_databases(config)
    cores = os.cpu_count()
    print(f"machine: {cores} cores; python {sys.version.split()[0]}; {seconds:.0f}s per figure, concurrency {conc}")
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
                                      out=work / "demo.env", gateway_url=suite.gateway_url))
        pair = f"{creds['SENDSAFE_USERNAME']}:{creds['SENDSAFE_API_KEY']}"
        auth = "Basic " + base64.b64encode(pair.encode()).decode()
        headers = {"Authorization": auth, "Content-Type": "application/json"}
        one = json.dumps({"messages": [{"to": "+61411111111", "body": "bench message"}]}).encode()
        hundred = json.dumps({"messages": [{"to": "+61411111111", "body": f"bench {i}"} for i in range(100)]}).encode()
        ca = str(certs / "public-ca.crt")
        send = f"{suite.gateway_url}/v3/sms/send"

        async def figures() -> list[Result]:
            out = []
            out.append(await run("bare TLS hello (aiohttp, same TLS policy)", bare_url, ca=ca, concurrency=conc,
                                 seconds=seconds))
            out.append(await run("POST /v3/sms/send, 1 message/request", send, ca=ca, concurrency=conc,
                                 seconds=seconds, method="POST", body=lambda: one, headers=headers))
            out.append(await run("POST /v3/sms/send, 100 messages/request", send, ca=ca,
                                 concurrency=max(4, conc // 4), seconds=seconds, method="POST",
                                 body=lambda: hundred, headers=headers, items_per_request=100))
            out.append(await run("bare TLS hello (again, for drift)", bare_url, ca=ca, concurrency=conc,
                                 seconds=seconds))
            return out

        results = asyncio.run(figures())
        for r in results:
            print(r.line())
        base = (results[0].rps + results[3].rps) / 2
        print(f"single-message sends / bare TLS rate: {results[1].rps / base:.2f}x (target >= 0.10x)")
        print(f"100-message batches: {results[2].items_per_s:,.0f} accepted messages/s (target >= 10,000)")
    finally:
        suite.stop()
        bare.terminate()
        bare.wait()
        from svckit.db import drop_database

        async def drop() -> None:
            for name in ("audit", "keys", "messaging", "identity"):
                await drop_database(config.database_url(name))

        asyncio.run(drop())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
