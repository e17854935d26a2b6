"""The commands are installable (issue 19): the project builds as a wheel (pyproject's [build-system]) whose
console scripts work in a fresh `python -m venv` with no checkout on its path - a customer's
`sendsafe-audit-verify` fetches the audit export of a real account over HTTPS and verifies it.

Offline-safe: the wheel is built without build isolation (the setuptools already installed) and installed with
`--no-deps`; the fresh venv reaches the third-party packages through a .pth pointing at this checkout's
virtualenv, which holds no SendSafe code (the tests reach it through PYTHONPATH), so every SendSafe module the
commands import comes from the wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.e2e.api_client import Http
from tests.e2e.conftest import Customer

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = ("sendsafe-audit-verify", "sendsafe-backup", "sendsafe-keyadmin", "sendsafe-staff")


def _run(*argv: str | Path, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300, check=False,
                          **kw)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a fresh venv with the wheel built from this checkout installed in it."""
    base = tmp_path_factory.mktemp("pkg")
    src = base / "src"  # a copy: the build's build/ and *.egg-info stay out of the working tree
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    for part in ("tools", "svckit", "services", "gateway", "gen/python"):
        shutil.copytree(REPO / part, src / part, ignore=ignore)
    built = _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                 base / "dist", src)
    assert built.returncode == 0, built.stderr
    (wheel,) = (base / "dist").glob("sendsafe-*.whl")
    venv = base / "venv"
    assert _run(sys.executable, "-m", "venv", venv).returncode == 0
    purelib = Path(_run(venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                   .stdout.strip())
    (purelib / "deps-from-checkout-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = _run(venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel)
    assert done.returncode == 0, done.stderr
    return venv / "bin"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SENDSAFE_API_KEY")}


def test_every_command_is_installed_with_help(installed: Path, tmp_path: Path) -> None:
    for script in SCRIPTS:
        done = _run(installed / script, "--help", cwd=tmp_path, env=_env())
        assert done.returncode == 0 and done.stdout.startswith("usage: "), (script, done.stdout, done.stderr)
    where = _run(installed / "python", "-c", "import tools.audit_verify as m; print(m.__file__)", cwd=tmp_path,
                 env=_env())
    assert str(REPO) not in where.stdout and "site-packages" in where.stdout, where.stdout


def test_installed_verifier_fetches_and_verifies_a_real_export(
    installed: Path, customer: Customer, tmp_path: Path,
) -> None:
    export = tmp_path / "audit.jsonl"
    env = {**_env(), "SENDSAFE_API_KEY": customer.api_key}
    fetched = _run(installed / "sendsafe-audit-verify", "fetch", "--url", customer.url, "--username",
                   customer.username, "--ca", customer.ca, "--out", export, cwd=tmp_path, env=env)
    assert fetched.returncode == 0, fetched.stderr
    checkpoint = Http(customer.url, str(customer.ca)).call(
        "GET", "/v1/audit/checkpoint?fresh=true", auth=(customer.username, customer.api_key)).json()
    (tmp_path / "log.vkey").write_text(checkpoint["verifier_key"])
    ok = _run(installed / "sendsafe-audit-verify", "verify", export, "--key", f"@{tmp_path / 'log.vkey'}",
              cwd=tmp_path, env=_env())
    assert ok.returncode == 0 and ok.stdout.startswith("OK:"), (ok.stdout, ok.stderr)
    lines = export.read_text().splitlines()
    del lines[len(lines) // 2]
    export.write_text("\n".join(lines) + "\n")
    bad = _run(installed / "sendsafe-audit-verify", "verify", export, "--key", f"@{tmp_path / 'log.vkey'}",
               cwd=tmp_path, env=_env())
    assert bad.returncode == 1 and "FAILED" in bad.stdout, bad.stdout
