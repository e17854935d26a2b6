"""Tamper evidence over real mTLS and PostgreSQL: inclusion and consistency proofs checked with an
independent RFC 9162 implementation, signed checkpoints checked by hand against the C2SP note format, and
altering, deleting, inserting or reordering stored events detected by the API and the offline verifier."""

from __future__ import annotations

import base64
import hashlib

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sendsafe.audit.v1 import audit_service_pb2 as pb
from sendsafe.audit.v1 import event_pb2, evidence_pb2
from tests.integration.audit.conftest import Audit, AuditFactory, event, principal, reason_of
from tests.unit.audit import rfc9162 as rfc
from tools import audit_verify

ACCOUNT, OTHER = 5101, 5102
STAFF = principal(1, "audit.verify", staff=True)


def open_checkpoint(note: str, vkey: str) -> tuple[int, bytes]:
    """(size, root) of a checkpoint, checked by hand: C2SP signed note, Ed25519 over the note text."""
    name, key_id_hex, key_b64 = vkey.split("+", 2)
    raw_key = base64.b64decode(key_b64)
    assert raw_key[0] == 1 and hashlib.sha256(name.encode() + b"\n" + raw_key).digest()[:4].hex() == key_id_hex
    text, sigs = note.split("\n\n")
    line = sigs.strip().split("\n")[0]
    dash, signer, blob = line.split(" ")
    sig = base64.b64decode(blob)
    assert dash == "\u2014" and signer == name and sig[:4].hex() == key_id_hex
    Ed25519PublicKey.from_public_bytes(raw_key[1:]).verify(sig[4:], (text + "\n").encode())
    origin, size, root = text.split("\n")[:3]
    assert origin == name
    return int(size), base64.b64decode(root)


async def _seed(audit: Audit, n: int = 12) -> list[event_pb2.Event]:
    """n events of ACCOUNT interleaved with events of OTHER."""
    mine = [event(ACCOUNT, f"test.e{i}") for i in range(n)]
    for i, ev in enumerate(mine):
        await audit.append(ev, event(OTHER, f"other.{i}"))
    return mine


async def test_inclusion_proofs_verify_with_an_independent_implementation(make_audit: AuditFactory) -> None:
    audit = await make_audit()
    mine = await _seed(audit, 9)
    stub = audit.stub()
    md = principal(ACCOUNT)
    cp = await stub.GetCheckpoint(pb.GetCheckpointRequest(fresh=True), metadata=md)
    size, root = open_checkpoint(cp.checkpoint.signed_note, cp.verifier_key)
    assert (size, root) == (cp.checkpoint.tree_size, cp.checkpoint.root_hash) and size >= 18
    for ev in mine:
        got = await stub.GetEventProof(pb.GetEventProofRequest(event_id=ev.event_id), metadata=md)
        assert got.leaf_hash == hashlib.sha256(b"\x00" + got.leaf_data).digest()
        assert got.event.hash == got.leaf_hash.hex() and got.event.event_id == ev.event_id
        assert got.leaf_index == got.event.sequence - 1
        p_size, p_root = open_checkpoint(got.checkpoint.signed_note, cp.verifier_key)
        assert rfc.verify_inclusion(got.leaf_index, p_size, got.leaf_hash, list(got.inclusion_path), p_root)
        # The leaf bytes are the event: what the API shows is what the tree commits to.
        sealed = event_pb2.Event.FromString(got.leaf_data)
        assert (sealed.event_id, sealed.action, sealed.sequence) == (ev.event_id, ev.action, got.event.sequence)
    # Another account cannot even learn that the event exists.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetEventProof(pb.GetEventProofRequest(event_id=mine[0].event_id), metadata=principal(OTHER))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and reason_of(info.value) == "EVENT_NOT_FOUND"


