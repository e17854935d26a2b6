"""Delivered rate through the SMPP carrier against tools/smsc.py, beside the simulator-only carrier, same run.

Starts its own copy of the suite (own databases and Redis prefix, dropped afterwards) with no dispatch
worker, creates an account, and for each carrier in turn: queues BENCH_SMPP_MESSAGES (default 5,000)
messages through the gateway (100 per request, distinct valid numbers), then starts ONE dispatch worker
with that carrier and times it until every one of them is DELIVERED (the receipt applied), workers'
start-up included:
  - simulator: the built-in carrier (receipts 200 ms after submission, from its own table);
  - smpp: `python -m tools.smsc` over loopback TCP (DLR 200 ms after submission), one transceiver bind,
    window MESSAGING_SMPP_WINDOW (BENCH_SMPP_WINDOW, default 10), no throughput cap; each message is one
    submit_sm and one deliver_sm that is stored before it is acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.send_path import _NO_THROTTLE, _valid_numbers
from tools.suite import REPO, Suite, SuiteConfig, drop_suite_data, ensure_databases, ensure_root_key


async def _queue(url: str, ca: str, auth: str, numbers: list[str], tag: str) -> int:
    import ssl

    import aiohttp

    ctx = ssl.create_default_context(cafile=ca)
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    accepted = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=8), headers=headers) as s:
        async def post(chunk: list[str]) -> int:
            body = {"messages": [{"to": n, "body": f"{tag} {i}"} for i, n in enumerate(chunk)]}
            async with s.post(url, data=json.dumps(body)) as resp:
                doc = await resp.json()
            return sum(1 for m in doc["data"]["messages"] if m["status"] == "SUCCESS")

        for k in range(0, len(numbers), 800):
            chunks = [numbers[j:j + 100] for j in range(k, min(k + 800, len(numbers)), 100)]
            accepted += sum(await asyncio.gather(*(post(c) for c in chunks)))
    return accepted


async def _delivered(dsn: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM messages WHERE status = 'DELIVERED'"))
    finally:
        await conn.close()


def _start_smsc(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    log = open(work / "smsc.log", "wb")  # noqa: SIM115 (kept open for the process's life)
    proc = subprocess.Popen([sys.executable, "-m", "tools.smsc", "--port", "0", "--system-id", "bench",
                             "--password", "benchpw", "--dlr-delay", "0.2"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=log, env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'gen/python'}"})
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()  # "smsc listening on HOST:PORT"
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"tools.smsc did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def main() -> int:
    n = int(os.environ.get("BENCH_SMPP_MESSAGES", "5000"))
    window = os.environ.get("BENCH_SMPP_WINDOW", "10")
    work = Path(tempfile.mkdtemp(prefix="sendsafe-bench-smpp-"))
    from tools.certs import ensure_dev_certs

    certs = work / "certs"
    ensure_dev_certs(certs)
    run_id = uuid.uuid4().hex[:6]
    config = SuiteConfig(
        workdir=work / "run", certs=certs, db_prefix=f"ssbsmpp_{run_id}",
        pg_admin_dsn=os.environ.get("PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
        redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), redis_prefix=f"ssbsmpp:{run_id}:",
        root_key_file=ensure_root_key(work / "root.key"), log_level="WARNING", workers=0,
        env={role: {"MESSAGING_TRIAL_CREDIT": "100000000", **_NO_THROTTLE} for role in ("messaging", "worker")},
    )
    ensure_databases(config)
    suite = Suite(config)
    smsc, smsc_port = _start_smsc(work)
    try:
        suite.start()
        from tools.bootstrap import bootstrap

        creds = asyncio.run(bootstrap(identity=suite.addrs["identity"], keys=suite.addrs["keys"], certs=certs,
                                      out=work / "demo.env", gateway_url=suite.gateway_url, announce_to_stdout=False))
        import base64

        pair = f"{creds['SENDSAFE_USERNAME']}:{creds['SENDSAFE_API_KEY']}"
        auth = "Basic " + base64.b64encode(pair.encode()).decode()
        numbers = _valid_numbers(2 * n, seed=3)
        carriers = {
            "simulator": {"MESSAGING_CARRIER": "simulator", "MESSAGING_SIM_RECEIPT_DELAY_MS": "200"},
            "smpp": {"MESSAGING_CARRIER": "smpp", "MESSAGING_SMPP_HOST": "127.0.0.1",
                     "MESSAGING_SMPP_PORT": str(smsc_port), "MESSAGING_SMPP_SYSTEM_ID": "bench",
                     "MESSAGING_SMPP_PASSWORD": "benchpw", "MESSAGING_SMPP_WINDOW": window},
        }
        dsn = config.database_url("messaging")
        print(f"{n:,} messages per carrier, one dispatch worker each; delivered = receipt applied")
        for k, (name, env) in enumerate(carriers.items()):
            queued = asyncio.run(_queue(f"{suite.gateway_url}/v3/sms/send", str(certs / "public-ca.crt"), auth,
                                        numbers[k * n:(k + 1) * n], f"bench {name}"))
            base = asyncio.run(_delivered(dsn))
            config.env["worker"] = {**config.env["worker"], **env}
            t0 = time.perf_counter()
            proc = suite.start_process("messaging", worker=True, suffix=name)
            done = 0
            while done < queued and time.perf_counter() - t0 < 300:
                time.sleep(0.2)
                done = asyncio.run(_delivered(dsn)) - base
            secs = time.perf_counter() - t0
            proc.popen.send_signal(signal.SIGTERM)
            proc.popen.wait(30)
            label = "simulator carrier" if name == "simulator" else f"SMPP carrier -> tools.smsc (window {window})"
            print(f"    {label:45s} {done:,}/{queued:,} delivered in {secs:.1f}s = {done / secs:,.0f} messages/s")
    finally:
        suite.stop()
        smsc.send_signal(signal.SIGTERM)
        try:
            out, _ = smsc.communicate(timeout=10)
            counters = out.decode().strip().splitlines()[-1:] if out else []
            if counters:
                print(f"    tools.smsc counters: {counters[0]}")
        except subprocess.TimeoutExpired:
            smsc.kill()
        drop_suite_data(config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
