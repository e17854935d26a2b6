"""`make run`: the whole suite on this machine, ready to take a curl.

Makes sure PostgreSQL and Redis answer (starting the installed servers, or private instances under
.dev/, when they do not), creates certificates, the development root key and the databases, starts the
four services, the delivery worker and the gateway as separate processes over mTLS on loopback,
creates the demo account and API key on first run, prints a curl line, and stops everything on Ctrl-C.

Configuration (environment): GATEWAY_PORT (8443), AUDIT_PORT (50054), KEYS_PORT (50052),
MESSAGING_PORT (50053), IDENTITY_PORT (50051), PG_DSN (postgresql://postgres@127.0.0.1:5432/postgres; or
PGPASSWORD / ~/.pgpass for its password; a server that refuses the login gets a private cluster under
.dev/pg instead, see tools/localpg.py), REDIS_URL (redis://127.0.0.1:6379/0), SENDSAFE_TRACE_UI=1 (start
Arize Phoenix and export traces to it).
It also writes `.dev/backup.env`, the settings `python -m tools.backup` needs for these databases.
`--reset` (`make run RESET=1`) first drops make run's databases and Redis keys: the demo data goes, and
the suite starts over with this checkout's `.dev/` keys.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from tools.localpg import PgMissingError, admin_dsn, pg_bin, redact, usable_admin_dsn
from tools.suite import (
    REPO,
    SERVICES,
    StartError,
    Suite,
    SuiteConfig,
    drop_suite_data,
    ensure_databases,
    ensure_root_key,
)

DEV = REPO / ".dev"


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _wait_for(host: str, port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _answers(host, port):
            return True
        time.sleep(0.2)
    return False


def ensure_postgres(dsn: str) -> str:
    """The admin DSN `make run` uses: `dsn` if we can log in with it; a private cluster under .dev/pg when the
    server answers but refuses the login (a stock Debian/Ubuntu server asks for a password on 127.0.0.1); the
    installed server started (or a private one on its port under .dev/pgdata) when nothing answers."""
    usable, reach = usable_admin_dsn(dsn, DEV / "pg")
    if reach == "refused":
        print(f"PostgreSQL at {redact(dsn)} refused our login (set PG_DSN, or PGPASSWORD, to use it); "
              f"using a private cluster under {DEV / 'pg'}: {usable}")
    if reach != "down":
        return usable
    parts = urlsplit(dsn)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5432
    print(f"PostgreSQL is not answering on {host}:{port}; starting it")
    versions = sorted(Path("/etc/postgresql").glob("*")) if Path("/etc/postgresql").exists() else []
    if versions and shutil.which("pg_ctlcluster"):
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1].name, "main", "start"], check=False)
        if _wait_for(host, port, 20):
            return ensure_postgres(dsn)  # it answers now: it may still refuse our login
    try:
        initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    except PgMissingError as exc:
        sys.exit(str(exc))
    data = DEV / "pgdata"
    data.parent.mkdir(exist_ok=True)
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        if as_pg:
            shutil.chown(data, "postgres", "postgres")
        subprocess.run([*as_pg, initdb, "-A", "trust", "-U", "postgres", "-D", str(data)], check=True)
    subprocess.run(
        [*as_pg, pg_ctl, "-D", str(data), "-l", str(data / "server.log"), "-w",
         "-o", f"-p {port} -k /tmp -c listen_addresses={host}", "start"],
        check=True,
    )
    if not _wait_for(host, port, 20):
        sys.exit(f"PostgreSQL did not start; see {data / 'server.log'}")
    return dsn


def ensure_redis(url: str) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if _answers(host, port):
        return
    print(f"Redis is not answering on {host}:{port}; starting it")
    if not shutil.which("redis-server"):
        sys.exit("Redis is not installed. Install it with: apt-get install -y redis-server")
    DEV.mkdir(exist_ok=True)
    subprocess.run(
        ["redis-server", "--daemonize", "yes", "--bind", host, "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", str(DEV), "--logfile", str(DEV / "redis.log")],
        check=True,
    )
    if not _wait_for(host, port, 10):
        sys.exit(f"Redis did not start; see {DEV / 'redis.log'}")


def start_trace_ui(env: dict[str, str]) -> subprocess.Popen[bytes] | None:
    phoenix = REPO / ".venv-phoenix" / "bin" / "phoenix"
    if not phoenix.exists():
        print("SENDSAFE_TRACE_UI=1 needs the trace UI: run `make trace-ui-install` first")
        return None
    ui_env = dict(os.environ, PHOENIX_WORKING_DIR=str(DEV / "phoenix"), PHOENIX_HOST="127.0.0.1",
                  PHOENIX_PORT="16006", PHOENIX_GRPC_PORT="14317", PHOENIX_TELEMETRY_ENABLED="false")
    log = open(DEV / "phoenix.log", "ab")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen([str(phoenix), "serve"], env=ui_env, stdout=log, stderr=subprocess.STDOUT)
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:14317"
    # Start the suite once the receiver listens, so no span is dropped (Phoenix takes some seconds).
    print("Starting the trace UI (Arize Phoenix)…", flush=True)
    if _wait_for("127.0.0.1", 14317, 120) and _wait_for("127.0.0.1", 16006, 60):
        print("Trace UI: http://127.0.0.1:16006 (Arize Phoenix; its OTLP receiver listens on *:14317)")
    else:
        print(f"The trace UI did not start in time; see {DEV / 'phoenix.log'} (traces arrive once it has)")
    return proc


def write_backup_env(config: SuiteConfig) -> Path:
    """`.dev/backup.env` (0600): what `python -m tools.backup` reads, for make run's databases, with a
    development backup key in `.dev/backup.key`. Use: `. .dev/backup.env` (docs/runbook.md)."""
    key = ensure_root_key(DEV / "backup.key")  # the same shape: 32 random bytes, hex, 0600
    lines = [f"export BACKUP_KEY_FILE={shlex.quote(str(key))}"]
    lines += [f"export {svc.upper()}_DATABASE_URL={shlex.quote(config.database_url(svc))}" for svc in SERVICES]
    path = DEV / "backup.env"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a DSN may hold a password
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def reset(config: SuiteConfig) -> None:
    """Drop make run's databases and Redis keys (only those: its database names and Redis prefix)."""
    drop_suite_data(config)
    (DEV / "demo.env").unlink(missing_ok=True)
    print(f"Dropped the databases {config.db_prefix}_* and the Redis keys {config.redis_prefix}*; starting over.")


