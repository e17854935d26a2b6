"""Start the whole suite as separate processes on loopback: used by `make run`, e2e tests and benchmarks.

Order follows the call graph so every process knows its peers' addresses before it starts:
audit -> keys -> messaging (+ worker) -> identity -> gateway. Each process binds the port it is given
(0 = any free port) and reports it through PORT_FILE. A service can run as several processes
(`SuiteConfig.replicas`, like replicas of a Deployment): its peers then get a gRPC target naming every
replica (`ipv4:127.0.0.1:P1,127.0.0.1:P2`) and spread their calls round robin (svckit.rpc).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
SERVICES = ("audit", "keys", "messaging", "identity")


@dataclass
class SuiteConfig:
    workdir: Path
    certs: Path
    pg_admin_dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    db_prefix: str = "sendsafe"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "sendsafe:"
    root_key_file: Path | None = None
    ports: dict[str, int] = field(default_factory=dict)
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    python: str = sys.executable
    log_level: str = "INFO"
    workers: int = 1
    replicas: dict[str, int] = field(default_factory=dict)  # API processes per service (default 1)

    def database_url(self, service: str) -> str:
        parts = urlsplit(self.pg_admin_dsn)
        return urlunsplit(parts._replace(path=f"/{self.db_prefix}_{service}"))


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int | None


class StartError(RuntimeError):
    pass


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the launcher dies, however it dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class Suite:
    def __init__(self, config: SuiteConfig) -> None:
        self.config = config
        self.procs: dict[str, Proc] = {}
        self.addrs: dict[str, str] = {}
        self._ports: dict[str, dict[str, int]] = {}  # service -> replica label -> port

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> Suite:
        cfg = self.config
        cfg.workdir.mkdir(parents=True, exist_ok=True)
        for callee in ("messaging", "identity"):
            if not cfg.ports.get(callee):
                # Audit (started first) sends alert SMS through messaging, and messaging (started before
                # identity) re-checks their owners there: these ports are known up front.
                cfg.ports[callee] = _free_port()
        try:
            for name in ("audit", "keys", "messaging", "identity"):
                for replica in range(max(1, cfg.replicas.get(name, 1))):
                    self.start_process(name, suffix=f"-{replica + 1}" if replica else "", timeout=timeout)
            for i in range(cfg.workers):
                self.start_process("messaging", worker=True, suffix=str(i), timeout=timeout)
            self.start_process("gateway", timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace: float = 10.0) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            remaining = max(0.1, deadline - time.monotonic())
            try:
                proc.popen.wait(remaining)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        self.procs.clear()

    def __enter__(self) -> Suite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def gateway_url(self) -> str:
        port = self.procs["gateway"].port
        return f"https://localhost:{port}"

    # -- processes -------------------------------------------------------------------------------------
    def env_for(self, name: str, port_file: Path | None, worker: bool = False) -> dict[str, str]:
        cfg = self.config
        cert_name = "messaging" if worker else name
        env = {
            k: v for k, v in os.environ.items()
            if not k.startswith(("GRPC_", "TLS_", "DATABASE_URL", "PORT_FILE", "GATEWAY_", "METRICS_"))
        }
        env.update(
            SERVICE_NAME=name,
            PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'gen' / 'python'}",
            TLS_CERT_FILE=str(cfg.certs / f"{cert_name}.crt"),
            TLS_KEY_FILE=str(cfg.certs / f"{cert_name}.key"),
            TLS_CA_FILE=str(cfg.certs / "internal-ca.crt"),
            REDIS_URL=cfg.redis_url,
            REDIS_PREFIX=cfg.redis_prefix,
            LOG_LEVEL=cfg.log_level,
            PYTHONUNBUFFERED="1",
        )
        for peer, addr in self.addrs.items():
            env[f"{peer.upper()}_ADDR"] = addr
        for caller, callee in (("audit", "messaging"), ("messaging", "identity")):
            if name == caller and callee not in self.addrs and cfg.ports.get(callee):
                env[f"{callee.upper()}_ADDR"] = f"127.0.0.1:{cfg.ports[callee]}"
        if port_file is not None:
            env["PORT_FILE"] = str(port_file)
        # Every process serves /metrics on a port of its own choosing, reported in <label>.metrics.
        env["METRICS_LISTEN"] = "127.0.0.1:0"
        # A fixed port belongs to the first replica; further replicas take any free port.
        port = cfg.ports.get(name, 0) if port_file is None or port_file.stem == name else 0
        if name == "gateway":
            env.update(
                GATEWAY_HTTPS_LISTEN=f"127.0.0.1:{port}",
                GATEWAY_HTTPS_CERT_FILE=str(cfg.certs / "gateway-https.crt"),
                GATEWAY_HTTPS_KEY_FILE=str(cfg.certs / "gateway-https.key"),
            )
        else:
            env["GRPC_LISTEN"] = f"127.0.0.1:{0 if worker else port}"
            env["DATABASE_URL"] = cfg.database_url(name)
        if name == "keys" and cfg.root_key_file is not None:
            env["KEYS_ROOT_KEY_FILE"] = str(cfg.root_key_file)
        env.update(cfg.env.get("worker" if worker else name, {}))
        return env

    def start_process(self, name: str, *, worker: bool = False, suffix: str = "", timeout: float = 60.0) -> Proc:
        cfg = self.config
        label = f"{name}-worker{suffix}" if worker else f"{name}{suffix}"
        log = cfg.workdir / f"{label}.log"
        port_file = None if worker else cfg.workdir / f"{label}.port"
        if port_file is not None:
            with contextlib.suppress(FileNotFoundError):
                port_file.unlink()
        module = "gateway" if name == "gateway" else f"services.{name}"
        args = [cfg.python, "-m", module, *(["worker"] if worker else [])]
        env = self.env_for(name, port_file, worker)
        metrics_file = cfg.workdir / f"{label}.metrics"
        with contextlib.suppress(FileNotFoundError):
            metrics_file.unlink()
        env.setdefault("METRICS_PORT_FILE", str(metrics_file))
        with open(log, "ab") as fh:
            popen = subprocess.Popen(
                args, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        proc = Proc(label, popen, log, None)
        self.procs[label] = proc
        if port_file is not None:
            proc.port = self._wait_port(proc, port_file, timeout)
            if name != "gateway":
                ports = self._ports.setdefault(name, {})
                ports[label] = proc.port
                hosts = [f"127.0.0.1:{p}" for p in ports.values()]
                self.addrs[name] = hosts[0] if len(hosts) == 1 else "ipv4:" + ",".join(hosts)
        return proc

    def restart(self, label: str, timeout: float = 60.0) -> Proc:
        """Start again a process that stopped (same role, a new port for servers)."""
        worker = "-worker" in label
        if worker:
            name, suffix = label.split("-worker")
        else:
            name, _, replica = label.partition("-")
            suffix = f"-{replica}" if replica else ""
        return self.start_process(name, worker=worker, suffix=suffix, timeout=timeout)

    def metrics_ports(self, timeout: float = 60.0) -> dict[str, int]:
        """Each running process's /metrics port by label (waits for workers, which report no other port)."""
        return {label: self._wait_port(proc, self.config.workdir / f"{label}.metrics", timeout)
                for label, proc in self.procs.items()}

    def _wait_port(self, proc: Proc, port_file: Path, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port_file.exists():
                return int(port_file.read_text())
            if proc.popen.poll() is not None:
                tail = proc.log.read_text(errors="replace")[-4000:]
                raise StartError(f"{proc.name} exited with {proc.popen.returncode}:\n{tail}")
            time.sleep(0.05)
        raise StartError(f"{proc.name} did not report its port within {timeout:.0f}s (log: {proc.log})")


def ensure_databases(config: SuiteConfig) -> None:
    """Create the four service databases if missing."""
    import asyncio

    from svckit.db import ensure_database

    async def run() -> None:
        for name in SERVICES:
            await ensure_database(config.database_url(name))

    asyncio.run(run())


def drop_suite_data(config: SuiteConfig) -> None:
    """Drop the suite's four databases and delete its Redis keys (everything under `redis_prefix`)."""
    import asyncio

    import redis.asyncio as aioredis

    from svckit.db import drop_database

    async def run() -> None:
        for name in SERVICES:
            await drop_database(config.database_url(name))
        client = aioredis.Redis.from_url(config.redis_url)
        try:
            keys = [k async for k in client.scan_iter(match=f"{config.redis_prefix}*", count=1000)]
            for i in range(0, len(keys), 1000):
                await client.delete(*keys[i:i + 1000])
        finally:
            await client.aclose()

    asyncio.run(run())


def ensure_root_key(path: Path) -> Path:
    """A development root key (32 random bytes, hex) written 0600 if missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(os.urandom(32).hex())
    return path
