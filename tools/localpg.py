"""Reaching PostgreSQL on a development machine or in CI (`make run`, `make test`, benchmarks).

Which server: `PG_DSN` (an admin DSN, e.g. `postgresql://postgres:secret@127.0.0.1:5432/postgres`), else
`postgresql://postgres@127.0.0.1:5432/postgres`. The standard libpq variables work too: `PGPASSWORD` or
`~/.pgpass` supply the password for a DSN that names none (asyncpg, psql and pg_dump all read them).

A stock Debian/Ubuntu PostgreSQL asks for a password on 127.0.0.1 (scram-sha-256) and only lets the
`postgres` OS user in through its socket (peer). When the server answers but refuses our login,
`make run` and the tests start a private cluster instead (initdb into a directory, pg_ctl on a free
port on 127.0.0.1, trust auth for local connections only): nothing is asked of the machine's server.

The server binaries (`initdb`, `pg_ctl`) are found on PATH, through `pg_config --bindir`, in `$PG_BINDIR`,
or where Debian and Ubuntu put them (`/usr/lib/postgresql/<version>/bin`, newest first).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
Reach = Literal["ok", "refused", "down"]


class PgMissingError(RuntimeError):
    """A PostgreSQL server binary is not installed where we look."""


def admin_dsn(*names: str) -> str:
    """The first of the environment variables `names` (then `PG_DSN`) that is set, else the default DSN."""
    for name in (*names, "PG_DSN"):
        if os.environ.get(name):
            return os.environ[name]
    return DEFAULT_DSN


def redact(dsn: str) -> str:
    """The DSN without its password (for messages)."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.parent.name)) or (0,)


def bin_dirs() -> list[Path]:
    """Directories that may hold the server binaries, most preferred first."""
    dirs: list[Path] = []
    if os.environ.get("PG_BINDIR"):
        dirs.append(Path(os.environ["PG_BINDIR"]))
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            dirs.append(Path(out.stdout.strip()))
    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin"):
        dirs += sorted((Path(p) for p in _glob(pattern)), key=_version_key, reverse=True)
    return list(dict.fromkeys(dirs))


def _glob(pattern: str) -> list[str]:
    import glob

    return glob.glob(pattern)


def pg_bin(name: str) -> str:
    """Path of a PostgreSQL program (`initdb`, `pg_ctl`, ...); PgMissingError says what to install."""
    on_path = shutil.which(name)
    if on_path:
        return on_path
    for d in bin_dirs():
        if (d / name).is_file() and os.access(d / name, os.X_OK):
            return str(d / name)
    raise PgMissingError(
        f"{name} not found on PATH, in $PG_BINDIR or under /usr/lib/postgresql/<version>/bin: "
        "install the PostgreSQL server (Debian/Ubuntu: apt-get install postgresql)"
    )


def probe(dsn: str, timeout: float = 5.0) -> Reach:
    """Can we log in with `dsn`? "ok"; "refused" (the server answers but turns the login away: password,
    peer, pg_hba, unknown role or database); "down" (nothing answers)."""
    import asyncpg

    async def attempt() -> Reach:
        try:
            conn = await asyncpg.connect(dsn, timeout=timeout)
        except (TimeoutError, OSError):
            return "down"
        except (asyncpg.PostgresError, asyncpg.InterfaceError):
            return "refused"
        await conn.close()
        return "ok"

    return asyncio.run(attempt())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    """A private PostgreSQL cluster in `dir` (data in dir/data, socket and log in dir), listening on
    127.0.0.1 only. As root, initdb and the server run as the `postgres` OS user (they refuse root)."""

    dir: Path
    port: int = 0
    auth: str = "trust"  # or "scram-sha-256" (then `password` is required)
    password: str | None = None

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def dsn(self) -> str:
        cred = f"postgres:{self.password}" if self.password else "postgres"
        return f"postgresql://{cred}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)

    def _check(self, *args: str) -> None:
        done = self._run(*args)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")

    def running_port(self) -> int | None:
        """The port of this cluster's server if it runs (a previous `make run` may have left it running)."""
        if not (self.data / "postmaster.pid").exists():
            return None
        if self._run(pg_bin("pg_ctl"), "-D", str(self.data), "status").returncode != 0:
            return None
        lines = (self.data / "postmaster.pid").read_text().splitlines()
        return int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None

    def init(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        args = [pg_bin("initdb"), "-A", self.auth, "-U", "postgres", "-D", str(self.data)]
        pwfile = self.dir / "pwfile"
        if self.password:
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(self.password + "\n")
            if os.geteuid() == 0:
                shutil.chown(pwfile, "postgres", "postgres")
            args.append(f"--pwfile={pwfile}")
        try:
            self._check(*args)
        finally:
            pwfile.unlink(missing_ok=True)

    def start(self) -> None:
        if not self.port:
            self.port = free_port()
        self._check(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "server.log"), "-w", "-o",
                    f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start")

    def stop(self) -> None:
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-w", "-m", "fast", "stop")

    def ensure(self) -> str:
        """Initialise if new, start if not running (on the port it runs on, else a free one); its DSN."""
        if not (self.data / "PG_VERSION").exists():
            self.init()
        port = self.running_port()
        if port:
            self.port = port
        else:
            self.start()
        return self.dsn


def usable_admin_dsn(dsn: str, private_dir: Path) -> tuple[str, Reach]:
    """`dsn` if we can log in with it; if the server refuses our login, the DSN of a private cluster in
    `private_dir` (started if needed); ("", "down") lets the caller start a server when nothing answers."""
    reach = probe(dsn)
    if reach == "ok":
        return dsn, reach
    if reach == "down":
        return "", reach
    return Cluster(private_dir).ensure(), reach
