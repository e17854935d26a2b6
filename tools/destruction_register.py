"""The destruction register: every account whose keys were destroyed, kept where a restore cannot roll it back.

Crypto-shredding deletes an account's wrapped key-encryption keys (KEKs) from the keys database, but a backup
taken before that still holds them. The register is what `tools.backup restore` uses so that restoring such
a backup never makes the account readable again:

- **Sources.** The live keys database (every ring in state `destroyed`, its KEK versions, its signed receipt
  where the keys service kept one, and the public receipt-signing keys), read *before* a restore replaces
  it; the register file that every backup run writes next to its dumps (`<stamp>/destructions.json`); and
  any register file an operator gives (`tools.backup register --out FILE` writes one on its own, e.g. right
  after keys maintenance destroys something, or to keep a copy off the backup volume). Destruction is
  final, so the register in force is the union of all of them: an entry is never withdrawn.
- **File format** (version 1): `{"register": BODY, "mac": HEX}`; HEX is HMAC-SHA256 of BODY's canonical JSON
  (sorted keys, no spaces) under HKDF-SHA256(backup key, info "sendsafe destruction register v1"), so a
  register cannot be forged, edited or emptied without the backup key. BODY is
  `{"version": 1, "created": RFC3339, "destructions": [ENTRY...], "receipt_signing_keys": [KEY...]}`;
  ENTRY is `{"account_id": "42", "destroy_time": RFC3339, "versions": [1, 2], "receipt": TEXT|null,
  "signature": BASE64|null, "signing_key_id": TEXT|null}` (`receipt` is the exact signed canonical JSON of
  the keys service's destruction receipt, verifiable offline with `python -m tools.audit_verify receipt`);
  KEY is `{"key_id": TEXT, "public_key": BASE64, "create_time": RFC3339}`.
- **Re-application** (`reapply_sql`): SQL run in the same transaction as the restore of the keys database,
  after the backup's rows are in and before the transaction commits, so nothing ever reads the restored
  database without it. For each entry it deletes every wrapped KEK of the account (`wrapped_kek` NULL,
  `destroy_time` set, as keys maintenance does) and marks its ring `destroyed`; a ring the backup does not
  hold at all gets its tombstone (so the account's id can never get a fresh, readable ring); the receipt
  goes back with the ring where the restored schema keeps receipts; missing receipt-signing public keys
  are added back. It prints one `SENDSAFE-REAPPLIED <account> <what> <versions>` line per entry.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FILE_NAME = "destructions.json"
VERSION = 1
MARK = "SENDSAFE-REAPPLIED"
_KEY_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,200}")


class RegisterError(Exception):
    pass


@dataclass(frozen=True)
class Destruction:
    account_id: int
    destroy_time: str  # RFC 3339
    versions: tuple[int, ...]
    receipt: str | None = None
    signature: str | None = None  # base64
    signing_key_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"account_id": str(self.account_id), "destroy_time": self.destroy_time,
                "versions": list(self.versions), "receipt": self.receipt, "signature": self.signature,
                "signing_key_id": self.signing_key_id}


@dataclass
class Register:
    destructions: dict[int, Destruction] = field(default_factory=dict)
    signing_keys: dict[str, tuple[str, str]] = field(default_factory=dict)  # key id -> (base64 key, created)
    sources: list[str] = field(default_factory=list)

    def merge(self, other: Register) -> None:
        for account, entry in other.destructions.items():
            mine = self.destructions.get(account)
            if mine is None or (mine.receipt is None and entry.receipt is not None):
                self.destructions[account] = entry
        for kid, value in other.signing_keys.items():
            self.signing_keys.setdefault(kid, value)
        self.sources.extend(other.sources)

    def body(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "destructions": [self.destructions[a].to_json() for a in sorted(self.destructions)],
            "receipt_signing_keys": [{"key_id": k, "public_key": v[0], "create_time": v[1]}
                                     for k, v in sorted(self.signing_keys.items())],
        }


def _mac(key: bytes, body: dict[str, Any]) -> str:
    mac_key = HKDF(hashes.SHA256(), 32, None, b"sendsafe destruction register v1").derive(key)
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(mac_key, canonical, hashlib.sha256).hexdigest()


def write(key: bytes, register: Register, path: Path) -> None:
    """Write the register to `path` (a new file, mode 0600; replaced atomically if it exists)."""
    body = register.body()
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"register": body, "mac": _mac(key, body)}, fh, sort_keys=True, indent=1)
    tmp.replace(path)


def read(key: bytes, path: Path) -> Register:
    """A register file, authenticated with the backup key; RegisterError when it does not authenticate."""
    try:
        doc = json.loads(path.read_text())
        body, mac = doc["register"], str(doc["mac"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RegisterError(f"{path}: not a readable destruction register ({type(exc).__name__})") from None
    if not hmac.compare_digest(_mac(key, body), mac):
        raise RegisterError(f"{path}: the destruction register does not authenticate (wrong key or edited file)")
    try:
        out = _parse_body(body)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise RegisterError(f"{path}: malformed destruction register ({exc})") from None
    out.sources.append(str(path))
    return out


def _parse_body(body: dict[str, Any]) -> Register:
    if body.get("version") != VERSION:
        raise ValueError(f"unknown version {body.get('version')!r}")
    out = Register()
    for e in body["destructions"]:
        entry = _entry(int(e["account_id"]), str(e["destroy_time"]), [int(v) for v in e["versions"]],
                       e.get("receipt"), e.get("signature"), e.get("signing_key_id"))
        out.destructions[entry.account_id] = entry
    for k in body.get("receipt_signing_keys", []):
        kid, pub = str(k["key_id"]), str(k["public_key"])
        if not _KEY_ID.fullmatch(kid) or len(base64.b64decode(pub, validate=True)) != 32:
            raise ValueError("bad receipt-signing key")
        out.signing_keys[kid] = (pub, _time(str(k["create_time"])))
    return out


def _time(text: str) -> str:
    """An RFC 3339 time, checked (it ends up in SQL)."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"time without a zone: {text!r}")
    return parsed.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _entry(account_id: int, destroy_time: str, versions: list[int], receipt: Any, signature: Any,
           signing_key_id: Any) -> Destruction:
    if account_id <= 0 or any(v <= 0 for v in versions):
        raise ValueError("account ids and versions are positive")
    if receipt is not None:
        if not isinstance(receipt, str) or not isinstance(signature, str) or not isinstance(signing_key_id, str):
            raise ValueError("a receipt needs its signature and signing key id")
        if not _KEY_ID.fullmatch(signing_key_id):
            raise ValueError("bad signing key id")
        base64.b64decode(signature, validate=True)
    else:
        signature = signing_key_id = None
    return Destruction(account_id, _time(destroy_time), tuple(sorted(set(versions))), receipt, signature,
                       signing_key_id)


