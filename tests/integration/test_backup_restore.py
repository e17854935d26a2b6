"""Back up, wipe, restore, and everything still verifies: `tools.backup` against real PostgreSQL.

The whole suite runs in-process over mTLS (audit, keys, messaging API + worker, identity) on its own four
databases: the demo account is bootstrapped (identity + keys, as `ops`), a few messages are sent and
delivered, and every process stops (its audit events flushed). Then `tools.backup.backup`, drop and
recreate the four databases, `tools.backup.restore`, and start the suite again on the restored databases
with the same root key (and audit signing key). The audit log verifies (the audit service's own check:
every leaf from its stored bytes, the Merkle tree, every signed checkpoint) and holds every event of the
backup; the history decrypts (through messaging and keys); the API key verifies; and the restored suite
keeps working: a new message is delivered and the log, now longer, still verifies.

A tampered backup (a flipped byte, an edited manifest, a wrong key, a missing file) is refused before
anything is touched; and should decryption fail part-way through a database anyway, its restore
transaction rolls back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from sendsafe.context.v1 import principal_pb2
from sendsafe.identity.v1 import identity_service_pb2, identity_service_pb2_grpc
from sendsafe.keys.v1 import keys_service_pb2, keys_service_pb2_grpc
from sendsafe.messaging.v1 import messaging_service_pb2 as msg_pb
from sendsafe.messaging.v1 import messaging_service_pb2_grpc, sms_pb2
from svckit.app import App
from svckit.db import drop_database, ensure_database
from tests.conftest import channel_as
from tests.support import CertBundle, NewDatabase
from tools import backup as bk
from tools.bootstrap import bootstrap

SERVICES = bk.SERVICES
TEST_NUMBER = "+61411111111"  # ClickSend's test number: delivered by the simulator
AUDIT_SIGNING_KEY = os.urandom(32).hex()  # one checkpoint signing key across restarts, as in production
DELIVERED = "201"  # ClickSend's history: status "Sent", status_code 201 once the receipt said delivered


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Suite:
    apps: dict[str, App] = field(default_factory=dict)

    def port(self, name: str) -> int:
        return self.apps[name].port

    async def stop(self) -> None:
        # Callers first, audit last, so every process's audit events are stored before audit stops.
        for name in ("identity", "worker", "messaging", "keys", "audit"):
            app = self.apps.pop(name, None)
            if app is not None:
                await app.stop()


@contextlib.asynccontextmanager
async def running_suite(
    certs: CertBundle, urls: dict[str, str], root_key_file: Path, redis_url: str, redis_prefix: str,
    *, min_destruction_pending_seconds: int = 7 * 24 * 3600,
) -> AsyncIterator[Suite]:
    from services.audit.app import build as build_audit
    from services.audit.config import Settings as AuditSettings
    from services.identity.app import build as build_identity
    from services.identity.config import Settings as IdentitySettings
    from services.keys.app import build as build_keys
    from services.keys.config import Settings as KeysSettings
    from services.messaging.app import build as build_messaging
    from services.messaging.app import build_worker
    from services.messaging.config import Settings as MessagingSettings

    def tls(name: str) -> dict[str, Path]:
        files = certs.tls(name)
        return {"tls_cert_file": files.cert, "tls_key_file": files.key, "tls_ca_file": files.ca}

    suite = Suite()
    try:
        suite.apps["audit"] = await build_audit(AuditSettings(
            **tls("audit"), database_url=urls["audit"], signing_key=AUDIT_SIGNING_KEY,
        ))
        audit = f"127.0.0.1:{suite.port('audit')}"
        suite.apps["keys"] = await build_keys(KeysSettings(
            **tls("keys"), database_url=urls["keys"], redis_url=redis_url, redis_prefix=redis_prefix,
            audit_addr=audit, root_key_file=root_key_file,
            min_destruction_pending_seconds=min_destruction_pending_seconds,
        ))
        keys = f"127.0.0.1:{suite.port('keys')}"
        messaging_settings = MessagingSettings(
            **tls("messaging"), database_url=urls["messaging"], redis_url=redis_url, redis_prefix=redis_prefix,
            audit_addr=audit, keys_addr=keys, relay_interval_seconds=0.2, outbox_grace_seconds=1.0,
            worker_block_ms=200, sim_receipt_delay_ms=50, shutdown_grace_seconds=1.0,
        )
        suite.apps["messaging"] = await build_messaging(messaging_settings)
        suite.apps["worker"] = await build_worker(messaging_settings)
        suite.apps["identity"] = await build_identity(IdentitySettings(
            **tls("identity"), database_url=urls["identity"], redis_url=redis_url, redis_prefix=redis_prefix,
            audit_addr=audit, keys_addr=keys, messaging_addr=f"127.0.0.1:{suite.port('messaging')}",
        ))
        yield suite
    finally:
        await suite.stop()


def principal(account_id: int, user_id: int) -> tuple[tuple[str, bytes], ...]:
    p = principal_pb2.Principal(
        account_id=account_id, user_id=user_id, api_username="demo", permissions=["sms.send", "sms.read"],
        request_id="backup-test", api_key_id="k",
    )
    return (("x-sendsafe-principal-bin", p.SerializeToString()),)


@dataclass(frozen=True)
class Customer:
    api_key: str
    account_id: int
    user_id: int


async def who(certs: CertBundle, suite: Suite, api_key: str) -> Customer:
    """The account and user behind the API key, as the gateway would learn them (VerifyApiKey)."""
    async with channel_as(certs, "gateway", suite.port("keys"), "keys") as ch:
        reply = await keys_service_pb2_grpc.KeysServiceStub(ch).VerifyApiKey(
            keys_service_pb2.VerifyApiKeyRequest(api_key=api_key)
        )
    return Customer(api_key, reply.account_id, reply.user_id)


async def send_and_deliver(certs: CertBundle, suite: Suite, c: Customer, bodies: list[str]) -> None:
    async with channel_as(certs, "gateway", suite.port("messaging"), "messaging") as ch:
        stub = messaging_service_pb2_grpc.MessagingServiceStub(ch)
        sent = await stub.SendSms(
            msg_pb.SendSmsRequest(messages=[sms_pb2.OutboundSms(to=TEST_NUMBER, body=b) for b in bodies]),
            metadata=principal(c.account_id, c.user_id),
        )
        assert sent.queued_count == len(bodies)
        ids = {m.message_id for m in sent.messages}

        async def delivered() -> bool:
            page = await stub.ListSmsHistory(
                msg_pb.ListSmsHistoryRequest(), metadata=principal(c.account_id, c.user_id)
            )
            return ids <= {h.message_id for h in page.data if h.status_code == DELIVERED}

        await eventually(delivered, f"{len(bodies)} messages to be delivered")


async def history(certs: CertBundle, suite: Suite, c: Customer) -> list[tuple[str, str, str]]:
    """(message id, status code, decrypted body) of every message, through the messaging API."""
    async with channel_as(certs, "gateway", suite.port("messaging"), "messaging") as ch:
        page = await messaging_service_pb2_grpc.MessagingServiceStub(ch).ListSmsHistory(
            msg_pb.ListSmsHistoryRequest(), metadata=principal(c.account_id, c.user_id)
        )
    return sorted((h.message_id, h.status_code, h.body) for h in page.data)


async def audit_state(certs: CertBundle, url: str) -> tuple[int, int]:
    """(leaves the audit service's own verification recomputed, events stored). The verification is the
    use case behind VerifyLog (every leaf from the stored bytes, the tree, every signed checkpoint); it runs
    in an audit service started alone, so nothing appends while it reads."""
    from services.audit.app import build as build_audit
    from services.audit.config import Settings as AuditSettings

    files = certs.tls("audit")
    app = await build_audit(AuditSettings(
        tls_cert_file=files.cert, tls_key_file=files.key, tls_ca_file=files.ca, database_url=url,
        signing_key=AUDIT_SIGNING_KEY,
    ))
    try:
        result = await app.extras["service"].verify_log()
    finally:
        await app.stop()
    assert result.ok, result.finding
    conn = await asyncpg.connect(url)
    try:
        return result.tree_size, int(await conn.fetchval("SELECT count(*) FROM events"))
    finally:
        await conn.close()


async def wipe(urls: dict[str, str]) -> None:
    for url in urls.values():
        await drop_database(url)
        await ensure_database(url)


async def table_count(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"))
    finally:
        await conn.close()


async def test_backup_wipe_restore_and_everything_still_verifies(
    certs: CertBundle, new_database: NewDatabase, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    urls = {svc: await new_database(f"bk_{svc}") for svc in SERVICES}
    root_key_file = tmp_path / "root.key"
    root_key_file.write_text(os.urandom(32).hex())
    root_key_file.chmod(0o600)
    backup_key = os.urandom(32)
    bodies = [f"backed up message {i}" for i in range(3)]

    async with running_suite(certs, urls, root_key_file, redis_url, redis_prefix) as suite:
        creds = await bootstrap(
            identity=f"127.0.0.1:{suite.port('identity')}", keys=f"127.0.0.1:{suite.port('keys')}",
            certs=certs.dir, out=tmp_path / "demo.env", announce_to_stdout=False,
        )
        customer = await who(certs, suite, creds["SENDSAFE_API_KEY"])
        await send_and_deliver(certs, suite, customer, bodies)
        before = await history(certs, suite, customer)
        await suite.stop()  # quiescent: every audit event stored
    leaves, events_before = await audit_state(certs, urls["audit"])
    assert leaves == events_before > 0
    assert sorted(b for _, _, b in before) == bodies and {s for _, s, _ in before} == {DELIVERED}

    folder = bk.backup(backup_key, urls, tmp_path / "backups")
    manifest = json.loads((folder / "manifest.json").read_text())["manifest"]
    assert set(manifest["files"]) == set(SERVICES)
    for svc in SERVICES:
        # Encrypted at rest: no message body (nor any table name) in clear in the backup files.
        data = (folder / f"{svc}.pgdump.enc").read_bytes()
        assert data.startswith(bk.MAGIC) and b"backed up message" not in data and b"CREATE TABLE" not in data
        assert oct((folder / f"{svc}.pgdump.enc").stat().st_mode & 0o777) == "0o600"

    await wipe(urls)
    assert [await table_count(u) for u in urls.values()] == [0, 0, 0, 0]

    bk.restore(backup_key, folder, urls)

    # Audit: the whole log verifies, and every event of the backup is back.
    assert await audit_state(certs, urls["audit"]) == (events_before, events_before)
    async with running_suite(certs, urls, root_key_file, redis_url, redis_prefix) as suite:
        # Keys and identity: the same API key still authenticates the same user.
        assert await who(certs, suite, creds["SENDSAFE_API_KEY"]) == customer
        async with channel_as(certs, "ops", suite.port("identity"), "identity") as ch:
            user = (await identity_service_pb2_grpc.IdentityServiceStub(ch).GetUser(
                identity_service_pb2.GetUserRequest(api_username="demo"))).user
        assert (user.account_id, user.user_id) == (customer.account_id, customer.user_id)
        # Messaging + keys: every message decrypts, same ids, same statuses.
        assert await history(certs, suite, customer) == before
        # And the restored suite keeps working on top of the restored state.
        await send_and_deliver(certs, suite, customer, ["after the restore"])
        assert len(await history(certs, suite, customer)) == len(bodies) + 1
        await suite.stop()
    leaves, events_now = await audit_state(certs, urls["audit"])
    assert leaves == events_now > events_before  # the restored log grows and still verifies


# -- refusing a bad backup --------------------------------------------------------------------------------


@pytest.fixture
async def two_databases(new_database: NewDatabase, tmp_path: Path) -> tuple[bytes, dict[str, str], Path]:
    """Two small databases ("first" holds 2 MB, so its dump has several encrypted frames), backed up."""
    urls = {"first": await new_database("bk_first"), "second": await new_database("bk_second")}
    for name, url in urls.items():
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("CREATE TABLE t (id int PRIMARY KEY, blob bytea)")
            size = 2 * bk.CHUNK if name == "first" else 10
            await conn.execute("INSERT INTO t VALUES (1, $1)", os.urandom(size))
        finally:
            await conn.close()
    key = os.urandom(32)
    return key, urls, bk.backup(key, urls, tmp_path / "backups")


async def marked(url: str) -> bool:
    """Whether the marker row, added after the backup, is still there (i.e. the database was not touched)."""
    conn = await asyncpg.connect(url)
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM t WHERE id = 2"))
    finally:
        await conn.close()


async def mark(urls: dict[str, str]) -> None:
    for url in urls.values():
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("INSERT INTO t VALUES (2, 'after the backup')")
        finally:
            await conn.close()


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "missing file", "edited manifest", "wrong key"])
async def test_a_tampered_backup_is_refused_before_anything_is_touched(
    two_databases: tuple[bytes, dict[str, str], Path], tmp_path: Path, damage: str
) -> None:
    key, urls, original = two_databases
    folder = tmp_path / "copy"
    shutil.copytree(original, folder)
    second = folder / "second.pgdump.enc"  # the last to restore: the first would be restored already
    if damage == "flipped byte":
        flip_byte(second, second.stat().st_size // 2)
    elif damage == "truncated":
        second.write_bytes(second.read_bytes()[:-1])
    elif damage == "missing file":
        second.unlink()
    elif damage == "edited manifest":
        doc = json.loads((folder / "manifest.json").read_text())
        doc["manifest"]["files"]["second"]["plain_size"] += 1
        (folder / "manifest.json").write_text(json.dumps(doc))
    else:
        key = os.urandom(32)
    await mark(urls)

    with pytest.raises(bk.BackupError):
        bk.restore(key, folder, urls)
    assert [await marked(u) for u in urls.values()] == [True, True]  # neither database was touched
    bk.restore(two_databases[0], original, urls)  # control: the intact backup does restore both
    assert [await marked(u) for u in urls.values()] == [False, False]


async def test_decryption_failing_part_way_rolls_the_database_back(
    two_databases: tuple[bytes, dict[str, str], Path],
) -> None:
    """Defence in depth behind the manifest: corrupt the last frame of a multi-frame dump and restore it
    without the up-front check; pg_restore has already received the first frames when decryption fails."""
    key, urls, folder = two_databases
    await mark(urls)
    path = folder / "first.pgdump.enc"
    assert path.stat().st_size > 2 * bk.CHUNK
    flip_byte(path, path.stat().st_size - 5)
    with pytest.raises(bk.BackupError, match="does not authenticate"):
        bk._restore_one(key, path, "first", urls["first"])
    assert await marked(urls["first"])  # the partial restore rolled back; the marker row is still there


def test_cli_backup_verify_restore_round_trip(
    two_databases: tuple[bytes, dict[str, str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`python -m tools.backup` with the settings a CronJob or `make run` user gives it."""
    key, urls, _ = two_databases
    key_file = tmp_path / "backup.key"
    key_file.write_text(key.hex())
    monkeypatch.setenv("BACKUP_KEY_FILE", str(key_file))
    url_file = tmp_path / "second-url"
    url_file.write_text(urls["second"])
    monkeypatch.setenv("FIRST_DATABASE_URL", urls["first"])
    monkeypatch.setenv("SECOND_DATABASE_URL_FILE", str(url_file))
    out = tmp_path / "cli-backups"
    older = [out / "20000101T000000Z", out / "20000102T000000Z"]
    unfinished, other = out / "20000103T000000Z", out / "notes"
    for d in [*older, unfinished, other]:
        d.mkdir(parents=True)
    for d in older:
        (d / "manifest.json").write_text("{}")
    assert bk.main(["backup", "--dir", str(out), "--keep", "2", "--services", "first,second"]) == 0
    printed = capsys.readouterr().out
    folder = Path(printed.split("backup written to ")[1].split()[0])
    assert f"deleted the older backup {older[0]}" in printed
    # --keep 2: the new backup and the newest older one stay; folders that are not backups are left alone.
    assert {p.name for p in out.iterdir()} == {folder.name, older[1].name, unfinished.name, other.name}
    assert bk.main(["list", "--dir", str(out)]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == [str(older[1]), str(folder)]  # complete backups only, oldest first
    assert bk.main(["verify", "--from", str(folder)]) == 0
    assert bk.main(["restore", "--from", str(folder), "--services", "first,second", "--yes"]) == 0
    assert f"restored first, second from {folder}" in capsys.readouterr().out
    monkeypatch.setenv("BACKUP_KEY", os.urandom(32).hex())
    monkeypatch.delenv("BACKUP_KEY_FILE")
    assert bk.main(["verify", "--from", str(folder)]) == 1
    assert "does not authenticate" in capsys.readouterr().err