ROOT_KEY_MISMATCH = "do not open them"  # in the keys service's start-up refusal (services.keys.service.key_rings)


def main(argv: list[str] | None = None) -> int:
    pg_dsn = ensure_postgres(admin_dsn())
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    ensure_redis(redis_url)
    from tools.certs import ensure_dev_certs

    certs = DEV / "certs"
    ensure_dev_certs(certs)
    sender_key = ensure_root_key(DEV / "sender-index.key")  # sender numbers' platform hash key (issue 21)
    config = SuiteConfig(
        workdir=DEV / "run",
        certs=certs,
        pg_admin_dsn=pg_dsn,
        redis_url=redis_url,
        root_key_file=ensure_root_key(DEV / "keys-root.key"),
        ports={
            "gateway": int(os.environ.get("GATEWAY_PORT", "8443")),
            "identity": int(os.environ.get("IDENTITY_PORT", "50051")),
            "keys": int(os.environ.get("KEYS_PORT", "50052")),
            "messaging": int(os.environ.get("MESSAGING_PORT", "50053")),
            "audit": int(os.environ.get("AUDIT_PORT", "50054")),
        },
        # Audit checkpoints and webhook secrets survive restarts; alert SMS go through messaging's pinned port.
        env={"audit": {
            "AUDIT_SIGNING_KEY_FILE": str(ensure_root_key(DEV / "audit-signing.key")),
            "AUDIT_WEBHOOK_KEY_FILE": str(ensure_root_key(DEV / "audit-webhook.key")),
            "MESSAGING_ADDR": f"127.0.0.1:{os.environ.get('MESSAGING_PORT', '50053')}",
        }, **{role: {"MESSAGING_SENDER_INDEX_KEY_FILE": str(sender_key)} for role in ("messaging", "worker")}},
    )
    if "--reset" in (sys.argv[1:] if argv is None else argv):
        reset(config)
    ensure_databases(config)
    write_backup_env(config)
    ui = start_trace_ui(os.environ) if os.environ.get("SENDSAFE_TRACE_UI") == "1" else None  # type: ignore[arg-type]
    suite = Suite(config)
    try:
        try:
            suite.start()
        except StartError as exc:
            if ROOT_KEY_MISMATCH not in str(exc):
                raise
            print(
                f"\nThe databases {config.db_prefix}_* were written under another development root key than\n"
                f"  {DEV / 'keys-root.key'}\n"
                "(another checkout's `make run` on this machine, or .dev/ was deleted): nothing stored in them\n"
                "can be decrypted with this one. Put back the keys-root.key that wrote them, or start over,\n"
                "dropping make run's databases and demo data:\n  make run RESET=1",
                file=sys.stderr,
            )
            return 1
        from tools.bootstrap import bootstrap

        asyncio.run(
            bootstrap(
                identity=suite.addrs["identity"], keys=suite.addrs["keys"], certs=certs,
                out=DEV / "demo.env", gateway_url=suite.gateway_url,
            )
        )
        from tools.numbers import DEMO_NUMBERS, load, ops_files

        added, _ = asyncio.run(load(suite.addrs["messaging"], ops_files(certs), list(DEMO_NUMBERS)))
        print(f"Dedicated numbers for sale: {len(DEMO_NUMBERS)} demo numbers ({added} new): GET /v3/numbers/search/AU")
        print(f"\nSendSafe is running (logs in {config.workdir}). Press Ctrl-C to stop.")
        stop = {"now": False}

        def on_signal(*_: object) -> None:
            stop["now"] = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not stop["now"]:
            dead = [p.name for p in suite.procs.values() if p.popen.poll() is not None]
            if dead:
                print(f"stopped unexpectedly: {', '.join(dead)} (see {config.workdir})")
                break
            time.sleep(0.5)
    finally:
        print("stopping…")
        suite.stop()
        if ui is not None:
            ui.terminate()
            try:
                ui.wait(15)
            except subprocess.TimeoutExpired:
                ui.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
