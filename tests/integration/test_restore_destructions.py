"""Crypto-shredding survives a restore: a backup from before an account's keys were destroyed never makes that
account readable again (`tools.backup` + `tools.destruction_register`, real PostgreSQL, the whole suite over
mTLS).

Two accounts send messages (bodies encrypted under their own keys) → backup #1 → account X's keys are
destroyed (a short pending window, keys maintenance, a signed receipt) → restore of backup #1 over the live
databases: the register read from the live keys database is re-applied inside the keys database's restore
transaction, so X's history fails with keys' KEYS_DESTROYED and Y's still reads. Then a disaster: backup #2,
every database dropped, backup #1 restored again — this time the register comes from backup #2's
`destructions.json`. Without any register the restore refuses and touches nothing; with
`--without-destruction-register` it restores and warns (and X's keys are indeed back: that is why it refuses).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from pathlib import Path

import asyncpg
import grpc
import pytest

from sendsafe.keys.v1 import keys_service_pb2 as keys_pb
from sendsafe.keys.v1 import keys_service_pb2_grpc
from sendsafe.messaging.v1 import messaging_service_pb2 as msg_pb
from sendsafe.messaging.v1 import messaging_service_pb2_grpc
from svckit.db import drop_database, ensure_database
from svckit.rpcstatus import error_reason
from tests.conftest import channel_as
from tests.integration.test_backup_restore import (
    SERVICES,
    Customer,
    Suite,
    eventually,
    history,
    principal,
    running_suite,
    send_and_deliver,
    who,
    wipe,
)
from tests.support import CertBundle, NewDatabase
from tools import backup as bk
from tools import destruction_register as dr
from tools.bootstrap import bootstrap


async def history_refusal(certs: CertBundle, suite: Suite, c: Customer) -> str:
    """The stable reason the history read of `c` fails with."""
    async with channel_as(certs, "gateway", suite.port("messaging"), "messaging") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await messaging_service_pb2_grpc.MessagingServiceStub(ch).ListSmsHistory(
                msg_pb.ListSmsHistoryRequest(), metadata=principal(c.account_id, c.user_id))
    return error_reason(info.value)


async def keys_refusal(certs: CertBundle, suite: Suite, account_id: int) -> str:
    """What keys answers when messaging asks for a data key of the account ("" when it gives one)."""
    async with channel_as(certs, "messaging", suite.port("keys"), "keys") as ch:
        try:
            await keys_service_pb2_grpc.KeysServiceStub(ch).GenerateDataKey(
                keys_pb.GenerateDataKeyRequest(account_id=account_id))
        except grpc.aio.AioRpcError as err:
            return error_reason(err)
    return ""


async def live_keks(url: str, account_id: int) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(
            "SELECT count(*) FROM account_kek_versions WHERE account_id = $1 AND wrapped_kek IS NOT NULL",
            account_id))
    finally:
        await conn.close()


async def destroy_keys(certs: CertBundle, suite: Suite, account_id: int) -> None:
    """`tools.keyadmin destroy` with the shortest window the suite allows, then keys maintenance until done."""
    async with channel_as(certs, "ops", suite.port("keys"), "keys") as ch:
        stub = keys_service_pb2_grpc.KeysServiceStub(ch)
        await stub.ScheduleAccountKeyDestruction(keys_pb.ScheduleAccountKeyDestructionRequest(
            account_id=account_id, pending_window_seconds=0))

        async def destroyed() -> bool:
            await stub.RunKeyMaintenance(keys_pb.RunKeyMaintenanceRequest())
            status = (await stub.GetAccountKeyStatus(keys_pb.GetAccountKeyStatusRequest(
                account_id=account_id))).status
            return status.state == keys_pb.ACCOUNT_KEY_STATE_DESTROYED

        await eventually(destroyed, "the account's keys to be destroyed")


async def test_a_restored_backup_never_resurrects_destroyed_keys(
    certs: CertBundle, new_database: NewDatabase, redis_url: str, redis_prefix: str, tmp_path: Path,
) -> None:
    urls = {svc: await new_database(f"rd_{svc}") for svc in SERVICES}
    root_key_file = tmp_path / "root.key"
    root_key_file.write_text(os.urandom(32).hex())
    root_key_file.chmod(0o600)
    backup_key = os.urandom(32)
    backups = tmp_path / "backups"

    async with running_suite(certs, urls, root_key_file, redis_url, redis_prefix) as suite:
        creds = await bootstrap(
            identity=f"127.0.0.1:{suite.port('identity')}", keys=f"127.0.0.1:{suite.port('keys')}",
            certs=certs.dir, out=tmp_path / "demo.env", announce_to_stdout=False,
        )
        x = await who(certs, suite, creds["SENDSAFE_API_KEY"])
        y = Customer("", x.account_id + 1000, x.user_id + 1000)  # a second account, its own keys
        await send_and_deliver(certs, suite, x, ["x's secret 1", "x's secret 2"])
        await send_and_deliver(certs, suite, y, ["y's message"])
        y_before = await history(certs, suite, y)
        assert [b for _, _, b in y_before] == ["y's message"]
        await suite.stop()

    first = bk.backup(backup_key, urls, backups)
    register = dr.read(backup_key, first / dr.FILE_NAME)
    assert register.destructions == {}  # nothing destroyed yet: an empty register, still a register

    async with running_suite(certs, urls, root_key_file, redis_url, redis_prefix,
                             min_destruction_pending_seconds=0) as suite:
        await destroy_keys(certs, suite, x.account_id)
        assert await history_refusal(certs, suite, x) == "KEYS_DESTROYED"
        await suite.stop()
    assert await live_keks(urls["keys"], x.account_id) == 0

    # 1. Restore the backup from before the destruction over the live databases.
    report = bk.restore(backup_key, first, urls)
    assert [(r.account_id, r.what) for r in report.reapplied] == [(x.account_id, "destroyed")]
    assert report.reapplied[0].versions == (1,)  # the wrapped KEK the backup held was removed again
    assert "the keys database (1 destroyed)" in report.register_sources
    assert await live_keks(urls["keys"], x.account_id) == 0
    async with running_suite(certs, urls, root_key_file, redis_url, redis_prefix) as suite:
        assert await history_refusal(certs, suite, x) == "KEYS_DESTROYED"
        assert await keys_refusal(certs, suite, x.account_id) == "KEYS_DESTROYED"
        assert await history(certs, suite, y) == y_before  # the other account reads as before
        assert await keys_refusal(certs, suite, y.account_id) == ""
        await suite.stop()

    # 2. Disaster: every database is lost. The newest backup's register still knows about X.
    await _next_second(backups)
    second = bk.backup(backup_key, urls, backups)
    (entry,) = dr.read(backup_key, second / dr.FILE_NAME).destructions.values()
    assert (entry.account_id, entry.versions) == (x.account_id, (1,)) and entry.receipt is not None
    assert json.loads(entry.receipt)["account_id"] == str(x.account_id)  # the signed receipt travels with it
    await wipe(urls)
    report = bk.restore(backup_key, first, urls)
    assert str((second / dr.FILE_NAME).resolve()) in report.register_sources
    assert not any(s.startswith("the keys database") for s in report.register_sources)  # it is gone
    assert [(r.account_id, r.what) for r in report.reapplied] == [(x.account_id, "destroyed")]
    async with running_suite(certs, urls, root_key_file, redis_url, redis_prefix) as suite:
        assert await history_refusal(certs, suite, x) == "KEYS_DESTROYED"
        assert await history(certs, suite, y) == y_before
        await suite.stop()

    # 3. No register anywhere (a lone copy of backup #1 from before registers, a new empty keys database):
    # refused before anything is touched; allowed only when asked for, with a warning.
    lone = tmp_path / "lone"
    shutil.copytree(first, lone / first.name)
    (lone / first.name / dr.FILE_NAME).unlink()
    await drop_database(urls["keys"])
    await ensure_database(urls["keys"])
    conn = await asyncpg.connect(urls["messaging"])
    try:
        await conn.execute("CREATE TABLE restore_marker (id int)")
    finally:
        await conn.close()
    with pytest.raises(bk.BackupError, match="no destruction register found"):
        bk.restore(backup_key, lone / first.name, urls)
    conn = await asyncpg.connect(urls["messaging"])
    try:  # nothing was restored: the marker table is still there
        assert await conn.fetchval("SELECT to_regclass('restore_marker') IS NOT NULL")
    finally:
        await conn.close()
    report = bk.restore(backup_key, lone / first.name, urls, without_register=True)
    assert report.without_register and report.reapplied == []
    assert await live_keks(urls["keys"], x.account_id) == 1  # exactly what the refusal protects against
    # Given the register explicitly (an off-volume copy), the same restore is safe again.
    copy = tmp_path / "register-copy.json"
    shutil.copy(second / dr.FILE_NAME, copy)
    report = bk.restore(backup_key, lone / first.name, urls, registers=[copy])
    assert [(r.account_id, r.what) for r in report.reapplied] == [(x.account_id, "destroyed")]
    assert await live_keks(urls["keys"], x.account_id) == 0
    # A register that does not authenticate is refused, not ignored.
    doc = json.loads(copy.read_text())
    doc["register"]["destructions"] = []
    copy.write_text(json.dumps(doc))
    with pytest.raises(bk.BackupError, match="does not authenticate"):
        bk.restore(backup_key, lone / first.name, urls, registers=[copy])


async def _next_second(backups: Path) -> None:
    """Backup folders are named by the second: wait (by polling the clock) until a new name is free."""
    taken = {p.name for p in backups.iterdir()}

    async def free() -> bool:
        return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) not in taken

    await eventually(free, "a new second")


# -- each kind of register entry, the CLI, and atomicity ------------------------------------------------------


async def _keys_database(new_database: NewDatabase) -> str:
    """A keys database at the current schema with four rings, and 2 MB of filler (a dump of several frames)."""
    from svckit.db import create_pool, migrate

    url = await new_database("rd_keys_kinds")
    pool = await create_pool(url)
    try:
        await migrate(pool, Path("services/keys/migrations"))
        await pool.execute("CREATE TABLE filler (blob bytea)")
        await pool.execute("INSERT INTO filler VALUES ($1)", os.urandom(2 * bk.CHUNK))
        await pool.execute(
            "INSERT INTO account_keys (account_id, current_version, state, destroy_time) VALUES"
            " (1, 2, 'enabled', NULL), (3, 1, 'destroyed', now() - interval '1 day'),"
            " (4, 1, 'pending_destruction', now() + interval '1 day')")
        await pool.execute(
            "INSERT INTO account_kek_versions (account_id, version, root_key_id, wrapped_kek, destroy_time) VALUES"
            " (1, 1, 'r', '\\x01', NULL), (1, 2, 'r', '\\x02', NULL), (3, 1, 'r', NULL, now() - interval '1 day'),"
            " (4, 1, 'r', '\\x04', NULL)")
    finally:
        await pool.close()
    return url


async def test_each_kind_of_entry_is_reapplied_and_reported(
    new_database: NewDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    url = await _keys_database(new_database)
    key = os.urandom(32)
    identity = await new_database("rd_identity_ids")  # identity's account ids, as its migration makes them
    conn = await asyncpg.connect(identity)
    try:
        await conn.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY); INSERT INTO accounts DEFAULT VALUES")
    finally:
        await conn.close()
    folder = bk.backup(key, {"identity": identity, "keys": url}, tmp_path / "backups")
    # Destroyed since the backup: 1 (enabled in it), 2 (created and destroyed since: not in it at all),
    # 4 (pending in it); 3 was destroyed before the backup already.
    receipt = json.dumps({"account_id": "1", "type": "sendsafe.keys.destruction_receipt.v1"})
    public = os.urandom(32)
    later = dr.Register(
        destructions={
            1: dr.Destruction(1, "2026-12-01T10:00:00Z", (1, 2), receipt, "c2lnbmF0dXJl", "root-2.abc"),
            2: dr.Destruction(2, "2026-12-01T11:00:00Z", (1, 2, 3)),
            4: dr.Destruction(4, "2026-12-02T10:00:00Z", (1,)),
        },
        signing_keys={"root-2.abc": (base64.b64encode(public).decode(), "2026-11-30T00:00:00Z")},
    )
    register_file = tmp_path / "later.json"
    dr.write(key, later, register_file)

    # Atomic: should decryption fail part-way through the keys dump, nothing changes, re-application included.
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    dump = bad / "keys.pgdump.enc"
    data = bytearray(dump.read_bytes())
    data[-5] ^= 1
    dump.write_bytes(bytes(data))
    with pytest.raises(bk.BackupError, match="does not authenticate"):
        bk._restore_keys(key, dump, url, dr.reapply_sql(later))
    assert await live_keks(url, 1) == 2

    key_file = tmp_path / "backup.key"
    key_file.write_text(key.hex())
    monkeypatch.setenv("BACKUP_KEY_FILE", str(key_file))
    monkeypatch.setenv("KEYS_DATABASE_URL", url)
    monkeypatch.setenv("IDENTITY_DATABASE_URL", identity)
    assert bk.main(["restore", "--yes", "--from", str(folder), "--services", "identity,keys",
                    "--register", str(register_file)]) == 0
    out = capsys.readouterr().out
    assert "destruction register: 4 account(s)" in out
    assert "account 1: destroyed again (wrapped KEK versions removed: 1,2)" in out
    assert "account 2: not in the backup; its destroyed ring is recorded" in out
    assert "account 3: already destroyed in the backup" in out
    assert "account 4: destroyed again (wrapped KEK versions removed: 1)" in out
    assert f"restored identity, keys from {folder}" in out

    conn = await asyncpg.connect(url)
    try:
        rings = {r["account_id"]: (r["state"], r["destroy_time"] is not None)
                 for r in await conn.fetch("SELECT account_id, state, destroy_time FROM account_keys")}
        assert rings == {a: ("destroyed", True) for a in (1, 2, 3, 4)}
        assert await conn.fetchval("SELECT count(*) FROM account_kek_versions WHERE wrapped_kek IS NOT NULL") == 0
        assert [tuple(r) for r in await conn.fetch(
            "SELECT account_id, version FROM account_kek_versions WHERE account_id = 2 ORDER BY version")] == [
            (2, 1), (2, 2), (2, 3)]
        assert bytes(await conn.fetchval(
            "SELECT public_key FROM receipt_signing_keys WHERE key_id = 'root-2.abc'")) == public
        # The receipt goes back with the ring (keys keeps it there for the closure's email).
        assert bytes(await conn.fetchval("SELECT receipt FROM account_keys WHERE account_id = 1")) == receipt.encode()
    finally:
        await conn.close()
    conn = await asyncpg.connect(identity)
    try:  # the next account cannot be given the id of one destroyed since the backup (its ring is a tombstone)
        assert await conn.fetchval("INSERT INTO accounts DEFAULT VALUES RETURNING id") == 5
    finally:
        await conn.close()
    # The register the next backup writes carries all four.
    assert bk.main(["register", "--out", str(tmp_path / "now.json")]) == 0
    now = dr.read(key, tmp_path / "now.json")
    assert sorted(now.destructions) == [1, 2, 3, 4]