# -- the live keys database -----------------------------------------------------------------------------------


def _psql(url: str, sql: str) -> str:
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
                              stdout=subprocess.PIPE, stderr=errors, check=False)
        if proc.returncode != 0:
            errors.seek(0)
            text = errors.read().decode(errors="replace").strip().splitlines()
            raise RegisterError(text[-1] if text else f"psql exited with {proc.returncode}")
    return proc.stdout.decode()


_SCHEMA = ("SELECT json_build_object('rings', to_regclass('public.account_keys') IS NOT NULL,"
           " 'receipts', EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'public'"
           " AND table_name = 'account_keys' AND column_name = 'receipt'),"
           " 'signing_keys', to_regclass('public.receipt_signing_keys') IS NOT NULL)")


def from_keys_database(url: str) -> Register | None:
    """The register as the keys database holds it; None when the database does not exist or has no key rings
    (nothing to learn from it). RegisterError when it cannot be read."""
    try:
        schema = json.loads(_psql(url, _SCHEMA))
    except RegisterError as exc:
        if "does not exist" in str(exc):
            return None
        raise
    if not schema["rings"]:
        return None
    receipt = ("convert_from(k.receipt, 'UTF8'), encode(k.receipt_signature, 'base64'), k.receipt_signing_key_id"
               if schema["receipts"] else "NULL, NULL, NULL")
    rows = json.loads(_psql(url, (
        "SELECT coalesce(json_agg(json_build_array(k.account_id::text, k.destroy_time,"
        " (SELECT coalesce(json_agg(v.version ORDER BY v.version), '[]') FROM account_kek_versions v"
        f"  WHERE v.account_id = k.account_id), {receipt}) ORDER BY k.account_id), '[]')"
        " FROM account_keys k WHERE k.state = 'destroyed'")))
    out = Register(sources=[f"the keys database ({len(rows)} destroyed)"])
    for account, when, versions, body, signature, kid in rows:
        sig = "".join(signature.split()) if signature else None
        entry = _entry(int(account), when, versions, body if kid else None, sig, kid)
        out.destructions[entry.account_id] = entry
    if schema["signing_keys"]:
        keys = json.loads(_psql(url, "SELECT coalesce(json_agg(json_build_array(key_id,"
                                     " encode(public_key, 'base64'), create_time)), '[]') FROM receipt_signing_keys"))
        for kid, pub, created in keys:
            if _KEY_ID.fullmatch(kid):
                out.signing_keys[kid] = ("".join(pub.split()), _time(created))
    return out