async def test_a_proof_for_an_event_newer_than_the_latest_checkpoint_signs_one(make_audit: AuditFactory) -> None:
    audit = await make_audit()
    await _seed(audit, 2)
    stub = audit.stub()
    first = await stub.GetCheckpoint(pb.GetCheckpointRequest(), metadata=principal(ACCOUNT))
    late = event(ACCOUNT, "test.late")
    await audit.append(late)
    got = await stub.GetEventProof(pb.GetEventProofRequest(event_id=late.event_id), metadata=principal(ACCOUNT))
    assert got.checkpoint.tree_size > first.checkpoint.tree_size and got.leaf_index == got.checkpoint.tree_size - 1
    with pytest.raises(grpc.aio.AioRpcError) as info:  # pinned to a tree that does not hold it yet
        await stub.GetEventProof(pb.GetEventProofRequest(event_id=late.event_id, tree_size=first.checkpoint.tree_size),
                                 metadata=principal(ACCOUNT))
    assert reason_of(info.value) == "TREE_SIZE_INVALID"


async def test_consistency_between_two_checkpoints_verifies_independently(make_audit: AuditFactory) -> None:
    audit = await make_audit()
    await _seed(audit, 3)
    stub = audit.stub()
    md = principal(ACCOUNT)
    older = await stub.GetCheckpoint(pb.GetCheckpointRequest(fresh=True), metadata=md)
    await _seed(audit, 7)
    newer = await stub.GetCheckpoint(pb.GetCheckpointRequest(fresh=True), metadata=md)
    vkey = newer.verifier_key
    m, m_root = open_checkpoint(older.checkpoint.signed_note, vkey)
    n, n_root = open_checkpoint(newer.checkpoint.signed_note, vkey)
    assert m < n
    proof = await stub.GetConsistencyProof(pb.GetConsistencyProofRequest(first_tree_size=m, second_tree_size=n),
                                           metadata=md)
    assert rfc.verify_consistency(m, n, m_root, n_root, list(proof.proof))
    assert proof.second.signed_note == newer.checkpoint.signed_note
    # From every size to the latest, as a customer holding any older checkpoint would ask.
    for first in range(1, n):
        p = await stub.GetConsistencyProof(pb.GetConsistencyProofRequest(first_tree_size=first), metadata=md)
        rows = await audit.app.extras["service"]._store.chain_rows(0, first)  # type: ignore[attr-defined]
        first_root = rfc.MTH([r[1] for r in rows])
        assert rfc.verify_consistency(first, n, first_root, n_root, list(p.proof)), first
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetConsistencyProof(pb.GetConsistencyProofRequest(first_tree_size=n + 1), metadata=md)
    assert reason_of(info.value) == "TREE_SIZE_INVALID"


async def _export(audit: Audit, account: int = ACCOUNT, page_size: int = 5) -> list[str]:
    stub = audit.stub()
    lines: list[str] = []
    cursor = ""
    while True:
        page = await stub.ExportEvents(pb.ExportEventsRequest(format=evidence_pb2.EXPORT_FORMAT_JSONL, cursor=cursor,
                                                              page_size=page_size), metadata=principal(account))
        lines += page.data.splitlines()
        cursor = page.next_cursor
        if page.complete:
            return lines


async def _vkey(audit: Audit) -> str:
    cp = await audit.stub().GetCheckpoint(pb.GetCheckpointRequest(), metadata=principal(ACCOUNT))
    return cp.verifier_key


async def test_an_accounts_export_verifies_offline_and_resumes(make_audit: AuditFactory) -> None:
    audit = await make_audit()
    await _seed(audit, 11)
    lines = await _export(audit)
    vkey = await _vkey(audit)
    report = audit_verify.verify(lines, vkey)
    assert report.ok and report.events == 11 and report.accounts == {ACCOUNT}
    # Resuming later from the last cursor adds a new segment pinned to a newer checkpoint.
    stub = audit.stub()
    page = await stub.ExportEvents(pb.ExportEventsRequest(format=evidence_pb2.EXPORT_FORMAT_JSONL, page_size=100),
                                   metadata=principal(ACCOUNT))
    assert page.complete
    await _seed(audit, 3)
    more = await stub.ExportEvents(pb.ExportEventsRequest(format=evidence_pb2.EXPORT_FORMAT_JSONL,
                                                          cursor=page.next_cursor, page_size=100),
                                   metadata=principal(ACCOUNT))
    both = [*page.data.splitlines(), *more.data.splitlines()]
    report = audit_verify.verify(both, vkey)
    assert report.ok and report.events == 14 and report.segments == 2
    # The saved checkpoint of a segment pins it; a checkpoint the file is not pinned to is refused.
    assert audit_verify.verify(both, vkey, more.checkpoint.signed_note).ok
    mismatch = audit_verify.verify(lines, vkey, more.checkpoint.signed_note).problem
    assert mismatch is not None and mismatch.kind == "CHECKPOINT_MISMATCH"
    # CEF, for SIEMs.
    cef = await stub.ExportEvents(pb.ExportEventsRequest(format=evidence_pb2.EXPORT_FORMAT_CEF, page_size=3),
                                  metadata=principal(ACCOUNT))
    first = cef.data.splitlines()[0]
    assert first.startswith("CEF:0|SendSafe|SendSafe Audit|1|test.e0|test.e0|3|") and "externalId=" in first


