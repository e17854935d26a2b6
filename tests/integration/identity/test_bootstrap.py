"""tools.bootstrap against the real identity service (and a fake keys service), as `ops`."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from svckit.app import App
from svckit.server import RunningServer
from tests.integration.identity.fakes import FakeKeys
from tests.support import CertBundle
from tools.bootstrap import ENV_KEYS, bootstrap, curl_line, main, read_env


async def test_bootstrap_first_run_rerun_and_lost_file(
    identity_app: App,
    fake_keys: tuple[FakeKeys, RunningServer],
    certs: CertBundle,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys, keys_server = fake_keys
    out = tmp_path / "dev" / "demo.env"
    args = dict(
        identity=f"127.0.0.1:{identity_app.port}",
        keys=f"127.0.0.1:{keys_server.port}",
        certs=certs.dir,
        out=out,
        gateway_url="https://localhost:8443/",
    )

    first = await bootstrap(**args)  # type: ignore[arg-type]
    assert tuple(first) == ENV_KEYS
    assert first["SENDSAFE_URL"] == "https://localhost:8443"
    assert first["SENDSAFE_USERNAME"] == "demo"
    assert first["SENDSAFE_CA_CERT"] == str(certs.public_ca.resolve()) and Path(first["SENDSAFE_CA_CERT"]).is_absolute()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert read_env(out) == first
    assert [line.split("=")[0] for line in out.read_text().splitlines()] == list(ENV_KEYS)
    (issued,) = keys.issued
    assert issued.name == "demo" and issued.user_id > 0 and issued.account_id > 0 and not issued.test_mode
    assert first["SENDSAFE_API_KEY"] == "sk_test_fake_0001"
    printed = capsys.readouterr().out
    assert curl_line(first) in printed
    assert (
        "curl --cacert " + first["SENDSAFE_CA_CERT"] + " -u demo:sk_test_fake_0001 -H 'Content-Type: application/json'"
        ' -d \'{"messages":[{"to":"+61411111111","body":"Hello from SendSafe"}]}\''
        " https://localhost:8443/v3/sms/send"
    ) in printed

    # Second run: the account still exists, so the same credentials, no new key.
    again = await bootstrap(**args)  # type: ignore[arg-type]
    assert again == first and len(keys.issued) == 1
    assert curl_line(first) in capsys.readouterr().out

    # The file is lost but the demo user exists: a new key for the same user, not a failure.
    out.unlink()
    third = await bootstrap(**args)  # type: ignore[arg-type]
    assert third["SENDSAFE_USERNAME"] == "demo" and third["SENDSAFE_API_KEY"] != first["SENDSAFE_API_KEY"]
    assert len(keys.issued) == 2
    assert (keys.issued[1].user_id, keys.issued[1].account_id) == (issued.user_id, issued.account_id)
    assert read_env(out) == third
    assert "new API key" in capsys.readouterr().out

    # A file naming a user that no longer exists (e.g. a reset database) is replaced.
    out.write_text("SENDSAFE_USERNAME=ghost-user\nSENDSAFE_API_KEY=stale\n")
    fourth = await bootstrap(**args, announce_to_stdout=False)  # type: ignore[arg-type]
    assert fourth["SENDSAFE_USERNAME"] == "demo" and fourth["SENDSAFE_API_KEY"] not in {
        "stale",
        third["SENDSAFE_API_KEY"],
    }
    assert capsys.readouterr().out == ""


def test_cli_reports_an_unreachable_identity(
    certs: CertBundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.integration.identity.fakes import closed_port

    port = closed_port()
    rc = main(
        [
            "--identity",
            f"127.0.0.1:{port}",
            "--keys",
            f"127.0.0.1:{port}",
            "--certs",
            str(certs.dir),
            "--out",
            str(tmp_path / "demo.env"),
            "--timeout",
            "0.5",
        ]
    )
    assert rc == 1
    assert "bootstrap failed: DEADLINE_EXCEEDED" in capsys.readouterr().err
    assert not (tmp_path / "demo.env").exists()
