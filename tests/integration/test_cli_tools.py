"""`tools.backup` as people run it (issue 19), as real processes against real PostgreSQL: backup and restore
print progress on stderr, restore names the databases it replaces and asks first (a terminal answering, no
terminal, --yes). keyadmin's: tests/integration/messaging/test_keyadmin_cli.py."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

from tests.integration.test_backup_restore import mark, marked, two_databases  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'gen' / 'python'}"}


def _run(module: str, *argv: str, env: dict[str, str] | None = None, stdin: int | None = subprocess.DEVNULL,
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, env=env or ENV, stdin=stdin,
                          capture_output=True, text=True, timeout=120, check=False)


def _restore_answering(env: dict[str, str], folder: Path, answer: str) -> subprocess.CompletedProcess[str]:
    """A restore whose stdin is a terminal (a pty) on which `answer` is typed."""
    leader, follower = pty.openpty()
    try:
        os.write(leader, answer.encode() + b"\n")
        return _run("tools.backup", "restore", "--from", str(folder), "--services", "first,second", env=env,
                    stdin=follower)
    finally:
        os.close(follower)
        os.close(leader)


async def test_backup_and_restore_show_progress_and_restore_asks_first(
    two_databases: tuple[bytes, dict[str, str], Path], tmp_path: Path,  # noqa: F811
) -> None:
    key, urls, _ = two_databases
    env = {**ENV, "BACKUP_KEY": key.hex(), "FIRST_DATABASE_URL": urls["first"], "SECOND_DATABASE_URL": urls["second"]}
    made = _run("tools.backup", "backup", "--dir", str(tmp_path / "b"), "--services", "first,second", env=env)
    assert made.returncode == 0, made.stderr
    assert "dumping first…" in made.stderr and "dumped second:" in made.stderr, made.stderr
    folder = Path(made.stdout.split("backup written to ")[1].split()[0])
    await mark(urls)

    refused = _run("tools.backup", "restore", "--from", str(folder), "--services", "first,second", env=env)
    assert refused.returncode == 1 and "pass --yes" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    no = _restore_answering(env, folder, "no")
    assert no.returncode == 1 and "not confirmed: nothing was changed" in no.stderr, no.stderr
    assert "first: " in no.stderr and "second: " in no.stderr  # the databases it would replace are named
    assert await marked(urls["first"]) and await marked(urls["second"])  # untouched

    yes = _restore_answering(env, folder, "yes")
    assert yes.returncode == 0, yes.stderr
    assert "verifying" in yes.stderr and "restoring first" in yes.stderr and "restored second in" in yes.stderr
    assert not await marked(urls["first"])  # replaced by the backup's contents
    await mark(urls)
    flagged = _run("tools.backup", "restore", "--yes", "--from", str(folder), "--services", "first,second", env=env)
    assert flagged.returncode == 0, flagged.stderr
    assert not await marked(urls["second"])