# -- tampering --------------------------------------------------------------------------------------------


async def _tampered(make_audit: AuditFactory, how: str) -> tuple[Audit, list[event_pb2.Event], int]:
    """A log of ACCOUNT's and OTHER's events, checkpointed, then changed in the database by someone with
    superuser rights who switched the append-only triggers off. Returns the log, ACCOUNT's events and
    the sequence where the change shows."""
    audit = await make_audit()
    mine = await _seed(audit, 8)
    await audit.stub().GetCheckpoint(pb.GetCheckpointRequest(fresh=True), metadata=principal(ACCOUNT))
    conn = await audit.admin()
    try:
        seq = int(await conn.fetchval("SELECT sequence FROM events WHERE event_id = $1", mine[3].event_id))
        await conn.execute("SET session_replication_role = replica")  # no triggers for this session
        if how == "alter":
            body = bytes(await conn.fetchval("SELECT body FROM events WHERE sequence = $1", seq))
            ev = event_pb2.Event.FromString(body)
            ev.outcome = event_pb2.OUTCOME_SUCCESS
            ev.action = "test.nothing_to_see"
            await conn.execute("UPDATE events SET body = $2 WHERE sequence = $1", seq, ev.SerializeToString())
        elif how == "delete":
            await conn.execute("DELETE FROM events WHERE sequence = $1", seq)
        elif how == "insert":
            forged = event(ACCOUNT, "test.forged")
            forged.sequence, forged.account_sequence = seq, 4
            await conn.execute("UPDATE events SET sequence = -(sequence + 1) WHERE sequence >= $1", seq)
            await conn.execute("UPDATE events SET sequence = -sequence WHERE sequence < 0")
            await conn.execute(
                "INSERT INTO events (sequence, event_id, event_time, account_id, action, outcome, body, prev_hash,"
                " hash) VALUES ($1, $2, now(), $3, 'test.forged', 1, $4, '', '')",
                seq, forged.event_id, ACCOUNT, forged.SerializeToString())
        elif how == "reorder":
            nxt = int(await conn.fetchval("SELECT sequence FROM events WHERE event_id = $1", mine[4].event_id))
            await conn.execute(
                "UPDATE events e SET body = o.body, account_id = o.account_id FROM events o"
                " WHERE (e.sequence, o.sequence) IN (($1, $2), ($2, $1))", seq, nxt)
        else:
            raise AssertionError(how)
    finally:
        await conn.close()
    return audit, mine, seq


# The kind the API names and the kind the offline verifier names, for each tampering.
CASES = {
    "alter": (evidence_pb2.INTEGRITY_PROBLEM_KIND_ALTERED, "ALTERED"),
    "delete": (evidence_pb2.INTEGRITY_PROBLEM_KIND_REMOVED, "REMOVED"),
    "insert": (evidence_pb2.INTEGRITY_PROBLEM_KIND_INSERTED, "INSERTED"),
    "reorder": (evidence_pb2.INTEGRITY_PROBLEM_KIND_REORDERED, "REORDERED"),
}


@pytest.mark.parametrize("how", list(CASES))
async def test_tampering_with_stored_events_is_detected(make_audit: AuditFactory, how: str) -> None:
    audit, mine, seq = await _tampered(make_audit, how)
    api_kind, file_kind = CASES[how]
    # The API: a full verification names the first problem and where.
    result = await audit.stub().VerifyLog(pb.VerifyLogRequest(), metadata=STAFF)
    assert not result.ok
    assert (result.problem.kind, result.problem.sequence) == (api_kind, seq)
    # A proof for the changed event is refused rather than handed out.
    if how == "alter":
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await audit.stub().GetEventProof(pb.GetEventProofRequest(event_id=mine[3].event_id),
                                             metadata=principal(ACCOUNT))
        assert info.value.code() == grpc.StatusCode.DATA_LOSS and reason_of(info.value) == "INTEGRITY_VIOLATION"
    # The offline verifier, on the account's export made after the change, finds the same.
    report = audit_verify.verify(await _export(audit), await _vkey(audit))
    assert report.problem is not None and report.problem.kind == file_kind, report.problem
    assert report.events == 3  # the three events before the changed one verified


