"""The runbook's root-key rotation, for real: restart the keys service with a new root key and the old one as
retiring, rewrap everything with `tools.keyadmin rewrap-root`, then run with the new key alone. Old data,
old API keys (rehashed on first use) and old receipts all survive; nothing needs the old key afterwards."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from sendsafe.context.v1 import principal_pb2
from sendsafe.keys.v1 import keys_service_pb2 as pb
from sendsafe.keys.v1 import keys_service_pb2_grpc
from svckit.app import App
from svckit.config import ConfigError
from tests.conftest import channel_as
from tests.integration.keys.conftest import empty
from tests.support import CertBundle, stepped_up_now
from tools.keyadmin import _run, parser


def _secret_file(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.fixture
def start_keys(
    audit_app: App, certs: CertBundle, keys_database: str, redis_url: str, redis_prefix: str
) -> Callable[..., Awaitable[App]]:
    from services.keys.app import build
    from services.keys.config import Settings

    started: list[bool] = []

    async def start(root_id: str, root_file: Path, retiring: Path | None = None) -> App:
        if not started:
            await empty(keys_database)  # this test counts what is wrapped: start from nothing
            started.append(True)
        tls = certs.tls("keys")
        return await build(Settings(
            tls_cert_file=tls.cert, tls_key_file=tls.key, tls_ca_file=tls.ca, database_url=keys_database,
            redis_url=redis_url, redis_prefix=redis_prefix, audit_addr=f"127.0.0.1:{audit_app.port}",
            root_key_file=root_file, root_key_id=root_id, retiring_root_keys_file=retiring,
            last_used_flush_seconds=3600, maintenance_seconds=3600,
        ))

    return start


async def _admin(app: App, certs: CertBundle, *argv: str, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    args = parser().parse_args(["--keys", f"127.0.0.1:{app.port}", "--certs", str(certs.dir), *argv])
    assert await _run(args) == 0
    return capsys.readouterr().out


async def test_root_key_rotation_by_the_runbook(
    start_keys: Callable[..., Awaitable[App]], certs: CertBundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old_key, new_key = os.urandom(32).hex(), os.urandom(32).hex()
    old_file = _secret_file(tmp_path / "old", old_key)
    app = await start_keys("root-2025", old_file)
    try:
        async with channel_as(certs, "messaging", app.port, "keys") as ch:
            svc = keys_service_pb2_grpc.KeysServiceStub(ch)
            data = {}
            for account in (501, 502, 503):
                gen = await svc.GenerateDataKey(pb.GenerateDataKeyRequest(account_id=account))
                data[account] = gen
        async with channel_as(certs, "gateway", app.port, "keys") as ch:
            principal = principal_pb2.Principal(account_id=501, user_id=1, permissions=["sms.send", "api_keys.write"],
                                                auth_method=principal_pb2.AUTH_METHOD_SESSION,
                                                mfa_time=stepped_up_now())
            made = await keys_service_pb2_grpc.KeysServiceStub(ch).CreateApiKey(
                pb.CreateApiKeyRequest(name="old", scopes=["*"]),
                metadata=(("x-sendsafe-principal-bin", principal.SerializeToString()),))
        await _admin(app, certs, "rotate", "501", capsys=capsys)
    finally:
        await app.stop()

    # Step 1: the new root key is current, the old one retiring.
    new_file = _secret_file(tmp_path / "new", new_key)
    retiring = _secret_file(tmp_path / "retiring", f"# rotated out\nroot-2025 {old_key}\n")
    app = await start_keys("root-2026", new_file, retiring)
    try:
        status = json.loads(await _admin(app, certs, "root-status", capsys=capsys))
        usage = {u["root_key_id"]: u for u in status["usage"]}
        assert status["current_root_key_id"] == "root-2026"
        assert usage["root-2025"]["wrapped_keys"] == "4" and usage["root-2025"]["api_key_hashes"] == "1"
        # Step 2: rewrap every account key; the old API key moves to the new pepper when next used.
        out = await _admin(app, certs, "rewrap-root", capsys=capsys)
        assert out.strip().endswith("remaining 0")
        async with channel_as(certs, "gateway", app.port, "keys") as ch:
            await keys_service_pb2_grpc.KeysServiceStub(ch).VerifyApiKey(pb.VerifyApiKeyRequest(api_key=made.secret))
        after = json.loads(await _admin(app, certs, "root-status", capsys=capsys))
        usage = {u["root_key_id"]: u for u in after["usage"]}
        assert usage.get("root-2025", {}).get("wrapped_keys", "0") == "0"
        assert usage.get("root-2025", {}).get("api_key_hashes", "0") == "0"
    finally:
        await app.stop()

    # Step 3: the old root key is gone from the configuration; everything still works.
    app = await start_keys("root-2026", new_file)
    try:
        async with channel_as(certs, "messaging", app.port, "keys") as ch:
            svc = keys_service_pb2_grpc.KeysServiceStub(ch)
            for account, gen in data.items():
                got = await svc.DecryptDataKey(
                    pb.DecryptDataKeyRequest(account_id=account, wrapped_key=gen.wrapped_key))
                assert got.plaintext == gen.plaintext
        async with channel_as(certs, "gateway", app.port, "keys") as ch:
            verified = await keys_service_pb2_grpc.KeysServiceStub(ch).VerifyApiKey(
                pb.VerifyApiKeyRequest(api_key=made.secret))
            assert verified.key_id == made.api_key.key_id
        assert old_key not in capsys.readouterr().out
    finally:
        await app.stop()


async def test_keyadmin_leaked_and_account_commands(
    keys_app: App, certs: CertBundle, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    async with channel_as(certs, "gateway", keys_app.port, "keys") as ch:
        principal = principal_pb2.Principal(account_id=601, user_id=2, permissions=["api_keys.write"],
                                            auth_method=principal_pb2.AUTH_METHOD_SESSION, mfa_time=stepped_up_now())
        made = await keys_service_pb2_grpc.KeysServiceStub(ch).CreateApiKey(
            pb.CreateApiKeyRequest(name="x", scopes=["*"]),
            metadata=(("x-sendsafe-principal-bin", principal.SerializeToString()),))
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{made.secret}\nnot a key\n"))
    report = json.loads(await _admin(keys_app, certs, "leaked", "--source", "https://paste.example/1", capsys=capsys))
    assert report["revoked_key_ids"] == [made.api_key.key_id] and report["not_keys"] == 1
    async with channel_as(certs, "messaging", keys_app.port, "keys") as ch:
        await keys_service_pb2_grpc.KeysServiceStub(ch).GenerateDataKey(pb.GenerateDataKeyRequest(account_id=601))
    await _admin(keys_app, certs, "rotate", "601", capsys=capsys)
    status = json.loads(await _admin(keys_app, certs, "retire", "601", "2", capsys=capsys))["status"]
    assert status["current_version"] == 2 and status["min_decryption_version"] == 2
    status = json.loads(await _admin(keys_app, certs, "destroy", "601", "0.01", capsys=capsys))["status"]
    assert status["state"] == "ACCOUNT_KEY_STATE_PENDING_DESTRUCTION"
    status = json.loads(await _admin(keys_app, certs, "cancel-destroy", "601", capsys=capsys))["status"]
    assert status["state"] == "ACCOUNT_KEY_STATE_ENABLED"


async def test_start_up_stops_when_the_root_key_does_not_open_the_stored_keys(
    start_keys: Callable[..., Awaitable[App]], certs: CertBundle, tmp_path: Path
) -> None:
    """Another root key under the same id (another checkout's `make run`, a lost key file): the service
    refuses to start, naming the problem, instead of failing every decryption later as an internal error."""
    app = await start_keys("local-1", _secret_file(tmp_path / "first", os.urandom(32).hex()))
    try:
        async with channel_as(certs, "messaging", app.port, "keys") as ch:
            await keys_service_pb2_grpc.KeysServiceStub(ch).GenerateDataKey(pb.GenerateDataKeyRequest(account_id=701))
    finally:
        await app.stop()
    with pytest.raises(ConfigError, match="do not open them"):
        await start_keys("local-1", _secret_file(tmp_path / "other", os.urandom(32).hex()))
