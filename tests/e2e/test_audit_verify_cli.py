"""`sendsafe-audit-verify fetch` as a customer runs it (issue 19), against the whole suite over HTTPS: the API
key from $SENDSAFE_API_KEY, a file or stdin, never only argv (an argument still works but warns); progress on
stderr; a refused fetch is one line and exit status 1. The fetched export verifies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.api_client import Http
from tests.e2e.conftest import Customer

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "tools.audit_verify"]
ENV = {k: v for k, v in os.environ.items() if k != "SENDSAFE_API_KEY"}
ENV["PYTHONPATH"] = f"{REPO}{os.pathsep}{REPO / 'gen' / 'python'}"


def _fetch(customer: Customer, out: Path, *extra: str, env: dict[str, str] | None = None,
           stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "fetch", "--url", customer.url, "--username", customer.username, "--ca",
                           str(customer.ca), "--out", str(out), *extra], cwd=REPO, env=env or ENV, input=stdin,
                          capture_output=True, text=True, timeout=120, check=False)


def test_fetch_takes_the_key_from_env_file_or_stdin(customer: Customer, tmp_path: Path) -> None:
    by_env = _fetch(customer, tmp_path / "env.jsonl", env={**ENV, "SENDSAFE_API_KEY": customer.api_key})
    assert by_env.returncode == 0, by_env.stderr
    assert "fetched " in by_env.stderr and "wrote " in by_env.stderr and "warning" not in by_env.stderr
    lines = (tmp_path / "env.jsonl").read_text().splitlines()
    assert lines and f"wrote {len(lines)} lines" in by_env.stderr

    key_file = tmp_path / "key"
    key_file.write_text(customer.api_key + "\n")
    by_file = _fetch(customer, tmp_path / "file.jsonl", "--api-key-file", str(key_file))
    by_stdin = _fetch(customer, tmp_path / "stdin.jsonl", stdin=customer.api_key + "\n")
    for done in (by_file, by_stdin):
        assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
    assert (tmp_path / "stdin.jsonl").read_text().splitlines()[:len(lines)] == lines  # the same log, maybe grown

    checkpoint = Http(customer.url, str(customer.ca)).call(
        "GET", "/v1/audit/checkpoint?fresh=true", auth=(customer.username, customer.api_key)).json()
    vkey = tmp_path / "log.vkey"
    vkey.write_text(checkpoint["verifier_key"])
    ok = subprocess.run([*CLI, "verify", str(tmp_path / "env.jsonl"), "--key", f"@{vkey}"], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=120, check=False)
    assert ok.returncode == 0 and ok.stdout.startswith("OK:"), ok.stdout
    for done in (by_env, by_file, by_stdin):
        assert customer.api_key not in done.stderr + done.stdout


def test_key_in_argv_warns_and_a_refusal_is_one_line(customer: Customer, tmp_path: Path) -> None:
    argv = _fetch(customer, tmp_path / "argv.jsonl", "--api-key", customer.api_key)
    assert argv.returncode == 0, argv.stderr
    assert "warning: --api-key lands in your shell history" in argv.stderr
    bad = _fetch(customer, tmp_path / "bad.jsonl", env={**ENV, "SENDSAFE_API_KEY": "not-the-key"})
    assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == "fetch refused: HTTP 401 Unauthorized"
    none = _fetch(customer, tmp_path / "none.jsonl")  # no env, no file, empty stdin
    assert none.returncode == 2 and "no API key" in none.stderr
