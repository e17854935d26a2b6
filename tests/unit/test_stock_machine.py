"""A stock Debian/Ubuntu machine (issue 19): the PostgreSQL server binaries are found where Debian puts them,
and a skipped test fails the run (tests/support.py's no-skip rule), so a missing tool cannot hide as a skip."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tools.localpg import PgMissingError, pg_bin, redact

REPO = Path(__file__).resolve().parents[2]


def test_server_binaries_found_off_path_where_debian_puts_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # Debian's postgresql package puts no initdb/pg_ctl on PATH
    monkeypatch.delenv("PG_BINDIR", raising=False)
    for name in ("initdb", "pg_ctl"):
        found = Path(pg_bin(name))
        assert found.parent.match("/usr/lib/postgresql/*/bin") and found.name == name


def test_missing_binary_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(PgMissingError, match="apt-get install postgresql"):
        pg_bin("no_such_pg_program")


def test_redact_hides_the_password() -> None:
    assert redact("postgresql://postgres:s3cret@127.0.0.1:5432/postgres") == (
        "postgresql://postgres:***@127.0.0.1:5432/postgres")
    assert redact("postgresql://postgres@h/db") == "postgresql://postgres@h/db"


def _pytest(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_probe.py").write_text(textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(tmp_path), "-q", "-p", "no:cacheprovider", "-p", "tests.support",
         "--rootdir", str(tmp_path), "-c", "/dev/null"],
        capture_output=True, text=True, timeout=120, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        check=False,
    )


def test_a_skip_fails_the_run(tmp_path: Path) -> None:
    done = _pytest(tmp_path, """
        import pytest
        def test_needs_a_tool():
            pytest.skip("sometool is not installed")
        def test_runs():
            pass
    """)
    assert done.returncode == 1, done.stdout
    assert "skipped tests fail the run" in done.stdout and "sometool is not installed" in done.stdout


def test_allowed_skips_and_passes_do_not(tmp_path: Path) -> None:
    done = _pytest(tmp_path, """
        import pytest
        def test_interop():
            pytest.skip("interop: run by `make interop`")
        def test_runs():
            pass
    """)
    assert done.returncode == 0, done.stdout
