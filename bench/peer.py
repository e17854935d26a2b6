"""`make bench-peer`: SendSafe beside Jasmin 0.11.1 (the open-source SMS gateway people would pick instead), one
machine, one load generator, runs interleaved so machine noise hits both alike.

Sets up, all on loopback, and tears it all down again however the run ends:
  - Jasmin from `.venv-jasmin` (tools/interop/jasmin.py: RabbitMQ and Redis reused when they answer, else
    started; jasmind with its HTTP API on, no DLR services), provisioned through jCli: a user allowed to
    http_send with no quota, an SMPP connector (no throttle) to its own fake SMSC, a default MT route;
  - SendSafe: its own copy of the suite (tools.suite: own databases and Redis prefix, dropped afterwards;
    rate limits on but far above the load) with BENCH_WORKERS (default 2) dispatch workers RUNNING during
    intake, delivering through BENCH_PEER_CARRIER: `smpp` (default; its own fake SMSC, the same program
    as Jasmin's) or `simulator` (the built-in carrier `make run` uses; counted in SQL as SENT/DELIVERED).
The carriers are bench/peer_smsc.py (tools/smsc.py with a live count of the submit_sm it accepted).

Then, after one smoke message and a 3 s warm-up per system, for each of BENCH_RUNS (default 3) runs and each
concurrency in BENCH_PEER_CONCURRENCY (default 16,64): Jasmin, then SendSafe, BENCH_SECONDS (default 15)
each after a 1 s warm-up on the same connections, one message per request, closed loop (bench/load.py):
  - accepted = Jasmin: HTTP 200 `Success "<id>"` (queued in RabbitMQ); SendSafe: HTTP 200 with the message's
    status SUCCESS (TLS, authenticated, durable, encrypted, audited);
  - p50/p99 of accepted requests; delivered to the carrier during the window, then what still arrives after
    it until the count stops moving for 3 s (Jasmin's intake only queues: its SMPP side drains later);
    end to end = everything that reached the carrier / (warm-up + window + drain);
  - CPU ms per accepted message per process (/proc/<pid>/stat utime+stime over the window): jasmind;
    gateway, messaging, workers, audit, keys, identity. Neither system's broker or database is counted.
Prints each run, the medians per system and concurrency and the SendSafe/Jasmin ratios, and writes
`.dev/bench/peer-<UTC time>.json` and `.png` (accepted/s and p99 by concurrency), copied to `peer-latest.*`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from urllib.parse import urlencode

from bench.load import run
from bench.peer_report import Measured, document, lines, write_results
from bench.peer_smsc import read_count
from bench.send_path import _NO_THROTTLE, _cpu_seconds, _valid_numbers
from tools.suite import REPO, Suite, SuiteConfig, drop_suite_data, ensure_databases, ensure_root_key

OUT_DIR = REPO / ".dev" / "bench"
IDLE_SECONDS = 3.0  # a carrier count that has not moved for this long is drained


@dataclass
class Target:
    """One system under load: where to send, what counts as accepted, how to count what reached its carrier,
    and which processes are its own (name -> pids; several pids of one name are summed)."""

    system: str
    url: str
    accept: Callable[[int, bytes], bool]
    delivered: Callable[[], Awaitable[int]]
    pids: dict[str, list[int]]
    ca: str | None = None
    method: str = "GET"
    body: Callable[[], bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _cpu(pids: dict[str, list[int]]) -> dict[str, float]:
    def one(pid: int) -> float:
        try:
            return _cpu_seconds(pid)
        except OSError:  # gone: counts nothing more
            return 0.0

    return {name: sum(one(p) for p in group) for name, group in pids.items()}


async def _settle(count: Callable[[], Awaitable[int]], last: int, since: float, limit: float) -> tuple[int, float]:
    """Poll the carrier count until it has not moved for IDLE_SECONDS (or `limit` s passed): (count, the time
    it last moved, or `since` if it never did)."""
    moved = since
    while True:
        await asyncio.sleep(0.25)
        now = time.perf_counter()
        cur = await count()
        if cur != last:
            last, moved = cur, now
        if now - moved >= IDLE_SECONDS or now - since >= limit:
            return last, moved


async def measure(t: Target, conc: int, run_no: int, seconds: float, warmup: float, drain_limit: float) -> Measured:
    t_start = time.perf_counter()
    d_start = await t.delivered()
    mark: dict[str, object] = {}

    async def window_opens() -> None:
        mark["cpu"], mark["delivered"], mark["t"] = _cpu(t.pids), await t.delivered(), time.perf_counter()

    res = await run(f"{t.system} c={conc}", t.url, ca=t.ca, concurrency=conc, seconds=seconds, method=t.method,
                    body=t.body, headers=t.headers, warmup=warmup, accept=t.accept, on_measure_start=window_opens)
    t_end = time.perf_counter()
    cpu_end, d_end = _cpu(t.pids), await t.delivered()
    final, moved = await _settle(t.delivered, d_end, t_end, drain_limit)
    cpu0 = mark["cpu"]
    assert isinstance(cpu0, dict) and isinstance(mark["t"], float) and isinstance(mark["delivered"], int)
    return Measured(
        system=t.system, concurrency=conc, run=run_no, seconds=t_end - mark["t"], accepted=res.requests,
        refused=res.errors, p50_ms=res.pct(50), p99_ms=res.pct(99), delivered=d_end - mark["delivered"],
        drained=final - d_end, drain_seconds=max(0.0, moved - t_end), total_delivered=final - d_start,
        total_seconds=max(moved, t_end) - t_start,
        cpu_ms={name: 1000 * (cpu_end[name] - cpu0[name]) for name in cpu_end},
    )


# -- the pieces --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _smsc(work: Path, name: str) -> Iterator[tuple[int, int]]:
    """A counting fake SMSC in its own process: (SMPP port, count port); stopped on exit."""
    port_file = work / f"{name}.ports"
    with open(work / f"{name}.log", "wb") as log:
        env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'gen' / 'python'}"}
        proc = subprocess.Popen([sys.executable, "-m", "bench.peer_smsc", str(port_file)], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; see {work / f'{name}.log'}")
            time.sleep(0.05)
        smpp, count = (int(x) for x in port_file.read_text().split())
        yield smpp, count
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _counter(port: int) -> Callable[[], Awaitable[int]]:
    return lambda: read_count(port)


def _sql_counter(dsn: str) -> Callable[[], Awaitable[int]]:
    async def count() -> int:
        import asyncpg

        conn = await asyncpg.connect(dsn)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM messages WHERE status IN ('SENT', 'DELIVERED')"))
        finally:
            await conn.close()

    return count


def _sendsafe_accepts(status: int, body: bytes) -> bool:
    if status != 200:
        return False
    try:
        return bool(json.loads(body)["data"]["messages"][0]["status"] == "SUCCESS")
    except (ValueError, KeyError, IndexError, TypeError):
        return False


def _jasmin_accepts(status: int, body: bytes) -> bool:
    return status == 200 and body.startswith(b"Success")


def _suite_pids(suite: Suite) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for label, proc in suite.procs.items():
        name = "workers" if "-worker" in label else label.split("-")[0]
        groups.setdefault(name, []).append(proc.popen.pid)
    return groups


def _git_commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True)
    return head.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")


def _stop_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every `finally`: the teardown runs


async def _smoke(targets: list[Target]) -> None:
    """One message through each system, seen at its carrier: both chains work before anything is measured."""
    for t in targets:
        before = await t.delivered()
        await run(f"{t.system} smoke", t.url, ca=t.ca, concurrency=1, seconds=0.01, method=t.method, body=t.body,
                  headers=t.headers, warmup=0.0, accept=t.accept)
        deadline = time.monotonic() + 60
        while await t.delivered() <= before:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{t.system}: a message accepted in the smoke test never reached its carrier")
            await asyncio.sleep(0.2)


def main() -> int:
    runs = int(os.environ.get("BENCH_RUNS", "3"))
    seconds = float(os.environ.get("BENCH_SECONDS", "15"))
    concs = [int(c) for c in os.environ.get("BENCH_PEER_CONCURRENCY", "16,64").split(",")]
    workers = int(os.environ.get("BENCH_WORKERS", "2"))
    carrier = os.environ.get("BENCH_PEER_CARRIER", "smpp")
    drain_limit = float(os.environ.get("BENCH_DRAIN_MAX", "180"))
    if carrier not in ("smpp", "simulator"):
        raise SystemExit("BENCH_PEER_CARRIER is smpp or simulator")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop_on_signal)
    from tools.interop.jasmin import JASMIN_VERSION

    work = Path(tempfile.mkdtemp(prefix="sendsafe-bench-peer-"))
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; {runs} runs x {seconds:.0f}s per"
          f" system and concurrency {concs}, interleaved; SendSafe: {workers} dispatch workers running,"
          f" carrier {carrier}; Jasmin {JASMIN_VERSION}: HTTP API, RabbitMQ, SMPP to a fake SMSC", flush=True)
    try:
        _run(work, runs, seconds, concs, workers, carrier, drain_limit, started)
    except BaseException:
        print(f"peer bench failed; everything it started is stopped; its logs are kept in {work}", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _run(work: Path, runs: int, seconds: float, concs: list[int], workers: int, carrier: str, drain_limit: float,
         started: str) -> None:
    from tools.certs import ensure_dev_certs
    from tools.interop.jasmin import JASMIN_VERSION, JasminChain, free_port

    with contextlib.ExitStack() as stack:
        # -- Jasmin
        j_smpp, j_count = stack.enter_context(_smsc(work, "smsc-jasmin"))
        chain = JasminChain(http_port=free_port(), run_smsc=False, smsc_port=j_smpp, dlr_services=False)
        stack.callback(chain.down)
        chain.up()
        jasmind = next(p.popen.pid for p in chain.procs if p.name == "jasmind")
        query = urlencode({"username": chain.system_id, "password": chain.password, "to": "61411111111",
                           "content": "hello from the bench"})
        jasmin = Target("jasmin", f"http://127.0.0.1:{chain.http_port}/send?{query}", _jasmin_accepts,
                        _counter(j_count), {"jasmind": [jasmind]})
        # -- SendSafe
        certs = work / "certs"
        ensure_dev_certs(certs)
        run_id = uuid.uuid4().hex[:6]
        worker_env = {**_NO_THROTTLE, "MESSAGING_TRIAL_CREDIT": "100000000"}
        counter: Callable[[], Awaitable[int]] | None = None
        if carrier == "smpp":
            s_smpp, s_count = stack.enter_context(_smsc(work, "smsc-sendsafe"))
            worker_env.update(MESSAGING_CARRIER="smpp", MESSAGING_SMPP_HOST="127.0.0.1",
                              MESSAGING_SMPP_PORT=str(s_smpp), MESSAGING_SMPP_SYSTEM_ID="bench",
                              MESSAGING_SMPP_PASSWORD="benchpw")  # noqa: S106 (the fake SMSC accepts any)
            counter = _counter(s_count)
        config = SuiteConfig(
            workdir=work / "run", certs=certs, db_prefix=f"ssbpeer_{run_id}",
            pg_admin_dsn=os.environ.get("PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
            redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), redis_prefix=f"ssbpeer:{run_id}:",
            root_key_file=ensure_root_key(work / "root.key"), log_level="WARNING", workers=workers,
            env={"messaging": {"MESSAGING_TRIAL_CREDIT": "100000000", **_NO_THROTTLE}, "worker": worker_env},
        )
        stack.callback(drop_suite_data, config)
        ensure_databases(config)
        suite = Suite(config)
        stack.callback(suite.stop)
        suite.start()
        from tools.bootstrap import bootstrap

        creds = asyncio.run(bootstrap(identity=suite.addrs["identity"], keys=suite.addrs["keys"], certs=certs,
                                      out=work / "demo.env", gateway_url=suite.gateway_url, announce_to_stdout=False))
        pair = f"{creds['SENDSAFE_USERNAME']}:{creds['SENDSAFE_API_KEY']}"
        to = _valid_numbers(1, seed=17)[0]
        sent = iter(range(1 << 62))
        sendsafe = Target(
            "sendsafe", f"{suite.gateway_url}/v3/sms/send", _sendsafe_accepts,
            counter or _sql_counter(config.database_url("messaging")), _suite_pids(suite),
            ca=str(certs / "public-ca.crt"), method="POST",
            body=lambda: json.dumps({"messages": [{"to": to, "body": f"bench {next(sent)}"}]}).encode(),
            headers={"Authorization": "Basic " + base64.b64encode(pair.encode()).decode(),
                     "Content-Type": "application/json"},
        )
        targets = [jasmin, sendsafe]
        asyncio.run(_smoke(targets))
        for t in targets:  # not recorded: first connections, caches, JIT-free Python's warm paths
            asyncio.run(measure(t, concs[0], 0, 3.0, 0.5, drain_limit))
        print("both systems deliver (smoke message seen at each carrier); warmed up", flush=True)
        results: list[Measured] = []
        for run_no in range(1, runs + 1):
            for conc in concs:
                for t in targets:
                    m = asyncio.run(measure(t, conc, run_no, seconds, 1.0, drain_limit))
                    results.append(m)
                    print(m.line(), flush=True)
        meta = {"started": started, "cores": os.cpu_count(), "python": sys.version.split()[0], "runs": runs,
                "seconds": seconds, "concurrency": concs, "warmup_seconds": 1.0, "sendsafe_workers": workers,
                "sendsafe_carrier": carrier, "jasmin_version": JASMIN_VERSION, "commit": _git_commit(),
                "idle_seconds_drained": IDLE_SECONDS}
        doc = document(meta, results)
        print("\nmedians over runs (range in brackets); CPU ms per accepted message per process:")
        for line in lines(doc["summary"]):
            print(line)
        js, png = write_results(doc, OUT_DIR, time.strftime("%Y%m%d-%H%M%S", time.gmtime()))
        print(f"results: {js.relative_to(REPO)} and {png.relative_to(REPO)} (also peer-latest.json/.png)")


if __name__ == "__main__":
    raise SystemExit(main())