def gather(key: bytes, keys_url: str, files: list[Path]) -> Register | None:
    """The union of the live keys database's register and the register `files`; None when none exists."""
    found = [r for r in [from_keys_database(keys_url)] if r is not None] + [read(key, p) for p in files]
    if not found:
        return None
    register = Register()
    for one in found:
        register.merge(one)
    return register


def refresh(register: Register, keys_url: str) -> None:
    """Add what the keys database holds now (destroyed since the register was gathered) to `register`."""
    live = from_keys_database(keys_url)
    if live is not None:
        sources = register.sources[:]
        register.merge(live)
        register.sources = sources


# -- re-application ------------------------------------------------------------------------------------------


def _bytea(data: bytes) -> str:
    return f"decode('{data.hex()}', 'hex')"


def reapply_sql(register: Register) -> str:
    """SQL that re-applies every destruction of the register to a keys database (see the module's docstring).
    Every value is validated when the register is read and goes in as a number, a checked time or hex."""
    rows = []
    for e in sorted(register.destructions.values(), key=lambda d: d.account_id):
        if e.receipt is not None and e.signature is not None and e.signing_key_id is not None:
            receipt = (f"{_bytea(e.receipt.encode())}, {_bytea(base64.b64decode(e.signature))},"
                       f" {_bytea(e.signing_key_id.encode())}")
        else:
            receipt = "NULL, NULL, NULL"
        versions = ",".join(str(v) for v in e.versions)
        rows.append(f"({e.account_id}, '{e.destroy_time}'::timestamptz, '{{{versions}}}'::integer[], {receipt})")
    keys = [f"('{kid}', decode('{base64.b64decode(pub).hex()}', 'hex'), '{created}'::timestamptz)"
            for kid, (pub, created) in sorted(register.signing_keys.items())]
    out = ["CREATE TEMP TABLE sendsafe_register (account_id bigint PRIMARY KEY, destroy_time timestamptz NOT NULL,"
           " versions integer[] NOT NULL, receipt bytea, receipt_signature bytea, receipt_signing_key_id bytea)"
           " ON COMMIT DROP;",
           "CREATE TEMP TABLE sendsafe_reapplied (account_id bigint, what text, versions integer[]) ON COMMIT DROP;"]
    if rows:
        out.append("INSERT INTO pg_temp.sendsafe_register VALUES\n" + ",\n".join(rows) + ";")
    out.append(_REAPPLY)
    if keys:
        out.append("INSERT INTO public.receipt_signing_keys (key_id, public_key, create_time) VALUES\n"
                   + ",\n".join(keys) + "\nON CONFLICT (key_id) DO NOTHING;")
    out.append(f"SELECT '{MARK} ' || account_id || ' ' || what || ' ' || coalesce(array_to_string(versions, ','), '')"
               " FROM pg_temp.sendsafe_reapplied ORDER BY account_id;")
    return "\n".join(out) + "\n"


