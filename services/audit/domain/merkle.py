"""The log's Merkle tree and its signed checkpoints. Pure: no I/O.

Hashing is RFC 9162 (and RFC 6962) §2.1: a leaf is SHA-256(0x00 || data), an interior node
SHA-256(0x01 || left || right), the tree of n leaves splits at the largest power of two below n.

Storage model: every *perfect* subtree that is complete is a node `(level, index)` covering leaves
[index * 2**level, (index + 1) * 2**level); level 0 are the leaf hashes. A tree of any size is then a
right fold over a few perfect nodes (its "frontier" for the whole tree; `range_nodes` for any range the
RFC's recursion visits), so appends touch O(log n) hashes and a proof reads O(log² n) stored nodes at
worst, never the leaves.

Checkpoints are C2SP signed notes (https://c2sp.org/signed-note, https://c2sp.org/tlog-checkpoint):

    <origin>\n<tree size>\n<base64 root hash>\ntime <RFC 3339 UTC>\n\n— <key name> <base64(key hash || sig)>\n

signed with Ed25519; the key hash is SHA-256(name || "\\n" || 0x01 || public key)[:4].
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

EMPTY_ROOT = hashlib.sha256(b"").digest()
HASH_SIZE = 32
Node = tuple[int, int]  # (level, index)


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two strictly below n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


# -- the tree's shape -------------------------------------------------------------------------------------


def range_nodes(start: int, end: int) -> list[Node]:
    """Perfect nodes covering [start, end), largest first. `start` must be aligned to a power of two at
    least end - start, which holds for the whole tree and every range the RFC's recursion splits off."""
    out: list[Node] = []
    while start < end:
        level = (end - start).bit_length() - 1
        out.append((level, start >> level))
        start += 1 << level
    return out


