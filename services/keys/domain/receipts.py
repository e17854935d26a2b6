"""Signed destruction receipts: proof, checkable offline, of which key versions were destroyed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

RECEIPT_TYPE = "sendsafe.keys.destruction_receipt.v1"
RECEIPT_SIGNING_INFO = b"sendsafe destruction-receipt signing v1"


@dataclass(frozen=True)
class ReceiptSigner:
    key_id: str
    private: Ed25519PrivateKey = field(repr=False)

    @property
    def public_bytes(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def sign(self, receipt: bytes) -> bytes:
        return self.private.sign(receipt)


def receipt_signer(root_key_id: str, seed: bytes) -> ReceiptSigner:
    """The Ed25519 key that signs receipts, derived from the root key: it lives only inside the keys service."""
    private = Ed25519PrivateKey.from_private_bytes(seed)
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return ReceiptSigner(f"{root_key_id}.{hashlib.sha256(public).hexdigest()[:16]}", private)


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def destruction_receipt(
    *,
    account_id: int,
    destroyed: Sequence[tuple[int, bytes]],
    scheduled_time: datetime | None,
    destroy_time: datetime,
    requested_by: str,
    signing_key_id: str,
) -> bytes:
    """Canonical JSON (sorted keys, no spaces) naming what was destroyed: each KEK version with the SHA-256 of
    its wrapped form (a commitment to exactly which key material is gone, revealing nothing about it)."""
    body = {
        "type": RECEIPT_TYPE,
        "account_id": str(account_id),
        "destroyed_key_versions": [
            {"version": v, "wrapped_sha256": hashlib.sha256(blob).hexdigest()} for v, blob in sorted(destroyed)
        ],
        "scheduled_time": _rfc3339(scheduled_time) if scheduled_time else "",
        "destroy_time": _rfc3339(destroy_time),
        "requested_by": requested_by,
        "signing_key_id": signing_key_id,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def verify_receipt(public_key: bytes, receipt: bytes, signature: bytes) -> bool:
    """True when `signature` is the Ed25519 signature of `receipt` by `public_key` (what customers run)."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, receipt)
    except (InvalidSignature, ValueError):
        return False
    return True