_REAPPLY = """DO $reapply$
DECLARE
  r record;
  removed integer[];
  has_receipts boolean := EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'public'
                                  AND table_name = 'account_keys' AND column_name = 'receipt');
  ring_state text;
BEGIN
  FOR r IN SELECT * FROM pg_temp.sendsafe_register ORDER BY account_id LOOP
    SELECT state INTO ring_state FROM public.account_keys WHERE account_id = r.account_id FOR UPDATE;
    IF NOT FOUND THEN
      INSERT INTO public.account_keys (account_id, current_version, state, destroy_time)
        VALUES (r.account_id, greatest(1, coalesce((SELECT max(v) FROM unnest(r.versions) v), 1)), 'destroyed',
                r.destroy_time);
      INSERT INTO public.account_kek_versions (account_id, version, root_key_id, wrapped_kek, destroy_time)
        SELECT r.account_id, v, '', NULL, r.destroy_time FROM unnest(r.versions) v
        WHERE v <= (SELECT current_version FROM public.account_keys WHERE account_id = r.account_id);
      INSERT INTO pg_temp.sendsafe_reapplied VALUES (r.account_id, 'tombstone', r.versions);
    ELSE
      WITH gone AS (
        UPDATE public.account_kek_versions SET wrapped_kek = NULL, destroy_time = r.destroy_time
        WHERE account_id = r.account_id AND wrapped_kek IS NOT NULL RETURNING version)
      SELECT array_agg(version ORDER BY version) INTO removed FROM gone;
      UPDATE public.account_keys SET state = 'destroyed', destroy_time = r.destroy_time
        WHERE account_id = r.account_id AND state <> 'destroyed';
      INSERT INTO pg_temp.sendsafe_reapplied VALUES (r.account_id,
        CASE WHEN removed IS NULL AND ring_state = 'destroyed' THEN 'already' ELSE 'destroyed' END,
        coalesce(removed, '{}'));
    END IF;
    IF has_receipts AND r.receipt IS NOT NULL THEN
      EXECUTE 'UPDATE public.account_keys SET receipt = $2, receipt_signature = $3,'
              ' receipt_signing_key_id = convert_from($4, ''UTF8'') WHERE account_id = $1 AND receipt IS NULL'
        USING r.account_id, r.receipt, r.receipt_signature, r.receipt_signing_key_id;
    END IF;
  END LOOP;
END
$reapply$;"""


def advance_account_ids(identity_url: str, register: Register) -> None:
    """After identity's database was restored: its account id sequence went back to the backup's, so a new
    account could be given the id of an account destroyed since, whose ring is a tombstone (every use of its
    keys would fail KEYS_DESTROYED). Move the sequence past every id the register names."""
    if register.destructions:
        top = max(register.destructions)
        _psql(identity_url, "DO $$ BEGIN IF to_regclass('public.accounts_id_seq') IS NOT NULL THEN"
                            " PERFORM setval('public.accounts_id_seq', greatest((SELECT last_value FROM"
                            f" public.accounts_id_seq), {int(top)})); END IF; END $$")


@dataclass(frozen=True)
class Reapplied:
    account_id: int
    what: str  # destroyed (KEKs removed now) | already (destroyed in the backup too) | tombstone (no ring in it)
    versions: tuple[int, ...]

    def __str__(self) -> str:
        if self.what == "destroyed":
            gone = ",".join(map(str, self.versions)) or "none left"
            return f"account {self.account_id}: destroyed again (wrapped KEK versions removed: {gone})"
        if self.what == "tombstone":
            return f"account {self.account_id}: not in the backup; its destroyed ring is recorded"
        return f"account {self.account_id}: already destroyed in the backup"


def parse_report(output: str) -> list[Reapplied]:
    out = []
    for line in output.splitlines():
        if line.startswith(MARK + " "):
            _, account, what, *rest = line.split(" ")
            versions = tuple(int(v) for v in rest[0].split(",") if v) if rest else ()
            out.append(Reapplied(int(account), what, versions))
    return out
