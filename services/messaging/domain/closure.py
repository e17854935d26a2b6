"""A closing account: it sends nothing; once closed, its data is deleted and its owner gets the signed receipt of
its keys' destruction by email (fixed template). Pure."""

from __future__ import annotations

import base64
from typing import Final

from svckit.errors import FailedPrecondition

CLOSURE_RECEIPT: Final = "account_closure_receipt"  # Event.cause of the receipt email: no alert rule matches it


class AccountClosing(FailedPrecondition):
    reason = "ACCOUNT_CLOSING"


class AccountNotClosing(FailedPrecondition):
    reason = "ACCOUNT_NOT_CLOSING"


def closure_receipt_email(account_id: int, receipt: bytes, signature: bytes, signing_key_id: str) -> tuple[str, str]:
    """(subject, body) of the email that carries a closed account's destruction receipt: the receipt exactly as
    signed, its signature, and how to check both offline."""
    return (
        f"Your SendSafe account {account_id} is deleted: destruction receipt",
        "Your SendSafe account was closed as you asked. Its keys were destroyed (crypto-shredded), so nothing\n"
        "that was encrypted under them can ever be read again, and its data was deleted. Only the audit log's\n"
        "events about the account stay (ids and network facts, no content).\n\n"
        "The receipt below is signed by SendSafe. Check it offline: save this email and the receipt-signing\n"
        "public keys (GET /v1/keys/receipt-signing-keys), then run\n"
        "`python -m tools.audit_verify receipt <this email> --keys <the keys>`, or use any Ed25519 verifier\n"
        "over the receipt's bytes exactly as shown on the Receipt line.\n\n"
        f"Receipt: {receipt.decode()}\n"
        f"Signature (base64): {base64.b64encode(signature).decode()}\n"
        f"Signing key id: {signing_key_id}\n",
    )
