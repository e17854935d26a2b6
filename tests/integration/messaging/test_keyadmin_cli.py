"""`tools.keyadmin` as operators run it (issue 19), as a real process against a real keys service: --help on
every subcommand, and a refusal, an unreachable service or missing certificates end in one line on stderr and
exit status 1, never a traceback. (The keys service runs in this test's event loop: the process is awaited.)"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.support import CertBundle
from tools.keyadmin import COMMANDS

REPO = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'gen' / 'python'}"}


async def _keyadmin(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tools.keyadmin", *argv, cwd=REPO, env=ENV, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return int(proc.returncode or 0), out.decode(), err.decode()


@pytest.mark.parametrize("command", sorted(COMMANDS))
async def test_every_keyadmin_subcommand_has_help(command: str) -> None:
    code, out, err = await _keyadmin(command, "--help")
    assert code == 0, err
    text = " ".join(out.split())
    assert COMMANDS[command].split(";")[0][:40] in text and "exit status: 0 done, 1 refused" in text


async def test_keyadmin_errors_are_one_line_with_exit_status_1(certs: CertBundle, keys_addr: str) -> None:
    code, _, err = await _keyadmin("--keys", keys_addr, "--certs", str(certs.dir), "retire", "999999999", "0")
    assert code == 1 and "Traceback" not in err, err
    (line,) = err.strip().splitlines()
    assert line.startswith("retire refused: "), line
    code, _, err = await _keyadmin("--keys", "127.0.0.1:1", "--certs", str(certs.dir), "account", "1")
    (line,) = err.strip().splitlines()
    assert code == 1 and line.startswith("account refused: UNAVAILABLE"), line
    code, _, err = await _keyadmin("--certs", str(REPO / "no-such-dir"), "root-status")
    (line,) = err.strip().splitlines()
    assert code == 1 and "No such file or directory" in line and "--certs" in line, line
