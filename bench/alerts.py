"""Alert engine: audit's CPU per event as an account's alert rules grow (issue 17).

The audit service runs as a process (tools.suite) on its own database. For each scenario a fresh account
(its default rules deleted, then exactly N rules of its own) receives a send-shaped event stream - a
gateway.SendSms and a messaging.sms.sent (details sent=1) per message, in batches of 20 from 4 emitters at
BENCH_ALERT_RATE events/s (default 1000) for BENCH_SECONDS (default 8) - and the figure is the audit
process's CPU (user+system, /proc) from the first append until the alert engine has evaluated the last
event, divided by the events (and the CPU of the PostgreSQL backends serving audit's pool); "alerts" is
that minus the 0-rule run's CPU per event (appending, sealing and the Merkle tree cost the same in every
scenario). "lag" is how long the engine took after the last append.

Scenarios: 0 rules; 1 broad rule (a threshold rule on actions ["*"]: a hit per event, 1h window, never
fires); 10 broad (ten such rules); 10 and 100 mixed (a few broad rules - thresholds over "*", a per-event
"*" rule with a cooldown, a staff-only rule with no action filter - and the rest on other actions, exact
and prefix patterns, that never match a send).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tools.suite import Suite, SuiteConfig, drop_suite_data

MANAGE = ("audit.manage", "audit.read")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_total(pids: list[int]) -> float:
    """CPU of the processes still alive (the audit pool's PostgreSQL backends stay connected)."""
    total = 0.0
    for p in pids:
        try:
            total += _cpu_seconds(p)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def _principal(account: int) -> tuple[tuple[str, bytes], ...]:
    from sendsafe.context.v1 import principal_pb2

    p = principal_pb2.Principal(account_id=account, user_id=17, permissions=list(MANAGE))
    return (("x-sendsafe-principal-bin", p.SerializeToString()),)


def _event(i: int, account: int) -> Any:
    from sendsafe.audit.v1 import event_pb2
    from svckit.audit import new_event

    if i % 2:
        ev = new_event("messaging", "messaging.sms.sent", resource_type="sms_batch", account_id=account,
                       details={"sent": "1", "retried": "0", "failed": "0", "carrier": "sim"})
        ev.actor.type, ev.actor.id = "service", "messaging-worker"
    else:
        ev = new_event("gateway", "gateway.SendSms", resource_type="http_route", resource_id="/v3/sms/send",
                       account_id=account, details={"http_status": "200", "method": "POST"})
        ev.actor.type, ev.actor.id, ev.actor.api_key_id = "user", "17", "k_3f9a2b7c"
        ev.source.client_address = f"203.0.113.{i % 250}"
    ev.request_id = uuid.uuid4().hex
    ev.outcome = event_pb2.OUTCOME_SUCCESS
    return ev


_OTHER_ACTIONS = ["keys.api_key.issued", "keys.api_key.revoked", "identity.login", "identity.password.changed",
                  "messaging.contact.created", "messaging.contact_list.deleted", "messaging.export.downloaded",
                  "messaging.sender.activated", "identity.auth.failed", "audit.webhook_secret.rotated"]


def _rules(kind: str, n: int) -> list[Any]:
    from sendsafe.audit.v1 import alert_pb2
    from sendsafe.audit.v1.event_pb2 import OUTCOME_DENIED, OUTCOME_FAILURE

    def broad(i: int) -> alert_pb2.AlertRule:
        return alert_pb2.AlertRule(name=f"all events {i}", actions=["*"], threshold=1_000_000,
                                   window_seconds=3600 + 60 * i)

    if kind == "broad":
        return [broad(i) for i in range(n)]
    out = [broad(0)]
    if n >= 10:
        out += [alert_pb2.AlertRule(name="any event, hourly", actions=["*"], cooldown_seconds=3600),
                alert_pb2.AlertRule(name="staff", actor_types=["staff"])]
    if n >= 100:
        out += [broad(1), alert_pb2.AlertRule(name="any failure", actions=["*"],
                                              outcomes=[OUTCOME_FAILURE, OUTCOME_DENIED])]
    i = 0
    while len(out) < n:
        action = _OTHER_ACTIONS[i % len(_OTHER_ACTIONS)]
        pattern = action if i % 3 else action.rsplit(".", 1)[0] + ".*"
        out.append(alert_pb2.AlertRule(name=f"specific {i}", actions=[pattern, f"x{i}.never"],
                                       threshold=5 if i % 2 else 0, window_seconds=600 if i % 2 else 0))
        i += 1
    return out


async def _scenario(addr: str, certs: Path, dsn: str, pid: int, account: int, rules: list[Any],
                    rate: float, seconds: float) -> tuple[int, float, float, float, int]:
    import asyncpg

    from sendsafe.audit.v1 import audit_service_pb2 as pb
    from sendsafe.audit.v1 import audit_service_pb2_grpc
    from svckit.rpc import secure_channel
    from svckit.tls import TlsFiles

    tls = TlsFiles(certs / "gateway.crt", certs / "gateway.key", certs / "internal-ca.crt")
    db = await asyncpg.connect(dsn)
    async with secure_channel(addr, tls, server_name="audit", timeout=60) as ch:
        stub = audit_service_pb2_grpc.AuditServiceStub(ch)
        md = _principal(account)
        for r in (await stub.ListAlertRules(pb.ListAlertRulesRequest(), metadata=md)).rules:
            await stub.DeleteAlertRule(pb.DeleteAlertRuleRequest(rule_id=r.rule_id), metadata=md)
        for rule in rules:
            await stub.CreateAlertRule(pb.CreateAlertRuleRequest(rule=rule), metadata=md)

        async def caught_up() -> bool:
            size = await db.fetchval("SELECT size FROM tree_head")
            return bool(await db.fetchval("SELECT sequence FROM processor_cursors WHERE name = 'alerts'") >= size)

        while not await caught_up():  # noqa: ASYNC110 - polls another process's state
            await asyncio.sleep(0.05)
        batch, emitters = 20, 4
        period = batch * emitters / rate
        sent = 0
        backends = [r["pid"] for r in await db.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")]
        pg0 = _cpu_total(backends)
        cpu0, t0 = _cpu_seconds(pid), time.perf_counter()
        stop = t0 + seconds

        async def emit(k: int) -> None:
            nonlocal sent
            due = t0 + k * period / emitters
            while due < stop:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                evs = [_event(sent + j, account) for j in range(batch)]
                await stub.AppendEvents(pb.AppendEventsRequest(events=evs))
                sent += batch
                due += period

        await asyncio.gather(*(emit(k) for k in range(emitters)))
        t_end = time.perf_counter()
        deadline = t_end + 90
        while not await caught_up() and time.perf_counter() < deadline:  # noqa: ASYNC110 - as above
            await asyncio.sleep(0.02)
        lag = time.perf_counter() - t_end
        cpu = _cpu_seconds(pid) - cpu0
        pg = _cpu_total(backends) - pg0
        fired = await db.fetchval("SELECT count(*) FROM alerts WHERE account_id = $1", account)
    await db.close()
    return sent, cpu, pg, lag, int(fired)


def main() -> int:
    seconds = float(os.environ.get("BENCH_SECONDS", "8"))
    rate = float(os.environ.get("BENCH_ALERT_RATE", "1000"))
    work = Path(tempfile.mkdtemp(prefix="sendsafe-bench-alerts-"))
    from svckit.db import ensure_database
    from tools.certs import ensure_dev_certs

    certs = work / "certs"
    ensure_dev_certs(certs)
    run_id = uuid.uuid4().hex[:6]
    config = SuiteConfig(
        workdir=work / "run", certs=certs, db_prefix=f"ssbenchalerts_{run_id}",
        pg_admin_dsn=os.environ.get("PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
        redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), redis_prefix=f"ssbenchalerts:{run_id}:",
        log_level="WARNING", env={"audit": {"AUDIT_CHECKPOINT_INTERVAL_SECONDS": "5",
                                            "AUDIT_VERIFY_INTERVAL_SECONDS": "0"}},
    )
    config.workdir.mkdir(parents=True)
    dsn = config.database_url("audit")
    asyncio.run(ensure_database(dsn))
    suite = Suite(config)
    scenarios = [("0 rules", "mixed", 0), ("1 broad", "broad", 1), ("10 broad", "broad", 10),
                 ("10 mixed", "mixed", 10), ("100 mixed", "mixed", 100)]
    chosen = os.environ.get("BENCH_ALERT_SCENARIOS", "")
    if chosen:
        scenarios = [s for s in scenarios if s[0] in {c.strip() for c in chosen.split(",")}]
    try:
        proc = suite.start_process("audit")
        addr = suite.addrs["audit"]
        print(f"{seconds:.0f} s of sends at {rate:,.0f} events/s per scenario; audit CPU per event until the alert"
              " engine has caught up")
        base: float | None = None
        for i, (label, kind, n) in enumerate(scenarios):
            rules = _rules(kind, n)
            sent, cpu, pg, lag, fired = asyncio.run(
                _scenario(addr, certs, dsn, proc.popen.pid, 880000 + i, rules, rate, seconds))
            per = 1e6 * cpu / sent
            if n == 0:
                base = per
            extra = f"  alerts {per - base:6.1f} µs/event" if base is not None and n else ""
            print(f"{label:>10}: {sent:6d} events, audit CPU {per:6.1f} µs/event{extra},"
                  f" its PostgreSQL backends {1e6 * pg / sent:6.1f} µs/event, lag after last append {lag:5.2f} s,"
                  f" alerts fired {fired}", flush=True)
    finally:
        suite.stop()
        drop_suite_data(config)
    return 0
