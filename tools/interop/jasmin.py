"""Jasmin (PyPI `jasmin` 0.11.1, the open-source SMS gateway) as SendSafe's SMSC, for the interop chain
SendSafe -> Jasmin's SMPP server -> throwaway SMSC (tools/smsc.py) -> DLRs back the same way.

Idempotent and self-contained (stdlib only; run with the project's Python):

* a Python 3.11 virtualenv `.venv-jasmin` in the repo with jasmin==0.11.1 (gitignored, like .venv-checkov);
* RabbitMQ on 127.0.0.1:5672 and Redis on 127.0.0.1:6379 answering: reused when they do, else started
  here (data under the work dir) and stopped again at the end; Jasmin uses Redis database 11;
* a loopback-only jasmin.cfg under a temp dir (ROOT_PATH), jasmind with DLR lookup and DLR thrower on,
  its SMPP server on 127.0.0.1:2775 and jCli on 127.0.0.1:8990 (HTTP API off);
* the throwaway SMSC (`python -m tools.smsc`, DLRs on) unless the caller runs one itself;
* provisioning through jCli (telnet): group + user SendSafe binds as (bind authorised, enough bindings, no
  balance/throughput quota), an SMPP client connector to the SMSC (no throttle), DefaultRoute (MT) to it.
  Jasmin then sends a DLR (`deliver_sm`, esm_class 0x04, receipted_message_id = its UUID) to the bound
  user for every submit_sm with registered_delivery 1.

Everything started is stopped by its pid in `down()` (in reverse), and the temp dir removed.

    python -m tools.interop.jasmin smoke   # up, one bind + submit + DLR through Jasmin, down
    python -m tools.interop.jasmin up      # up until Ctrl-C (prints where to bind)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tools.interop.jcli import HOST, InteropError, JCli, log

__all__ = ["HOST", "InteropError", "JasminChain", "smoke"]

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv-jasmin"
JASMIN_VERSION = "0.11.1"


def port_open(port: int, host: str = HOST) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], what: str, timeout: float, proc: subprocess.Popen[bytes] | None = None,
             logfile: Path | None = None) -> None:
    """Poll `check()` until true; fail naming `what` (and the log) after `timeout` s or if `proc` died."""
    end = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            raise InteropError(f"{what}: the process exited ({proc.returncode}); see {logfile}")
        if time.monotonic() > end:
            raise InteropError(f"{what}: not ready after {timeout:.0f}s; see {logfile}")
        time.sleep(0.2)


# jasmin 0.11.1 never maps an upstream submit_sm_resp to its SMPP-server user's message (listeners.py reads
# `.response` from the request PDU: "'SubmitSM' object has no attribute 'response'"), so no DLR ever goes
# back to an ESME. jookies/jasmin#1236 names the fix, which is exactly what 0.11.0 had; applied here.
_DLR_BUG = ("_pdu.response.id, msgid=msgid, status=_pdu.response.status", "smpp_msgid=_pdu.response.params")
_DLR_FIX = ("r.response.id, msgid=msgid, status=r.response.status", "smpp_msgid=r.response.params")


def ensure_venv() -> Path:
    """.venv-jasmin with jasmin==0.11.1 (Jasmin 0.11 needs Python <= 3.11) and the DLR fix; returns its
    python."""
    py = VENV / "bin" / "python"
    probe = f"import importlib.metadata as m; assert m.version('jasmin') == '{JASMIN_VERSION}'"
    if not (py.exists() and subprocess.run([py, "-c", probe], capture_output=True).returncode == 0):
        base = shutil.which("python3.11")
        if base is None:
            raise InteropError("python3.11 not found (jasmin 0.11.1 runs on Python <= 3.11)")
        log(f"creating {VENV} with jasmin=={JASMIN_VERSION}")
        shutil.rmtree(VENV, ignore_errors=True)
        subprocess.run([base, "-m", "venv", VENV], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", f"jasmin=={JASMIN_VERSION}"], check=True)
    _fix_dlr_mapping(py)
    return py


def _fix_dlr_mapping(py: Path) -> None:
    where = subprocess.run([py, "-c", "import jasmin.managers.listeners as m; print(m.__file__)"],
                           check=True, capture_output=True, text=True).stdout.strip()
    listeners = Path(where)
    text = listeners.read_text()
    if all(fix in text for fix in _DLR_FIX) and not any(bug in text for bug in _DLR_BUG):
        return
    if not all(bug in text for bug in _DLR_BUG):
        raise InteropError(f"{listeners}: neither the known DLR bug nor its fix is there; check the Jasmin version")
    log("applying the jookies/jasmin#1236 fix (DLRs to SMPP users) to the venv's jasmin")
    for bug, fix in zip(_DLR_BUG, _DLR_FIX, strict=True):
        text = text.replace(bug, fix)
    listeners.write_text(text)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    logfile: Path
    stop_argv: list[str] | None = None  # how to stop it when a signal to our child is not enough

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen.poll() is not None:
            return
        if self.stop_argv:
            subprocess.run(self.stop_argv, capture_output=True, timeout=60)
        else:
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"{self.name} (pid {self.popen.pid}) did not stop in {timeout:.0f}s; SIGKILL")
            self.popen.kill()
            self.popen.wait(5)


def start(name: str, argv: list[str], logfile: Path, env: dict[str, str] | None = None) -> Proc:
    out = logfile.open("ab")
    popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                             start_new_session=True, cwd=REPO)
    out.close()
    return Proc(name, popen, logfile)


def redis_answers(port: int = 6379) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")
    return False


@dataclass
class JasminChain:
    """The chain's pieces. `up()` then bind an ESME to (HOST, smpp_port) as system_id/password; `down()`."""

    system_id: str = "sendsafe"
    password: str = field(default_factory=lambda: secrets.token_hex(4))  # SMPP 3.4: at most 8 octets
    smpp_port: int = 2775
    jcli_port: int = 8990
    amqp_port: int = 5672
    redis_port: int = 6379
    redis_db: int = 11
    smsc_port: int = 0  # 0: a free port
    run_smsc: bool = True  # False: the caller runs an SMSC on smsc_port
    smsc_dlr_delay: float = 0.05
    connector: str = "sendsafe-smsc"
    # The peer benchmark (bench/peer.py) sends over Jasmin's HTTP API instead: http_port > 0 turns it on
    # (the user may then http_send, no throughput quota), dlr_services=False starts jasmind without its DLR
    # lookup/thrower (plain HTTP sends ask for no receipt; the stock jasmind runs without them).
    http_port: int = 0
    dlr_services: bool = True
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sendsafe-jasmin-")))
    procs: list[Proc] = field(default_factory=list)

    @property
    def logs(self) -> Path:
        return self.workdir / "var" / "log" / "jasmin"

    def up(self) -> JasminChain:
        try:
            self._up()
        except BaseException:
            self.down()
            raise
        return self

    def _up(self) -> None:
        py = ensure_venv()
        self.logs.mkdir(parents=True, exist_ok=True)
        self._ensure_redis()
        self._ensure_rabbitmq()
        for port, what in ((self.smpp_port, "Jasmin's SMPP server"), (self.jcli_port, "jCli"),
                           (self.http_port, "Jasmin's HTTP API")):
            if port and port_open(port):
                raise InteropError(f"127.0.0.1:{port} ({what}) is taken: another Jasmin is running? stop it first")
        if self.run_smsc:
            self.smsc_port = self.smsc_port or free_port()
            smsc = start("smsc", [sys.executable, "-m", "tools.smsc", "--port", str(self.smsc_port),
                                  "--dlr-delay", str(self.smsc_dlr_delay)], self.logs / "smsc.log",
                         env={"PYTHONPATH": f"{REPO}:{REPO / 'gen' / 'python'}"})
            self.procs.append(smsc)
            wait_for(lambda: port_open(self.smsc_port), "the throwaway SMSC", 15, smsc.popen, smsc.logfile)
        elif not self.smsc_port:
            raise InteropError("run_smsc=False needs the caller's smsc_port")
        self._write_config(py)
        self._clear_stale_lock()
        options = [*(["--enable-dlr-lookup", "--enable-dlr-thrower"] if self.dlr_services else []),
                   *([] if self.http_port else ["--disable-http-api"])]
        jasmind = start("jasmind", [str(py), str(VENV / "bin" / "jasmind.py"), "-c", str(self.config_file), *options],
                        self.logs / "jasmind.out", env={"ROOT_PATH": str(self.workdir)})
        self.procs.append(jasmind)
        wait_for(lambda: all(port_open(p) for p in (self.jcli_port, self.smpp_port, self.http_port) if p),
                 "jasmind (jCli, SMPP server, HTTP API if on)", 60, jasmind.popen, jasmind.logfile)
        self._provision()
        log(f"ready: bind to {HOST}:{self.smpp_port} as {self.system_id}; SMSC on {HOST}:{self.smsc_port}; "
            f"logs in {self.logs}")

    def down(self) -> None:
        while self.procs:
            proc = self.procs.pop()
            proc.stop()
        if os.environ.get("JASMIN_INTEROP_KEEP_LOGS") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def config_file(self) -> Path:
        return self.workdir / "etc" / "jasmin" / "jasmin.cfg"

    def _ensure_redis(self) -> None:
        if redis_answers(self.redis_port):
            return
        server = shutil.which("redis-server")
        if server is None:
            raise InteropError("Redis does not answer on 6379 and redis-server is not installed")
        log(f"starting redis-server on {HOST}:{self.redis_port}")
        proc = start("redis", [server, "--bind", HOST, "--port", str(self.redis_port), "--save", "",
                               "--appendonly", "no", "--dir", str(self.workdir)], self.logs / "redis.log")
        self.procs.append(proc)
        wait_for(lambda: redis_answers(self.redis_port), "redis-server", 20, proc.popen, proc.logfile)

    def _ensure_rabbitmq(self) -> None:
        if port_open(self.amqp_port):
            return
        server = shutil.which("rabbitmq-server") or ("/usr/sbin/rabbitmq-server"
                                                     if Path("/usr/sbin/rabbitmq-server").exists() else None)
        if server is None:
            raise InteropError("RabbitMQ does not answer on 5672 and rabbitmq-server is not installed"
                               " (apt-get install -y rabbitmq-server; `make interop` does it)")
        data = self.workdir / "rabbitmq"
        data.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(KeyError, OSError):
            shutil.chown(data, "rabbitmq", "rabbitmq")
            shutil.chown(self.workdir, "rabbitmq", "rabbitmq")
        conf = data / "rabbitmq.conf"  # our own: the machine's /etc/rabbitmq may name another listener
        conf.write_text(f"listeners.tcp.local = {HOST}:{self.amqp_port}\n")
        node = f"sendsafe-interop-{self.amqp_port}@localhost"
        log(f"starting rabbitmq-server on {HOST}:{self.amqp_port}")
        proc = start("rabbitmq", [server], self.logs / "rabbitmq.log", env={
            "RABBITMQ_CONFIG_FILE": str(conf),
            "RABBITMQ_NODENAME": node,
            "RABBITMQ_NODE_IP_ADDRESS": HOST, "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.amqp_port + 20000), "ERL_EPMD_ADDRESS": HOST,
            "RABBITMQ_MNESIA_BASE": str(data / "mnesia"), "RABBITMQ_LOG_BASE": str(data / "log"),
            "RABBITMQ_PID_FILE": str(data / "rabbit.pid"),
        })
        # Debian's wrapper runs the broker under `su rabbitmq` in its own session: a signal to our child
        # does not reach it, `rabbitmqctl stop` does.
        proc.stop_argv = [shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl", "-n", node, "stop"]
        self.procs.append(proc)
        wait_for(lambda: port_open(self.amqp_port), "rabbitmq-server", 120, proc.popen, proc.logfile)

    def _write_config(self, py: Path) -> None:
        etc = self.config_file.parent
        (etc / "resource").mkdir(parents=True, exist_ok=True)
        (etc / "store").mkdir(parents=True, exist_ok=True)
        # pip installs txamqp's AMQP spec under txamqp/specs; Jasmin looks for it in its resource dir.
        txamqp = subprocess.run([py, "-c", "import txamqp, os; print(os.path.dirname(txamqp.__file__))"],
                                check=True, capture_output=True, text=True).stdout.strip()
        shutil.copy(Path(txamqp) / "specs" / "standard" / "amqp0-9-1.stripped.xml", etc / "resource" / "amqp0-9-1.xml")
        loopback = {"bind": HOST, "log_privacy": "True"}
        sections: dict[str, dict[str, str]] = {
            "smpp-server": {**loopback, "port": str(self.smpp_port), "enquireLinkTimerSecs": "30",
                            "inactivityTimerSecs": "300"},
            "smpp-server-pb": {"bind": HOST},
            "client-management": {"bind": HOST},
            "router": {"bind": HOST},
            "jcli": {"bind": HOST, "port": str(self.jcli_port)},
            "http-api": {"bind": HOST, **({"port": str(self.http_port)} if self.http_port else {})},
            "sm-listener": {"log_privacy": "True"},
            "dlr": {"log_privacy": "True", "dlr_lookup_retry_delay": "1", "dlr_lookup_max_retries": "10"},
            "dlr-thrower": {"retry_delay": "2", "max_retries": "10"},
            "amqp-broker": {"host": HOST, "port": str(self.amqp_port)},
            "redis-client": {"host": HOST, "port": str(self.redis_port), "dbid": str(self.redis_db)},
        }
        text = "# generated by tools/interop/jasmin.py: loopback only\n" + "".join(
            f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in body.items()) for name, body in sections.items())
        self.config_file.write_text(text)

    @staticmethod
    def _clear_stale_lock() -> None:
        """jasmind takes /tmp/jasmind.lock (one per machine); a killed one leaves it behind."""
        lock = Path("/tmp/jasmind.lock")  # noqa: S108 (jasmind's own fixed path)
        if not lock.exists():
            return
        running = False
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError):
                running |= b"jasmind.py" in cmdline.read_bytes()
        if running:
            raise InteropError("another jasmind is running on this machine (it holds /tmp/jasmind.lock)")
        log("removing a stale /tmp/jasmind.lock")
        lock.unlink(missing_ok=True)

    def _provision(self) -> None:
        deadline = time.monotonic() + 30
        while True:  # jCli answers before its router/connector managers are all up
            try:
                jcli = JCli(self.jcli_port)
                break
            except (OSError, InteropError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        try:
            jcli.add("group", [f"gid {self.system_id}"])
            jcli.add("user", [
                f"uid {self.system_id}", f"username {self.system_id}", f"password {self.password}",
                f"gid {self.system_id}",
                "smpps_cred authorization bind yes",
                "smpps_cred authorization ip 127.0.0.0/8",
                "smpps_cred quota max_bindings 8",
                "mt_messaging_cred quota balance none",
                "mt_messaging_cred quota sms_count none",
                "mt_messaging_cred quota smpps_throughput none",
                *(["mt_messaging_cred authorization http_send yes", "mt_messaging_cred quota http_throughput none"]
                  if self.http_port else []),
            ], optional=("smpps_cred authorization ip 127.0.0.0/8",))  # the whitelist is newer than 0.11.1
            jcli.add("smppccm", [f"cid {self.connector}", f"host {HOST}", f"port {self.smsc_port}",
                                 "username jasmin", "password jasmin", "submit_throughput 0"])
            out = jcli.cmd(f"smppccm -1 {self.connector}")
            if "Successfully started" not in out:
                raise InteropError(f"jCli: connector start failed: {out.strip()}")
            jcli.add("mtrouter", ["type DefaultRoute", f"connector smppc({self.connector})", "rate 0.00"])
            wait_for(lambda: re.search(rf"#{re.escape(self.connector)}\s+started\s+BOUND_TRX",
                                       jcli.cmd("smppccm -l")) is not None,
                     "Jasmin's connector to the SMSC (BOUND_TRX)", 30, None, self.logs)
        finally:
            jcli.close()


# -- smoke: one bind + submit + DLR through Jasmin, with the product's PDU codec ---------------------------
async def smoke(chain: JasminChain, timeout: float = 30.0) -> str:
    """Bind as a transceiver, submit one message asking for a receipt, and wait for the DLR; returns the
    DLR text. Raises InteropError if any step fails."""
    from services.messaging.adapters.smpp import pdu as p

    reader, writer = await asyncio.open_connection(HOST, chain.smpp_port)
    seq = 0

    async def request(req: p.Pdu) -> p.Pdu:
        nonlocal seq
        seq += 1
        req.sequence = seq
        writer.write(p.encode(req))
        while True:
            got = p.decode(await asyncio.wait_for(p.read_frame(reader), timeout))
            if got.sequence == seq and got.is_resp:
                return got
            await answer(got)

    dlrs: list[p.Pdu] = []

    async def answer(got: p.Pdu) -> None:
        if got.command_id == p.DELIVER_SM:
            dlrs.append(got)
        if not got.is_resp:
            writer.write(p.encode(p.resp_for(got)))

    try:
        bound = await request(p.Pdu(p.BIND_TRANSCEIVER, params={
            "system_id": chain.system_id, "password": chain.password, "system_type": "",
            "interface_version": p.INTERFACE_VERSION, "addr_ton": 0, "addr_npi": 0, "address_range": ""}))
        if bound.status != p.ESME_ROK:
            raise InteropError(f"bind refused by Jasmin: status 0x{bound.status:02X}")
        resp = await request(p.Pdu(p.SUBMIT_SM, params={
            "source_addr_ton": 5, "source_addr_npi": 0, "source_addr": "SendSafe", "dest_addr_ton": 1,
            "dest_addr_npi": 1, "destination_addr": "61400000000", "esm_class": 0, "registered_delivery": 1,
            "data_coding": 0, "short_message": b"interop smoke"}))
        if resp.status != p.ESME_ROK:
            raise InteropError(f"submit_sm refused by Jasmin: status 0x{resp.status:02X}")
        ref = resp.str_param("message_id")
        end = time.monotonic() + timeout
        while not any(p.tlv_text(d, p.TLV_RECEIPTED_MESSAGE_ID) == ref for d in dlrs):
            if time.monotonic() > end:
                raise InteropError(f"no DLR for {ref} within {timeout:.0f}s")
            with contextlib.suppress(TimeoutError):
                await answer(p.decode(await asyncio.wait_for(p.read_frame(reader), 1.0)))
        await request(p.Pdu(p.UNBIND))
        dlr = next(d for d in dlrs if p.tlv_text(d, p.TLV_RECEIPTED_MESSAGE_ID) == ref)
        return dlr.bytes_param("short_message").decode("latin-1")
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.interop.jasmin", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=("smoke", "up", "venv"))
    args = ap.parse_args(argv)
    if args.command == "venv":
        ensure_venv()
        return 0
    chain = JasminChain().up()
    try:
        if args.command == "smoke":
            text = asyncio.run(smoke(chain))
            print(f"DLR through Jasmin: {text}")
        else:
            print(f"Jasmin SMPP server {HOST}:{chain.smpp_port} system_id={chain.system_id}; Ctrl-C stops",
                  flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    finally:
        chain.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
