"""`python -m tools.audit_verify receipt`: a real destruction receipt from a real keys service (mTLS, PostgreSQL,
the audit service) verifies offline against the receipt-signing keys as GET /v1/keys/receipt-signing-keys
serves them, in every form it travels in (the audit event, an export line, a standalone receipt, the
destruction register); a tampered one fails with exit status 1 and the reason."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from gateway.surface import Surface
from gateway.transcode.response import message_to_json
from sendsafe.audit.v1 import audit_service_pb2, audit_service_pb2_grpc
from sendsafe.context.v1 import principal_pb2
from sendsafe.keys.v1 import keys_service_pb2 as pb
from svckit.app import App
from tests.conftest import channel_as
from tests.integration.keys.conftest import Clock
from tests.integration.keys.test_keys_in_depth import Stub, as_user, stubs
from tests.support import CertBundle
from tools import audit_verify
from tools import destruction_register as dr

ACCOUNTS = itertools.count(8600)  # one account per test: the session's audit log keeps every test's events
__all__ = ["stubs"]  # the fixture, shared with test_keys_in_depth


async def destroyed_event(audit_app: App, certs: CertBundle, account: int) -> dict[str, Any]:
    """The audit event keys.account_keys.destroyed of the account, as the audit API's JSON shows it."""
    principal = principal_pb2.Principal(account_id=account, user_id=1, permissions=["audit.read"])
    async with channel_as(certs, "gateway", audit_app.port, "audit") as ch:
        resp = await audit_service_pb2_grpc.AuditServiceStub(ch).ListEvents(
            audit_service_pb2.ListEventsRequest(action="keys.account_keys.destroyed", page_size=10),
            metadata=(("x-sendsafe-principal-bin", principal.SerializeToString()),),
        )
    (event,) = resp.events
    return json_format.MessageToDict(event, preserving_proto_field_name=True)


def check(path: Path, keys: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = audit_verify.main(["receipt", str(path), "--keys", str(keys)])
    return code, capsys.readouterr().out


@pytest.fixture
async def destroyed(stubs: dict[str, Stub], keys_app: App, audit_app: App, certs: CertBundle, clock: Clock,
                    tmp_path: Path) -> tuple[int, dict[str, Any], Path]:
    """An account's keys (two versions) destroyed through the API and keys maintenance; (the account, its audit
    event, the file of receipt-signing keys saved from GET /v1/keys/receipt-signing-keys)."""
    account = next(ACCOUNTS)
    await stubs["messaging"].GenerateDataKey(pb.GenerateDataKeyRequest(account_id=account))
    await stubs["ops"].RotateAccountKey(pb.RotateAccountKeyRequest(account_id=account))
    await stubs["identity"].ScheduleAccountKeyDestruction(
        pb.ScheduleAccountKeyDestructionRequest(account_id=account, pending_window_seconds=60))
    clock.advance(seconds=60)
    assert (await stubs["ops"].RunKeyMaintenance(pb.RunKeyMaintenanceRequest())).destroyed_accounts == 1
    answer = await stubs["gateway"].ListReceiptSigningKeys(pb.ListReceiptSigningKeysRequest(),
                                                           metadata=as_user(account))
    keys = tmp_path / "receipt-signing-keys.json"
    keys.write_text(json.dumps(message_to_json(answer, Surface.V1)))  # the gateway's JSON answer
    return account, await destroyed_event(audit_app, certs, account), keys


async def test_a_real_receipt_verifies_in_every_form(
    destroyed: tuple[int, dict[str, Any], Path], keys_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    account, event, keys = destroyed
    details = event["details"]
    forms = {
        "event.json": event,  # as GET /v1/audit/events shows it
        "standalone.json": {"receipt": details["receipt"], "signature": details["signature"],
                            "signing_key_id": details["signing_key_id"]},  # what the owner is emailed
    }
    for name, doc in forms.items():
        (tmp_path / name).write_text(json.dumps(doc))
    # An export's JSON Lines: the event line among others.
    other = {"type": "event", "event": {"action": "keys.api_key.created", "details": {}}}
    (tmp_path / "export.jsonl").write_text("\n".join(json.dumps(d) for d in (
        other, {"type": "event", "event": event})) + "\n")
    for name in (*forms, "export.jsonl"):
        code, out = check(tmp_path / name, keys, capsys)
        assert code == 0, (name, out)
        assert f"account {account}'s keys were destroyed" in out
        assert "key versions destroyed: 1, 2" in out
        assert f"destroyed at:           {json.loads(details['receipt'])['destroy_time']}" in out
        assert f"signed by key:          {details['signing_key_id']}" in out

    # The destruction register a backup writes carries the receipt the keys service kept with the ring.
    backup_key = os.urandom(32)
    register = dr.from_keys_database(keys_database)
    assert register is not None and register.destructions[account].versions == (1, 2)
    assert register.destructions[account].receipt == details["receipt"]
    assert register.destructions[account].signature == details["signature"]
    dr.write(backup_key, register, tmp_path / "register.json")
    code, out = check(tmp_path / "register.json", keys, capsys)
    assert code == 0 and f"account {account}'s keys were destroyed" in out, out


@pytest.mark.parametrize("damage", [
    "receipt edited", "signature edited", "event versions edited", "event account edited", "unknown key",
    "key swapped", "not a receipt",
])
async def test_a_tampered_receipt_fails_and_says_why(
    destroyed: tuple[int, dict[str, Any], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str,
) -> None:
    account, event, keys = destroyed
    details = event["details"]
    kid = details["signing_key_id"]
    expected = {
        "receipt edited": "BAD_SIGNATURE", "signature edited": "BAD_SIGNATURE",
        "event versions edited": "EVENT_MISMATCH", "event account edited": "EVENT_MISMATCH",
        "unknown key": "UNKNOWN_KEY", "key swapped": "KEY_ID_MISMATCH", "not a receipt": "NOT_FOUND",
    }[damage]
    if damage == "receipt edited":  # one more version claimed destroyed than really was
        body = json.loads(details["receipt"])
        body["destroyed_key_versions"].append({"version": 3, "wrapped_sha256": "00" * 32})
        details["receipt"] = json.dumps(body, sort_keys=True, separators=(",", ":"))
    elif damage == "signature edited":
        sig = bytearray(base64.b64decode(details["signature"]))
        sig[0] ^= 1
        details["signature"] = base64.b64encode(bytes(sig)).decode()
    elif damage == "event versions edited":
        details["versions"] = "1"
    elif damage == "event account edited":
        event["subject_account_id"] = str(account + 1)
    elif damage == "unknown key":
        keys.write_text(json.dumps({"keys": []}))
    elif damage == "key swapped":  # the right id, another public key: the id's fingerprint gives it away
        other = base64.b64encode(os.urandom(32)).decode()
        keys.write_text(json.dumps({"keys": [{"key_id": kid, "public_key": other}]}))
    else:
        event["action"] = "keys.api_key.created"
    (tmp_path / "event.json").write_text(json.dumps(event))
    code, out = check(tmp_path / "event.json", keys, capsys)
    assert code == 1
    assert out.startswith(f"FAILED: {expected}: "), out


def test_key_ids_name_their_key() -> None:
    """The fingerprint check rests on how the keys service names receipt-signing keys."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from services.keys.domain.receipts import receipt_signer

    signer = receipt_signer("root-1", Ed25519PrivateKey.generate().private_bytes_raw())
    assert signer.key_id == f"root-1.{hashlib.sha256(signer.public_bytes).hexdigest()[:16]}"
