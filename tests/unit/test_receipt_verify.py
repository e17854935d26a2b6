"""The receipt forms `tools.audit_verify receipt` accepts, signed by the keys service's own receipt code."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.keys.domain.receipts import destruction_receipt, receipt_signer
from tools import audit_verify

SIGNER = receipt_signer("root-1", Ed25519PrivateKey.generate().private_bytes_raw())
BODY = destruction_receipt(account_id=7, destroyed=[(1, b"w1"), (2, b"w2")], scheduled_time=None,
                           destroy_time=datetime(2026, 12, 4, 18, 0, tzinfo=UTC), requested_by="identity",
                           signing_key_id=SIGNER.key_id)
SIG = base64.b64encode(SIGNER.sign(BODY)).decode()
KEY = f"{SIGNER.key_id}={base64.b64encode(SIGNER.public_bytes).decode()}"


@pytest.mark.parametrize("form", ["text", "object", "protobuf json"])
def test_standalone_forms_verify(form: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    receipt = {"text": BODY.decode(), "object": json.loads(BODY),
               "protobuf json": base64.b64encode(BODY).decode()}[form]  # PurgeAccountKeysResponse as JSON
    doc = {"receipt": receipt, "signature": SIG, "signing_key_id": SIGNER.key_id}
    if form == "protobuf json":
        doc = {"receipt": receipt, "signature": SIG, "signingKeyId": SIGNER.key_id, "deletedApiKeys": 3}
    (tmp_path / "r.json").write_text(json.dumps(doc))
    assert audit_verify.main(["receipt", str(tmp_path / "r.json"), "--key", KEY]) == 0
    out = capsys.readouterr().out
    assert "account 7's keys were destroyed" in out and "key versions destroyed: 1, 2" in out
    assert "destroyed at:           2026-12-04T18:00:00.000000Z" in out and "requested by:           identity" in out


def test_keys_are_required_and_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"receipt": BODY.decode(), "signature": SIG, "signing_key_id": SIGNER.key_id}))
    with pytest.raises(SystemExit):
        audit_verify.main(["receipt", str(path)])
    assert audit_verify.main(["receipt", str(path), "--key", f"{SIGNER.key_id}=AAAA"]) == 1
    assert "32-byte Ed25519 public key" in capsys.readouterr().out
    path.write_text(json.dumps({"receipt": BODY.decode(), "signature": SIG, "signing_key_id": "root-1.other"}))
    assert audit_verify.main(["receipt", str(path), "--key", KEY]) == 1
    assert capsys.readouterr().out.startswith("FAILED: KEY_ID_MISMATCH: the file: the receipt names signing key")
    path.write_text("not json at all\n{")
    assert audit_verify.main(["receipt", str(path), "--key", KEY]) == 1
    assert capsys.readouterr().out.startswith("FAILED: MALFORMED")


@pytest.mark.parametrize("saved_as", ["text", "message"])
def test_the_receipt_email_verifies(saved_as: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The owner's email: its Receipt / Signature / Signing key id lines, as text or the saved message (whose
    long receipt line is quoted-printable encoded and wrapped)."""
    text = (f"Your account was closed.\n\nReceipt: {BODY.decode()}\nSignature (base64): {SIG}\n"
            f"Signing key id: {SIGNER.key_id}\n")
    if saved_as == "message":
        msg = EmailMessage()
        msg["Subject"], msg["From"], msg["To"] = "destruction receipt", "no-reply@example.com", "o@example.com"
        msg.set_content(text, cte="quoted-printable")
        text = msg.as_string()
        assert BODY.decode() not in text  # wrapped: only decoding the body gives the exact bytes back
    (tmp_path / "mail.txt").write_text(text)
    assert audit_verify.main(["receipt", str(tmp_path / "mail.txt"), "--key", KEY]) == 0, capsys.readouterr().out
    assert "account 7's keys were destroyed" in capsys.readouterr().out
    (tmp_path / "mail.txt").write_text(text.replace("Signing key id", "Signing key id: root-1.x\nX"))
    assert audit_verify.main(["receipt", str(tmp_path / "mail.txt"), "--key", KEY]) == 1
