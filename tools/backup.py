"""Encrypted backups of each service's database, and restore.

    python -m tools.backup backup  --dir BACKUPS [--services audit,keys,messaging,identity]
    python -m tools.backup restore --from BACKUPS/<stamp> [--services ...]
    python -m tools.backup verify  --from BACKUPS/<stamp>

Each database is dumped with `pg_dump -Fc` and streamed through authenticated encryption into
`<stamp>/<service>.pgdump.enc`; nothing unencrypted touches the disk. A `manifest.json` lists every file
with its size and SHA-256 and is itself authenticated (HMAC), so a swapped, truncated or edited backup
is refused before anything is restored.

File format (version 1): magic `SSBK1`, 16-byte random salt, then frames of
[4-byte big-endian length][AES-256-GCM ciphertext]. The file key is HKDF-SHA256(backup key, salt); frame
i uses nonce = 4 zero bytes || i (8 bytes) and associated data = magic || salt || i || final-flag, so
frames cannot be reordered, dropped or cut off at the end without detection.

Settings (environment): BACKUP_KEY_FILE (32 random bytes, hex; or BACKUP_KEY), and for each service
`<SERVICE>_DATABASE_URL` (or `<SERVICE>_DATABASE_URL_FILE`), e.g. AUDIT_DATABASE_URL. The backup key is
not the keys service's root key: restoring readable data also needs the root key, kept separately.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"SSBK1"
CHUNK = 1 << 20
SERVICES = ("audit", "keys", "messaging", "identity")


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
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = root / stamp
    out.mkdir(parents=True, mode=0o700)
    files = {}
    for svc, url in urls.items():
        path = out / f"{svc}.pgdump.enc"
        proc = subprocess.Popen(["pg_dump", "-Fc", "--no-owner", "--no-privileges", url], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as dst:
            size = encrypt_stream(key, proc.stdout, dst)
        if proc.wait() != 0:
            raise BackupError(f"pg_dump failed for {svc}")
        files[svc] = {"file": path.name, "plain_size": size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    body = json.dumps({"version": 1, "created": stamp, "files": files}, sort_keys=True).encode()
    (out / "manifest.json").write_text(json.dumps({"manifest": json.loads(body), "mac": _manifest_mac(key, body)}))
    return out


def verify(key: bytes, folder: Path) -> dict[str, dict[str, object]]:
    doc = json.loads((folder / "manifest.json").read_text())
    body = json.dumps(doc["manifest"], sort_keys=True).encode()
    if not hmac.compare_digest(_manifest_mac(key, body), doc["mac"]):
        raise BackupError("manifest does not authenticate (wrong key or edited manifest)")
    files: dict[str, dict[str, object]] = doc["manifest"]["files"]
    for svc, meta in files.items():
        digest = hashlib.sha256((folder / str(meta["file"])).read_bytes()).hexdigest()
        if digest != meta["sha256"]:
            raise BackupError(f"{svc}: file does not match the manifest")
    return files


def restore(key: bytes, folder: Path, urls: dict[str, str]) -> None:
    """Restore into the given (existing, empty or to-be-replaced) databases."""
    files = verify(key, folder)
    for svc, url in urls.items():
        if svc not in files:
            raise BackupError(f"{svc} is not in this backup")
        proc = subprocess.Popen(
            ["pg_restore", "--no-owner", "--no-privileges", "--clean", "--if-exists", "--exit-on-error", "-d", url],
            stdin=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert proc.stdin is not None
        with open(folder / str(files[svc]["file"]), "rb") as src:
            for chunk in decrypt_stream(key, src):
                proc.stdin.write(chunk)
        proc.stdin.close()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.wait() != 0:
            raise BackupError(f"pg_restore failed for {svc}: {err[-500:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.backup")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("backup")
    b.add_argument("--dir", type=Path, required=True)
    r = sub.add_parser("restore")
    r.add_argument("--from", dest="src", type=Path, required=True)
    v = sub.add_parser("verify")
    v.add_argument("--from", dest="src", type=Path, required=True)
    for p in (b, r):
        p.add_argument("--services", default=",".join(SERVICES))
    args = parser.parse_args(argv)
    try:
        key = load_key()
        if args.cmd == "verify":
            print(json.dumps(verify(key, args.src), indent=2))
            return 0
        urls = database_urls([s for s in args.services.split(",") if s])
        if args.cmd == "backup":
            print(f"backup written to {backup(key, urls, args.dir)}")
        else:
            restore(key, args.src, urls)
            print(f"restored {', '.join(urls)} from {args.src}")
    except BackupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
