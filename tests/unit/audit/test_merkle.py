"""The log's Merkle tree against an independent RFC 9162 implementation, and its signed notes."""

from __future__ import annotations

import base64
import hashlib
import os
import random
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services.audit.domain import merkle
from tests.unit.audit import rfc9162 as rfc

# Distinct entries (one of them empty): with equal neighbours a proof for one would rightly verify the other.
DATA = [b""] + [i.to_bytes(2, "big") + os.urandom(random.randint(0, 38)) for i in range(1, 80)]
LEAVES = [merkle.leaf_hash(d) for d in DATA]


def _grown_tree(chunks: list[int]) -> tuple[dict[merkle.Node, bytes], list[bytes]]:
    """Nodes stored by appending DATA in the given chunk sizes, and the root after each chunk."""
    size, frontier, nodes, roots = 0, list[bytes](), {}, []
    for c in chunks:
        a = merkle.append(size, frontier, LEAVES[size:size + c])
        size, frontier = a.size, a.frontier
        nodes.update({(lvl, i): h for lvl, i, h in a.nodes})
        roots.append(a.root)
    return nodes, roots


NODES, _ = _grown_tree([1, 2, 3, 1, 7, 16, 5, 9, 11, 25])  # 80 leaves, appended unevenly


def test_hashing_is_rfc9162() -> None:
    assert merkle.leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert merkle.node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    assert merkle.root_of([]) == rfc.MTH([]) == hashlib.sha256(b"").digest()


@pytest.mark.parametrize("chunks", [[80], [1] * 80, [3, 5, 8, 13, 21, 30], [64, 16]])
def test_roots_after_every_append_match_the_rfc(chunks: list[int]) -> None:
    _, roots = _grown_tree(chunks)
    sizes = [sum(chunks[: i + 1]) for i in range(len(chunks))]
    assert roots == [rfc.MTH(DATA[:n]) for n in sizes]


def test_inclusion_proofs_equal_the_rfc_path_and_verify_independently() -> None:
    for n in range(1, 81):
        root = rfc.MTH(DATA[:n])
        for m in range(n):
            path = merkle.resolve(merkle.inclusion_ranges(m, n), NODES)
            assert path == rfc.PATH(m, DATA[:n]), (m, n)
            assert rfc.verify_inclusion(m, n, LEAVES[m], path, root)
            assert merkle.verify_inclusion(m, n, LEAVES[m], path, root)
            if n > 1:  # any other leaf, or a wrong index, fails
                other = (m + 1) % n
                assert not rfc.verify_inclusion(m, n, LEAVES[other], path, root)
                assert not merkle.verify_inclusion(other, n, LEAVES[m], path, root) or path == rfc.PATH(other, DATA[:n])


def test_consistency_proofs_equal_the_rfc_proof_and_verify_independently() -> None:
    for n in range(1, 81):
        for m in range(1, n):
            proof = merkle.resolve(merkle.consistency_ranges(m, n), NODES)
            assert proof == rfc.PROOF(m, DATA[:n]), (m, n)
            assert rfc.verify_consistency(m, n, rfc.MTH(DATA[:m]), rfc.MTH(DATA[:n]), proof)
            assert merkle.verify_consistency(m, n, rfc.MTH(DATA[:m]), rfc.MTH(DATA[:n]), proof)
            # A different history (one leaf changed inside the first tree) is not consistent.
            forged = [*DATA[: m - 1], b"forged", *DATA[m:n]]
            assert not rfc.verify_consistency(m, n, rfc.MTH(forged[:m]), rfc.MTH(DATA[:n]), proof)


def test_proofs_read_few_stored_nodes() -> None:
    # A proof in a tree of a million leaves needs O(log^2 n) stored nodes at most, never the leaves.
    n = 1_000_003
    needed = merkle.nodes_for(merkle.inclusion_ranges(12_345, n))
    assert len(needed) <= 40
    assert len(merkle.nodes_for(merkle.consistency_ranges(777_777, n))) <= 60


def test_append_checks_its_frontier() -> None:
    with pytest.raises(ValueError):
        merkle.append(3, [b"x" * 32], [LEAVES[0]])


# -- signed notes ---------------------------------------------------------------------------------------

NAME = "sendsafe.test/audit"


def _signer() -> merkle.Signer:
    return merkle.Signer(NAME, Ed25519PrivateKey.generate())


def test_checkpoint_is_a_c2sp_signed_note() -> None:
    s = _signer()
    root = rfc.MTH(DATA[:7])
    note = s.sign(merkle.CheckpointBody(NAME, 7, root, datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)))
    text, sig_line = note.split("\n\n")
    assert text == f"{NAME}\n7\n{base64.b64encode(root).decode()}\ntime 2026-01-02T03:04:05.678000Z"
    # Signature line: em dash, key name, base64(4-byte key hash || 64-byte Ed25519 signature).
    dash, name, blob = sig_line.rstrip("\n").split(" ")
    raw = base64.b64decode(blob)
    assert dash == "\u2014" and name == NAME and len(raw) == 68
    assert raw[:4] == hashlib.sha256(NAME.encode() + b"\n\x01" + s.public).digest()[:4]
    Ed25519PublicKey.from_public_bytes(s.public).verify(raw[4:], (text + "\n").encode())
    encoded = base64.b64encode(b"\x01" + s.public).decode()
    assert s.vkey == f"{NAME}+{raw[:4].hex()}+{encoded}"
    opened = merkle.Verifier.parse(s.vkey).open(note)
    assert (opened.origin, opened.size, opened.root) == (NAME, 7, root)


def test_tampered_or_foreign_notes_do_not_open() -> None:
    s = _signer()
    note = s.sign(merkle.CheckpointBody(NAME, 7, rfc.MTH(DATA[:7]), datetime.now(UTC)))
    v = merkle.Verifier.parse(s.vkey)
    with pytest.raises(merkle.NoteError):
        v.open(note.replace(f"{NAME}\n7\n", f"{NAME}\n8\n"))
    with pytest.raises(merkle.NoteError):
        merkle.Verifier.parse(_signer().vkey).open(note)  # same name, another key
    with pytest.raises(merkle.NoteError):
        merkle.Verifier.parse(s.vkey.replace("+", "+0", 1))
    head = merkle.AccountHead(NAME, 42, 3, 7)
    signed_head = s.sign_text(head.text())
    assert merkle.AccountHead.parse(v.open_text(signed_head), NAME) == head
    with pytest.raises(merkle.NoteError):
        v.open(signed_head)  # an account head is never taken for a checkpoint