async def test_a_missing_tree_node_refuses_both_proofs_and_is_counted(make_audit: AuditFactory) -> None:
    """A node deleted from the stored tree: inclusion and consistency proofs are refused (DATA_LOSS), and each
    refusal counts in proof_violations, the figure the runbook's alert watches."""
    audit = await make_audit()
    mine = await _seed(audit, 8)
    md = principal(ACCOUNT)
    await audit.stub().GetCheckpoint(pb.GetCheckpointRequest(fresh=True), metadata=md)
    stats = audit.app.extras["service"].stats  # type: ignore[attr-defined]
    conn = await audit.admin()
    try:
        await conn.execute("SET session_replication_role = replica")  # past the append-only triggers
        assert await conn.execute("DELETE FROM merkle_nodes WHERE level = 0") != "DELETE 0"
    finally:
        await conn.close()
    before = stats.proof_violations
    for call in (
        audit.stub().GetEventProof(pb.GetEventProofRequest(event_id=mine[0].event_id), metadata=md),
        audit.stub().GetConsistencyProof(pb.GetConsistencyProofRequest(first_tree_size=3), metadata=md),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.DATA_LOSS and reason_of(info.value) == "INTEGRITY_VIOLATION"
    assert stats.proof_violations == before + 2


async def test_untouched_log_verifies(make_audit: AuditFactory) -> None:
    audit = await make_audit()
    await _seed(audit, 5)
    await audit.stub().GetCheckpoint(pb.GetCheckpointRequest(fresh=True), metadata=principal(ACCOUNT))
    await _seed(audit, 2)
    result = await audit.stub().VerifyLog(pb.VerifyLogRequest(), metadata=STAFF)
    assert result.ok and result.tree_size == 14 and result.checkpoints_checked >= 1


async def test_tampering_with_an_exported_file_is_detected(make_audit: AuditFactory) -> None:
    audit = await make_audit()
    await _seed(audit, 6)
    lines = await _export(audit, page_size=100)
    vkey = await _vkey(audit)
    assert audit_verify.verify(lines, vkey).ok
    head, events = lines[:1], lines[1:]

    import json

    def with_event(i: int, change: dict) -> list[str]:  # type: ignore[type-arg]
        obj = json.loads(events[i])
        obj["event"].update(change)
        return [*head, *events[:i], json.dumps(obj), *events[i + 1:]]

    def kind(file_lines: list[str]) -> tuple[str, int]:
        p = audit_verify.verify(file_lines, vkey).problem
        assert p is not None
        return p.kind, p.line

    assert kind(with_event(2, {"action": "test.harmless"})) == ("ALTERED", 4)
    forged = json.loads(events[2])
    forged["leaf_data"] = base64.b64encode(base64.b64decode(forged["leaf_data"]) + b"\x00").decode()
    assert kind([*head, *events[:2], json.dumps(forged), *events[3:]])[0] == "ALTERED"
    assert kind([*head, *events[:2], *events[3:]]) == ("REMOVED", 4)
    assert kind([*head, *events[:5]]) == ("REMOVED", 7)  # the last event cut off: the account head says 6
    assert kind([*head, *events[:3], events[2], *events[3:]]) == ("INSERTED", 5)
    assert kind([*head, events[0], events[2], events[1], *events[3:]]) == ("REORDERED", 3)
    other = (await _export(audit, OTHER, page_size=100))[1]
    assert kind([*head, *events[:2], other, *events[2:]]) == ("INSERTED", 4)
    bad_sig = [head[0].replace('"tree_size":', '"tree_size":', 1).replace("\\n12\\n", "\\n13\\n"), *events]
    assert kind(bad_sig)[0] in ("BAD_SIGNATURE", "ALTERED")
