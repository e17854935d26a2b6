"""Encrypted backups of each service's database, and restore.

    python -m tools.backup backup  --dir BACKUPS [--keep N] [--services identity,messaging,audit,keys]
    python -m tools.backup list    --dir BACKUPS
    python -m tools.backup verify  --from BACKUPS/<stamp>
    python -m tools.backup restore --from BACKUPS/<stamp> [--services ...] [--register FILE ...]
                                   [--without-destruction-register] [--yes]
    python -m tools.backup register --out FILE

Each database is dumped with `pg_dump -Fc` and streamed through authenticated encryption into
`<stamp>/<service>.pgdump.enc`; nothing unencrypted touches the disk. A `manifest.json` lists every file
with its size and SHA-256 and is itself authenticated (HMAC), so a swapped, truncated or edited backup
is refused before anything is restored. Each dump is one consistent snapshot of its database; the keys
database is dumped last, so every key version the other dumps refer to is in it.

Restore verifies the whole backup first, then restores each database in one transaction
(`pg_restore --clean --if-exists --single-transaction --exit-on-error`) into existing databases, empty or
not. Ownership is not restored (`--no-owner`: the restoring role owns the objects); privileges are, so
the roles the services' migrations grant to (e.g. the audit writer role) must exist in the cluster.

File format (version 1): magic `SSBK1`, 16-byte random salt, then frames of
[4-byte big-endian length][AES-256-GCM ciphertext]. The file key is HKDF-SHA256(backup key, salt); frame
i uses nonce = 4 zero bytes || i (8 bytes) and associated data = magic || salt || i || final-flag, so
frames cannot be reordered, dropped or cut off at the end without detection.

Settings (environment): BACKUP_KEY_FILE (32 random bytes, hex; or BACKUP_KEY), and for each service
`<SERVICE>_DATABASE_URL` (or `<SERVICE>_DATABASE_URL_FILE`), e.g. AUDIT_DATABASE_URL. `make run` writes
them for its databases to `.dev/backup.env`. The backup key is not the keys service's root key:
restoring readable data also needs the root key (every version the backup's data was wrapped with).
Progress goes to stderr. A restore names the databases it replaces and asks on a terminal; `--yes` confirms
ahead (a Job, a script); with neither it refuses. Exit status: 0 done, 1 refused or failed, 2 usage.

Crypto-shredding survives a restore (tools/destruction_register.py): every backup also writes
`<stamp>/destructions.json`, the authenticated register of every account whose keys are destroyed; a restore
of the keys database gathers the register (the live keys database before it is replaced, every register in
the backup directory, `--register` files) and re-applies it inside the keys database's restore transaction,
so a backup from before a destruction never brings the account's keys back. It refuses when it finds no
register at all, unless `--without-destruction-register`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tools import destruction_register as dr
from tools.cli import confirm, progress
from tools.localpg import redact

MAGIC = b"SSBK1"
CHUNK = 1 << 20
# Dump order matters: data that names key versions first, the keys service's database last, so every
# key-encryption-key version a message or a TOTP secret refers to is in the keys dump too.
SERVICES = ("identity", "messaging", "audit", "keys")


class BackupError(Exception):
    pass


def _file_key(key: bytes, salt: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt, b"sendsafe backup v1").derive(key)


def _aad(salt: bytes, index: int, final: bool) -> bytes:
    return MAGIC + salt + struct.pack(">QB", index, int(final))


def encrypt_stream(key: bytes, src: IO[bytes], dst: IO[bytes]) -> int:
    """Encrypt `src` into `dst`; returns the plaintext size."""
    salt = os.urandom(16)
    aead = AESGCM(_file_key(key, salt))
    dst.write(MAGIC + salt)
    total, index = 0, 0
    chunk = src.read(CHUNK)
    while True:
        nxt = src.read(CHUNK) if chunk else b""
        final = not nxt
        ct = aead.encrypt(b"\0\0\0\0" + struct.pack(">Q", index), chunk, _aad(salt, index, final))
        dst.write(struct.pack(">I", len(ct)) + ct)
        total += len(chunk)
        if final:
            return total
        chunk, index = nxt, index + 1


def decrypt_stream(key: bytes, src: IO[bytes]) -> Iterator[bytes]:
    """Yield plaintext chunks; raises BackupError on any tampering or truncation."""
    head = src.read(len(MAGIC) + 16)
    if len(head) != len(MAGIC) + 16 or not head.startswith(MAGIC):
        raise BackupError("not a SendSafe backup file")
    salt = head[len(MAGIC):]
    aead = AESGCM(_file_key(key, salt))
    index = 0
    while True:
        size_raw = src.read(4)
        if len(size_raw) != 4:
            raise BackupError("backup file is truncated")
        (size,) = struct.unpack(">I", size_raw)
        ct = src.read(size)
        if len(ct) != size:
            raise BackupError("backup file is truncated")
        nonce = b"\0\0\0\0" + struct.pack(">Q", index)
        for final in (False, True):
            try:
                plain = aead.decrypt(nonce, ct, _aad(salt, index, final))
            except Exception:  # noqa: S112 - try the other flag, then fail below
                continue
            yield plain
            if final:
                if src.read(1):
                    raise BackupError("data after the final frame")
                return
            break
        else:
            raise BackupError(f"frame {index} does not authenticate (wrong key or altered file)")
        index += 1


def load_key(env: dict[str, str] | None = None) -> bytes:
    env = dict(os.environ) if env is None else env
    if env.get("BACKUP_KEY_FILE"):
        raw = Path(env["BACKUP_KEY_FILE"]).read_text().strip()
    elif env.get("BACKUP_KEY"):
        raw = env["BACKUP_KEY"].strip()
    else:
        raise BackupError("BACKUP_KEY_FILE (or BACKUP_KEY) is required")
    key = bytes.fromhex(raw)
    if len(key) != 32:
        raise BackupError("the backup key must be 32 bytes, hex encoded")
    return key


def database_urls(services: list[str], env: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ) if env is None else env
    out, missing = {}, []
    for svc in services:
        var = f"{svc.upper()}_DATABASE_URL"
        if env.get(var):
            out[svc] = env[var]
        elif env.get(var + "_FILE"):
            out[svc] = Path(env[var + "_FILE"]).read_text().strip()
        else:
            missing.append(var)
    if missing:
        raise BackupError("missing settings: " + ", ".join(missing))
    return out


def _manifest_mac(key: bytes, body: bytes) -> str:
    mac_key = HKDF(hashes.SHA256(), 32, None, b"sendsafe backup manifest v1").derive(key)
    return hmac.new(mac_key, body, hashlib.sha256).hexdigest()


def backup(key: bytes, urls: dict[str, str], root: Path) -> Path:
    """Dump every database in `urls` into a new folder `root/<UTC stamp>`; returns the folder. A failed
    dump removes the folder again, so a folder with a manifest is always a complete backup."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = root / stamp
    root.mkdir(parents=True, exist_ok=True)
    try:
        out.mkdir(mode=0o700)
    except FileExistsError:
        raise BackupError(f"{out} already exists (one backup per second at most)") from None
    try:
        files = {svc: _dump(key, svc, url, out) for svc, url in urls.items()}
        if "keys" in urls:  # read after the keys dump: it names at least every destruction in that dump
            register = dr.from_keys_database(urls["keys"]) or dr.Register()
            dr.write(key, register, out / dr.FILE_NAME)
    except dr.RegisterError as exc:
        _remove(out)
        raise BackupError(f"the destruction register: {exc}") from None
    except BaseException:
        _remove(out)
        raise
    body = json.dumps({"version": 1, "created": stamp, "files": files}, sort_keys=True).encode()
    doc = json.dumps({"manifest": json.loads(body), "mac": _manifest_mac(key, body)})
    fd = os.open(out / "manifest.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(doc)
    return out


def _remove(folder: Path) -> None:
    for child in folder.iterdir():
        child.unlink()
    folder.rmdir()


def _dump(key: bytes, svc: str, url: str, out: Path) -> dict[str, object]:
    started = progress(f"dumping {svc}…")
    path = out / f"{svc}.pgdump.enc"
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            ["pg_dump", "-Fc", "--no-owner", url], stdout=subprocess.PIPE, stderr=errors
        )
        assert proc.stdout is not None
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as dst:
                size = encrypt_stream(key, proc.stdout, dst)
        finally:
            code = proc.wait()
        if code != 0:
            raise BackupError(f"pg_dump failed for {svc}: {_tail(errors, url)}")
    progress(f"dumped {svc}: {size} bytes in {time.monotonic() - started:.1f} s")
    return {"file": path.name, "plain_size": size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _tail(errors: IO[bytes], url: str) -> str:
    """The end of pg_dump's/pg_restore's messages, without the connection's password."""
    errors.seek(0)
    text = errors.read().decode(errors="replace")
    password = urlsplit(url).password
    return (text.replace(password, "***") if password else text)[-500:]


def verify(key: bytes, folder: Path) -> dict[str, dict[str, object]]:
    """Check the manifest's MAC and every file's digest; the manifest's file list, or BackupError."""
    try:
        doc = json.loads((folder / "manifest.json").read_text())
        body = json.dumps(doc["manifest"], sort_keys=True).encode()
        mac = str(doc["mac"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{folder}: no readable manifest ({type(exc).__name__})") from None
    if not hmac.compare_digest(_manifest_mac(key, body), mac):
        raise BackupError("manifest does not authenticate (wrong key or edited manifest)")
    files: dict[str, dict[str, object]] = doc["manifest"]["files"]
    for svc, meta in files.items():
        path = folder / str(meta["file"])
        if not path.is_file() or _sha256(path) != meta["sha256"]:
            raise BackupError(f"{svc}: file does not match the manifest")
    return files


@dataclass
class RestoreReport:
    register_sources: list[str] = field(default_factory=list)
    destructions: int = 0
    reapplied: list[dr.Reapplied] = field(default_factory=list)
    without_register: bool = False


def restore(
    key: bytes, folder: Path, urls: dict[str, str], *, registers: Sequence[Path] = (),
    without_register: bool = False,
) -> RestoreReport:
    """Restore into the given (existing, empty or to-be-replaced) databases.

    Nothing is touched until the whole backup verified (manifest MAC, every file's digest, every
    requested service present) and, when the keys database is restored, the destruction register was
    gathered (the live keys database, every register in the backup directory, `registers`): with no register
    at all it refuses, unless `without_register`. Each database is then restored in one transaction
    (`pg_restore --single-transaction --exit-on-error`; the keys database through `psql --single-transaction`,
    with the register's re-application before the commit); should decryption still fail part-way, the
    restore is killed before it sees the end of its input, so that transaction rolls back.
    """
    progress(f"verifying {folder}…")
    files = verify(key, folder)
    missing = [svc for svc in urls if svc not in files]
    if missing:
        raise BackupError(f"not in this backup: {', '.join(missing)}")
    report = RestoreReport()
    register = gather_register(key, folder, urls["keys"], registers) if "keys" in urls else None
    if "keys" in urls and register is None:
        if not without_register:
            raise BackupError(
                "no destruction register found (the keys database to replace holds no key rings, the backup"
                " directory no destructions.json, and no --register was given): restoring the keys database"
                " could bring back the keys of accounts destroyed after this backup. Give the newest register"
                " with --register FILE, or restore anyway with --without-destruction-register"
            )
        report.without_register = True
    if register is not None:
        report.register_sources, report.destructions = register.sources, len(register.destructions)
    try:
        for svc, url in urls.items():
            path = folder / str(files[svc]["file"])
            started = progress(f"restoring {svc} ({files[svc].get('plain_size', '?')} bytes)…")
            if svc == "keys" and register is not None:
                dr.refresh(register, url)  # anything destroyed while the other databases were restored
                report.reapplied = dr.parse_report(_restore_keys(key, path, url, dr.reapply_sql(register)))
            else:
                _restore_one(key, path, svc, url)
            progress(f"restored {svc} in {time.monotonic() - started:.1f} s")
        if "identity" in urls and register is not None:
            dr.advance_account_ids(urls["identity"], register)
    except dr.RegisterError as exc:
        raise BackupError(f"the destruction register: {exc}") from None
    return report


def gather_register(key: bytes, folder: Path, keys_url: str, extra: Sequence[Path] = ()) -> dr.Register | None:
    """The union of every destruction register found, or None when there is none at all."""
    files = [p / dr.FILE_NAME for p in [*complete_backups(folder.parent), folder]]
    try:
        return dr.gather(key, keys_url, [*dict.fromkeys(p.resolve() for p in files if p.is_file()), *extra])
    except dr.RegisterError as exc:
        raise BackupError(f"the destruction register: {exc}") from None


def _restore_keys(key: bytes, path: Path, url: str, sql: str) -> str:
    """Restore the keys database and run `sql` in the same transaction: pg_restore writes the dump as SQL,
    psql runs it and then `sql` between one BEGIN and COMMIT. Returns psql's output (what `sql` printed)."""
    with tempfile.TemporaryFile() as errors, tempfile.TemporaryFile() as output:
        dump = subprocess.Popen(["pg_restore", "--no-owner", "--clean", "--if-exists", "-f", "-"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors)
        psql = subprocess.Popen(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                                 "-f", "-", "-d", url], stdin=subprocess.PIPE, stdout=output, stderr=errors)
        assert dump.stdin is not None and dump.stdout is not None and psql.stdin is not None
        failed: list[BaseException] = []

        def feed() -> None:
            assert dump.stdin is not None
            try:
                with open(path, "rb") as src:
                    for chunk in decrypt_stream(key, src):
                        dump.stdin.write(chunk)
            except BaseException as exc:  # handed to the main thread
                failed.append(exc)
            finally:
                with contextlib.suppress(OSError):
                    dump.stdin.close()

        feeder = threading.Thread(target=feed, name="backup-decrypt", daemon=True)
        feeder.start()
        try:
            for block in iter(lambda: dump.stdout.read(CHUNK), b""):  # type: ignore[union-attr]
                psql.stdin.write(block)
            feeder.join()
            if failed and isinstance(failed[0], BackupError):
                raise failed[0]
            if dump.wait() != 0 or failed:
                raise BackupError(f"pg_restore failed for keys: {_tail(errors, url)}")
            psql.stdin.write(sql.encode())
            psql.stdin.close()
        except BaseException as exc:
            psql.kill()  # first: its transaction rolls back before it could see an end of input
            psql.wait()
            with contextlib.suppress(OSError):
                psql.stdin.close()
            dump.kill()
            dump.wait()
            feeder.join()
            if isinstance(exc, BrokenPipeError):  # psql stopped reading: its messages say why
                raise BackupError(f"psql failed for keys: {_tail(errors, url)}") from None
            raise
        if psql.wait() != 0:
            raise BackupError(f"psql failed for keys: {_tail(errors, url)}")
        output.seek(0)
        return output.read().decode(errors="replace")


def _restore_one(key: bytes, path: Path, svc: str, url: str) -> None:
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            ["pg_restore", "--no-owner", "--clean", "--if-exists", "--exit-on-error", "--single-transaction",
             "-d", url],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors,
        )
        assert proc.stdin is not None
        try:
            with open(path, "rb") as src:
                for chunk in decrypt_stream(key, src):
                    proc.stdin.write(chunk)
            proc.stdin.close()
        except BrokenPipeError:  # pg_restore stopped reading: its exit status and messages say why
            with contextlib.suppress(OSError):
                proc.stdin.close()
        except BaseException:
            proc.kill()  # before it reads an end of input: its transaction rolls back
            proc.wait()
            raise
        if proc.wait() != 0:
            raise BackupError(f"pg_restore failed for {svc}: {_tail(errors, url)}")


STAMP = re.compile(r"\d{8}T\d{6}Z")


def complete_backups(root: Path) -> list[Path]:
    """The backup folders under `root` that have a manifest (`<stamp>/manifest.json`), oldest first."""
    return sorted(p for p in root.iterdir() if STAMP.fullmatch(p.name) and (p / "manifest.json").is_file())


def prune(root: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete backups under `root`."""
    done = complete_backups(root)
    removed = done[:-keep] if keep > 0 else []
    for folder in removed:
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()
    return removed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sendsafe-backup", description="Encrypted database backups.",
                                     epilog="exit status: 0 done, 1 refused or failed (one line on stderr), 2 usage")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("backup", help="dump every database into DIR/<UTC stamp>/")
    b.add_argument("--dir", type=Path, required=True)
    b.add_argument("--keep", type=int, default=0, help="then delete all but the newest KEEP backups (0: keep all)")
    r = sub.add_parser("restore", help="verify the whole backup, then restore each database in one transaction")
    r.add_argument("--from", dest="src", type=Path, required=True)
    r.add_argument("--register", type=Path, action="append", default=[],
                   help="a destruction register file to re-apply as well (repeatable)")
    r.add_argument("--yes", action="store_true", help="replace the databases without asking")
    r.add_argument("--without-destruction-register", action="store_true",
                   help="restore the keys database even when no destruction register is found")
    g = sub.add_parser("register", help="write the destruction register of the live keys database to FILE")
    g.add_argument("--out", type=Path, required=True)
    v = sub.add_parser("verify", help="check the manifest's MAC and every file's digest")
    v.add_argument("--from", dest="src", type=Path, required=True)
    ls = sub.add_parser("list", help="the complete backups under DIR, oldest first (unverified: use verify)")
    ls.add_argument("--dir", type=Path, required=True)
    for p in (b, r):
        p.add_argument("--services", default=",".join(SERVICES))
    return parser


def _print_restore(report: RestoreReport) -> None:
    if report.without_register:
        print("WARNING: restored without a destruction register: accounts destroyed after this backup may be"
              " readable again; re-apply their destructions now")
    if report.register_sources:
        print(f"destruction register: {report.destructions} account(s), from " + "; ".join(report.register_sources))
    for item in report.reapplied:
        print(f"  {item}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "list":
        for folder in complete_backups(args.dir):
            files = json.loads((folder / "manifest.json").read_text()).get("manifest", {}).get("files", {})
            size = sum(f.stat().st_size for f in folder.iterdir())
            print(f"{folder}  {','.join(files)}  {size} bytes")
        return 0
    try:
        key = load_key()
        if args.cmd == "verify":
            print(json.dumps(verify(key, args.src), indent=2))
            return 0
        if args.cmd == "register":
            register = dr.from_keys_database(database_urls(["keys"])["keys"])
            if register is None:
                raise BackupError("the keys database holds no key rings")
            dr.write(key, register, args.out)
            print(f"destruction register of {len(register.destructions)} account(s) written to {args.out}")
            return 0
        urls = database_urls([s for s in args.services.split(",") if s])
        if args.cmd == "backup":
            print(f"backup written to {backup(key, urls, args.dir)}")
            for old in prune(args.dir, args.keep):
                print(f"deleted the older backup {old}")
        else:
            if not args.yes and not confirm("restore REPLACES these databases (their contents are lost)",
                                            [f"{svc}: {redact(url)}" for svc, url in urls.items()]):
                return 1
            report = restore(key, args.src, urls, registers=args.register,
                             without_register=args.without_destruction_register)
            _print_restore(report)
            print(f"restored {', '.join(urls)} from {args.src}")
    except (BackupError, dr.RegisterError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