def fold(hashes: Sequence[bytes]) -> bytes:
    """The root of a range from its perfect nodes' hashes (largest first)."""
    if not hashes:
        return EMPTY_ROOT
    h = hashes[-1]
    for left in reversed(hashes[:-1]):
        h = node_hash(left, h)
    return h


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose roots form RFC 9162 PATH(index, D[size]), bottom-up."""
    if not 0 <= index < size:
        raise ValueError("leaf index outside the tree")
    out: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = split_point(hi - lo)
        if index - lo < k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
    out.reverse()
    return out


def consistency_ranges(first: int, second: int) -> list[tuple[int, int]]:
    """The leaf ranges whose roots form RFC 9162 PROOF(first, D[second]), in proof order."""
    if not 0 < first <= second:
        raise ValueError("need 0 < first <= second")
    out: list[tuple[int, int]] = []
    if first == second:
        return out

    def sub(m: int, lo: int, hi: int, complete: bool) -> None:
        n = hi - lo
        if m == n:
            if not complete:
                out.append((lo, hi))
            return
        k = split_point(n)
        if m <= k:
            sub(m, lo, lo + k, complete)
            out.append((lo + k, hi))
        else:
            sub(m - k, lo + k, hi, False)
            out.append((lo, lo + k))

    sub(first, 0, second, True)
    return out


def nodes_for(ranges: Iterable[tuple[int, int]]) -> set[Node]:
    need: set[Node] = set()
    for lo, hi in ranges:
        need.update(range_nodes(lo, hi))
    return need


def resolve(ranges: Sequence[tuple[int, int]], stored: dict[Node, bytes]) -> list[bytes]:
    """Root hashes of `ranges` from stored perfect nodes; KeyError names a node that is missing."""
    return [fold([stored[n] for n in range_nodes(lo, hi)]) for lo, hi in ranges]


# -- appending --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Appended:
    size: int
    frontier: list[bytes]  # perfect-node hashes of the whole tree, largest first
    nodes: list[tuple[int, int, bytes]]  # new (level, index, hash), leaves included
    root: bytes


def append(size: int, frontier: Sequence[bytes], leaves: Sequence[bytes]) -> Appended:
    """Add leaf hashes to a tree of `size` leaves given its frontier. O(1) amortized per leaf."""
    levels = [level for level, _ in range_nodes(0, size)]
    if len(levels) != len(frontier):
        raise ValueError("frontier does not match the tree size")
    stack = list(zip(levels, frontier, strict=True))
    new: list[tuple[int, int, bytes]] = []
    for h in leaves:
        index = size
        size += 1
        stack.append((0, h))
        new.append((0, index, h))
        while len(stack) >= 2 and stack[-1][0] == stack[-2][0]:
            level, right = stack.pop()
            _, left = stack.pop()
            parent = node_hash(left, right)
            stack.append((level + 1, parent))
            new.append((level + 1, index >> (level + 1), parent))
    hashes = [h for _, h in stack]
    return Appended(size, hashes, new, fold(hashes))


def root_of(leaves: Sequence[bytes]) -> bytes:
    """The root of a whole tree from its leaf hashes, in O(n)."""
    return append(0, [], leaves).root


# -- verifying proofs (RFC 9162 §2.1.3.2 and §2.1.4.2) ------------------------------------------------------


def verify_inclusion(index: int, size: int, leaf: bytes, path: Sequence[bytes], root: bytes) -> bool:
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]) -> bool:
    if not 0 < first <= second:
        return False
    if first == second:
        return not proof and first_root == second_root
    if not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0


# -- signed checkpoints -----------------------------------------------------------------------------------

_SIG_PREFIX = "\u2014 "


class NoteError(ValueError):
    """A checkpoint that is malformed or whose signature does not verify."""


@dataclass(frozen=True)
class CheckpointBody:
    origin: str
    size: int
    root: bytes
    time: datetime

    def text(self) -> str:
        stamp = self.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\ntime {stamp}\n"


def key_hash(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n\x01" + public).digest()[:4]


def check_key_name(name: str) -> None:
    if not name or any(c.isspace() or c == "+" for c in name):
        raise ValueError("a key name is non-empty and has no spaces or '+'")


class Signer:
    """Signs checkpoints with an Ed25519 key named `name` (the log's origin)."""

    def __init__(self, name: str, key: Ed25519PrivateKey) -> None:
        check_key_name(name)
        self.name = name
        self._key = key
        self.public = key.public_key().public_bytes_raw()
        self.key_id = key_hash(name, self.public)

    @classmethod
    def from_seed(cls, name: str, seed: bytes) -> Signer:
        return cls(name, Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def vkey(self) -> str:
        """The C2SP verifier key: <name>+<hex key hash>+<base64(0x01 || public key)>."""
        encoded = base64.b64encode(b"\x01" + self.public).decode()
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    def sign(self, body: CheckpointBody) -> str:
        if body.origin != self.name:
            raise ValueError("the checkpoint's origin must be the key name")
        return self.sign_text(body.text())

    def sign_text(self, text: str) -> str:
        """A signed note of any text (lines ending in newline)."""
        if not text.endswith("\n") or "\n\n" in text:
            raise ValueError("note text is non-empty lines, each ending in a newline")
        sig = self._key.sign(text.encode())
        return f"{text}\n{_SIG_PREFIX}{self.name} {base64.b64encode(self.key_id + sig).decode()}\n"


@dataclass(frozen=True)
class Verifier:
    name: str
    key_id: bytes
    public: bytes

    @classmethod
    def parse(cls, vkey: str) -> Verifier:
        try:
            name, hexid, b64 = vkey.strip().split("+", 2)
            raw = base64.b64decode(b64, validate=True)
            key_id = bytes.fromhex(hexid)
        except ValueError as exc:
            raise NoteError("malformed verifier key") from exc
        if len(raw) != 33 or raw[0] != 1 or len(key_id) != 4 or key_hash(name, raw[1:]) != key_id:
            raise NoteError("verifier key is not an Ed25519 key for its name")
        return cls(name, key_id, raw[1:])

    def open(self, note: str) -> CheckpointBody:
        """The checkpoint a signed note states, if this key signed it."""
        body = parse_body(self.open_text(note))
        if body.origin != self.name:
            raise NoteError("the checkpoint is not of this log")
        return body

    def open_text(self, note: str) -> str:
        """The text of a signed note, if this key signed it."""
        text, sep, sigs = note.rpartition("\n\n")
        if not sep or not text:
            raise NoteError("not a signed note")
        text += "\n"
        for line in sigs.splitlines():
            if not line.startswith(_SIG_PREFIX):
                raise NoteError("malformed signature line")
            name, _, b64 = line[len(_SIG_PREFIX):].partition(" ")
            if name != self.name:
                continue
            try:
                raw = base64.b64decode(b64, validate=True)
            except ValueError as exc:
                raise NoteError("malformed signature") from exc
            if len(raw) != 68 or raw[:4] != self.key_id:
                continue
            try:
                Ed25519PublicKey.from_public_bytes(self.public).verify(raw[4:], text.encode())
            except InvalidSignature:
                raise NoteError("signature does not verify") from None
            return text
        raise NoteError(f"no signature by {self.name}")


def parse_body(text: str) -> CheckpointBody:
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise NoteError("malformed checkpoint")
    origin, size_s, root_s = lines[0], lines[1], lines[2]
    if not size_s.isdigit():
        raise NoteError("malformed tree size")
    try:
        root = base64.b64decode(root_s, validate=True)
    except ValueError as exc:
        raise NoteError("malformed root hash") from exc
    if len(root) != HASH_SIZE:
        raise NoteError("malformed root hash")
    when = None
    for ext in lines[3:-1]:
        if ext.startswith("time "):
            try:
                when = datetime.strptime(ext[5:], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
            except ValueError as exc:
                raise NoteError("malformed time") from exc
    if when is None:
        raise NoteError("checkpoint without a time")
    return CheckpointBody(origin, int(size_s), root, when)


# -- account heads ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccountHead:
    """A signed statement that an account's feed held `count` events in the tree of `tree_size`: what lets
    an account's export prove that none of its events were left out at the end."""

    origin: str
    account_id: int
    count: int
    tree_size: int

    def text(self) -> str:
        return f"{self.origin}/account-head\n{self.account_id}\n{self.count}\n{self.tree_size}\n"

    @classmethod
    def parse(cls, text: str, origin: str) -> AccountHead:
        lines = text.split("\n")
        if len(lines) != 5 or lines[0] != f"{origin}/account-head" or not all(x.isdigit() for x in lines[1:4]):
            raise NoteError("not an account head of this log")
        return cls(origin, int(lines[1]), int(lines[2]), int(lines[3]))
