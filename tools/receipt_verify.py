"""Offline verification of signed key-destruction receipts (`python -m tools.audit_verify receipt`).

When an account's keys are destroyed, the keys service writes a receipt: canonical JSON (sorted keys, no
spaces), exactly the bytes it signs with Ed25519 —

    {"account_id":"42","destroy_time":"2026-12-04T18:00:00.000000Z","destroyed_key_versions":
     [{"version":1,"wrapped_sha256":"<hex>"}, ...],"requested_by":"identity","scheduled_time":"<RFC 3339 or ''>",
     "signing_key_id":"<root key id>.<first 16 hex of SHA-256(public key)>",
     "type":"sendsafe.keys.destruction_receipt.v1"}

`wrapped_sha256` commits to exactly which wrapped key material is gone without revealing anything about it.
Accepted inputs (a file with one JSON object, or JSON Lines; every receipt in it is checked):

- a **standalone receipt** (what the account's owner is emailed):
  `{"receipt": TEXT, "signature": BASE64, "signing_key_id": ID}` — TEXT is the exact signed JSON as a string
  (an object is accepted too and re-encoded canonically; so is base64 of the bytes, as protobuf JSON of
  `PurgeAccountKeysResponse` gives it);
- the **audit event** `keys.account_keys.destroyed` as the audit API or an export shows it (its `details`
  hold `receipt`, `signature`, `signing_key_id`; an export line `{"type": "event", "event": {...}}` too).
  Its `public_key` detail is never trusted: only keys you supply are. Its `versions` detail and account must
  agree with the signed receipt;
- a **destruction register** written by `tools.backup` (`{"register": {"destructions": [...]}}`): every
  entry that has a receipt;
- the **receipt email** a closed account's owner gets, as text or as the saved message (.eml): its lines
  `Receipt: TEXT`, `Signature (base64): BASE64` and `Signing key id: ID`.

The receipt-signing public keys come from `GET /v1/keys/receipt-signing-keys` (`--keys FILE`, that JSON
answer saved: `{"keys": [{"key_id": ..., "public_key": BASE64, ...}]}`) or `--key ID=BASE64`. A receipt
verifies when its signing key is one of those, the key id names that key (its fingerprint), and the Ed25519
signature is the key's over the exact bytes. Then it proves that the keys service that holds that key (the
key is derived from its root key and never leaves it) destroyed those key versions of the account at that
time. Exit status 0 when every receipt verifies, 1 otherwise (with the reason).
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from services.keys.domain.receipts import RECEIPT_TYPE, verify_receipt

MALFORMED, UNKNOWN_KEY, KEY_ID_MISMATCH = "MALFORMED", "UNKNOWN_KEY", "KEY_ID_MISMATCH"
BAD_SIGNATURE, EVENT_MISMATCH, NOT_FOUND = "BAD_SIGNATURE", "EVENT_MISMATCH", "NOT_FOUND"
DESTROYED_ACTION = "keys.account_keys.destroyed"


class ReceiptProblem(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


@dataclass(frozen=True)
class SignedReceipt:
    where: str  # e.g. "line 3"
    receipt: bytes
    signature: bytes
    signing_key_id: str
    event_account: str = ""  # what the audit event around it says, when it came in one
    event_versions: str | None = None


@dataclass(frozen=True)
class Proven:
    account_id: str
    versions: list[tuple[int, str]]
    destroy_time: str
    scheduled_time: str
    requested_by: str
    signing_key_id: str

    def lines(self) -> list[str]:
        versions = ", ".join(str(v) for v, _ in self.versions)
        out = [f"  account:                {self.account_id}",
               f"  key versions destroyed: {versions}",
               f"  destroyed at:           {self.destroy_time}"]
        if self.scheduled_time:
            out.append(f"  scheduled at:           {self.scheduled_time}")
        out += [f"  requested by:           {self.requested_by}",
                f"  signed by key:          {self.signing_key_id}"]
        out += [f"  version {v} wrapped-key SHA-256: {digest}" for v, digest in self.versions]
        return out


def _b64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not base64 text")
    text = "".join(text.split())
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _receipt_bytes(value: Any) -> bytes:
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    if not isinstance(value, str):
        raise ValueError("receipt is neither JSON text nor an object")
    if value.lstrip().startswith("{"):
        return value.encode()
    return _b64(value)  # protobuf JSON of a bytes field


def public_keys(doc: Any) -> dict[str, bytes]:
    """Key id -> raw Ed25519 public key, from the JSON answer of GET /v1/keys/receipt-signing-keys."""
    items = doc.get("keys", doc.get("data", {}).get("keys") if isinstance(doc.get("data"), dict) else None) \
        if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise ValueError("no list of keys (expected the answer of GET /v1/keys/receipt-signing-keys)")
    out = {}
    for k in items:
        kid = k.get("key_id", k.get("keyId"))
        raw = _b64(k.get("public_key", k.get("publicKey")))
        if not isinstance(kid, str) or len(raw) != 32:
            raise ValueError("a key without an id or with a public key that is not 32 bytes")
        out[kid] = raw
    return out


def _from_object(obj: Any, where: str) -> Iterator[SignedReceipt]:
    if not isinstance(obj, dict):
        raise ReceiptProblem(MALFORMED, f"{where}: not a JSON object")
    if isinstance(obj.get("register"), dict):
        for i, entry in enumerate(obj["register"].get("destructions", []), start=1):
            if entry.get("receipt"):
                yield from _from_object(entry, f"{where}, register entry {i}")
        return
    event: dict[str, Any] = obj["event"] if isinstance(obj.get("event"), dict) else obj
    details = event.get("details")
    source: dict[str, Any]
    if isinstance(details, dict):
        if event.get("action", DESTROYED_ACTION) != DESTROYED_ACTION:
            return  # another event of an export
        account = str(event.get("subject_account_id") or event.get("subjectAccountId") or event.get("resource_id")
                      or event.get("resourceId") or "")
        source, versions = details, details.get("versions")
    else:
        source, account, versions = event, "", None
    try:
        yield SignedReceipt(where, _receipt_bytes(source["receipt"]), _b64(source["signature"]),
                            str(source.get("signing_key_id") or source.get("signingKeyId") or ""), account,
                            versions if isinstance(versions, str) else None)
    except (KeyError, ValueError, binascii.Error) as exc:
        raise ReceiptProblem(MALFORMED, f"{where}: no receipt, signature and signing key id ({exc})") from None


_EMAIL_LINES = {"receipt": r"^Receipt: (.+)$", "signature": r"^Signature \(base64\): (.+)$",
                "signing_key_id": r"^Signing key id: (.+)$"}


def _from_email(text: str) -> SignedReceipt | None:
    """The receipt email's Receipt / Signature (base64) / Signing key id lines, from its text or the saved
    message (headers, and a body in quoted-printable or base64)."""
    if re.match(r"[A-Za-z-]+: ", text) and re.search(r"^(MIME-Version|Content-Type):", text, re.M | re.I):
        message = email.message_from_string(text, policy=email.policy.default)
        part = message.get_body(preferencelist=("plain",)) if isinstance(message, EmailMessage) else None
        text = str(part.get_content()) if part is not None else ""
    found = {k: re.search(rx, text, re.M) for k, rx in _EMAIL_LINES.items()}
    if not all(found.values()):
        return None
    value = {k: m.group(1).strip() for k, m in found.items() if m is not None}
    try:
        signature = _b64(value["signature"])
    except (ValueError, binascii.Error):
        raise ReceiptProblem(MALFORMED, "the email: the signature is not base64") from None
    return SignedReceipt("the email", value["receipt"].encode(), signature, value["signing_key_id"])


def read_receipts(text: str) -> list[SignedReceipt]:
    """Every signed receipt in a file (one JSON object, JSON Lines, or the receipt email)."""
    if not text.lstrip().startswith(("{", "[")):
        mailed = _from_email(text)
        if mailed is not None:
            return [mailed]
    try:
        docs: Iterable[tuple[str, Any]] = [("the file", json.loads(text))]
    except ValueError:
        try:
            docs = [(f"line {n}", json.loads(line)) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        except ValueError as exc:
            raise ReceiptProblem(MALFORMED, f"neither JSON nor JSON Lines ({exc})") from None
    out = [r for where, doc in docs for r in _from_object(doc, where)]
    if not out:
        raise ReceiptProblem(NOT_FOUND, "no destruction receipt in the file")
    return out


def verify_one(signed: SignedReceipt, keys: dict[str, bytes]) -> Proven:
    """What the receipt proves, or ReceiptProblem saying why it does not verify."""
    where = signed.where
    try:
        body = json.loads(signed.receipt)
        kid = str(body["signing_key_id"])
        versions = [(int(v["version"]), str(v["wrapped_sha256"])) for v in body["destroyed_key_versions"]]
        proven = Proven(str(body["account_id"]), versions, str(body["destroy_time"]),
                        str(body.get("scheduled_time", "")), str(body.get("requested_by", "")), kid)
    except (ValueError, KeyError, TypeError) as exc:
        raise ReceiptProblem(MALFORMED, f"{where}: the receipt is not a destruction receipt ({exc})") from None
    if not isinstance(body, dict) or body.get("type") != RECEIPT_TYPE:
        raise ReceiptProblem(MALFORMED, f"{where}: not a {RECEIPT_TYPE}")
    if signed.signing_key_id and signed.signing_key_id != kid:
        raise ReceiptProblem(KEY_ID_MISMATCH, f"{where}: the receipt names signing key {kid!r}, the envelope"
                                              f" {signed.signing_key_id!r}")
    public = keys.get(kid)
    if public is None:
        raise ReceiptProblem(UNKNOWN_KEY, f"{where}: none of the supplied receipt-signing keys has id {kid!r}"
                                          f" (supplied: {', '.join(sorted(keys)) or 'none'})")
    if not kid.endswith("." + hashlib.sha256(public).hexdigest()[:16]):
        raise ReceiptProblem(KEY_ID_MISMATCH, f"{where}: the supplied key {kid!r} is not the key its id names"
                                              " (fingerprint differs)")
    if not verify_receipt(public, signed.receipt, signed.signature):
        raise ReceiptProblem(BAD_SIGNATURE, f"{where}: the signature does not verify under {kid!r}: the receipt"
                                            " was altered, or that key did not sign it")
    if signed.event_account and signed.event_account != proven.account_id:
        raise ReceiptProblem(EVENT_MISMATCH, f"{where}: the event is about account {signed.event_account}, the"
                                             f" signed receipt about {proven.account_id}")
    if signed.event_versions is not None and signed.event_versions != ",".join(str(v) for v, _ in versions):
        raise ReceiptProblem(EVENT_MISMATCH, f"{where}: the event lists versions {signed.event_versions!r}, the"
                                             " signed receipt others")
    return proven


def run(path: Path, keys_file: Path | None, key_args: list[str]) -> int:
    """The `receipt` subcommand: prints what each receipt proves; 0 when all verify, 1 with the reason."""
    try:
        keys = public_keys(json.loads(keys_file.read_text())) if keys_file else {}
        for arg in key_args:
            kid, _, b64 = arg.partition("=")
            raw = _b64(b64)
            if not kid or len(raw) != 32:
                raise ValueError(f"--key {arg!r}: expected ID=BASE64 of a 32-byte Ed25519 public key")
            keys[kid] = raw
    except (OSError, ValueError, binascii.Error, AttributeError) as exc:
        print(f"FAILED: the receipt-signing keys: {exc}")
        return 1
    try:
        receipts = read_receipts(path.read_text())
        proven = [verify_one(r, keys) for r in receipts]
    except OSError as exc:
        print(f"FAILED: {exc}")
        return 1
    except ReceiptProblem as problem:
        print(f"FAILED: {problem}")
        return 1
    for p in proven:
        print(f"OK: destruction receipt verified: account {p.account_id}'s keys were destroyed")
        print("\n".join(p.lines()))
    return 0
