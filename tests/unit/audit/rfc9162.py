"""An independent RFC 9162 (Certificate Transparency 2.0) Merkle tree, written from the RFC's text for the
tests: §2.1.1 MTH, §2.1.3.1 PATH, §2.1.4.1 PROOF/SUBPROOF by their recursive definitions, and the
verification algorithms of §2.1.3.2 and §2.1.4.2 step by step. It shares no code with services.audit."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def HASH(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def k_of(n: int) -> int:
    """"the largest power of two smaller than n (i.e., k < n <= 2k)" """
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def MTH(D: Sequence[bytes]) -> bytes:
    n = len(D)
    if n == 0:
        return HASH(b"")
    if n == 1:
        return HASH(b"\x00" + D[0])
    k = k_of(n)
    return HASH(b"\x01" + MTH(D[:k]) + MTH(D[k:]))


def PATH(m: int, D: Sequence[bytes]) -> list[bytes]:
    n = len(D)
    if n == 1:
        return []
    k = k_of(n)
    if m < k:
        return [*PATH(m, D[:k]), MTH(D[k:])]
    return [*PATH(m - k, D[k:]), MTH(D[:k])]


def SUBPROOF(m: int, D: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(D)
    if m == n:
        return [] if b else [MTH(D)]
    k = k_of(n)
    if m <= k:
        return [*SUBPROOF(m, D[:k], b), MTH(D[k:])]
    return [*SUBPROOF(m - k, D[k:], False), MTH(D[:k])]


def PROOF(m: int, D: Sequence[bytes]) -> list[bytes]:
    return SUBPROOF(m, D, True)


def verify_inclusion(leaf_index: int, tree_size: int, leaf_hash: bytes, inclusion_path: Sequence[bytes],
                     root_hash: bytes) -> bool:
    """§2.1.3.2, numbered steps as in the RFC."""
    if leaf_index >= tree_size:  # 1
        return False
    fn, sn = leaf_index, tree_size - 1  # 2
    r = leaf_hash  # 3
    for p in inclusion_path:  # 4
        if sn == 0:  # 4a
            return False
        if fn % 2 == 1 or fn == sn:  # 4b
            r = HASH(b"\x01" + p + r)
            if fn % 2 == 0:
                while not (fn % 2 == 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            r = HASH(b"\x01" + r + p)
        fn >>= 1  # 4c
        sn >>= 1
    return sn == 0 and r == root_hash  # 5


def verify_consistency(first: int, second: int, first_hash: bytes, second_hash: bytes,
                       consistency_path: Sequence[bytes]) -> bool:
    """§2.1.4.2, numbered steps as in the RFC (for 0 < first < second)."""
    path = list(consistency_path)
    if not path:  # 1
        return False
    if first & (first - 1) == 0:  # 2: first is an exact power of 2
        path = [first_hash, *path]
    fn, sn = first - 1, second - 1  # 3
    while fn % 2 == 1:  # 4
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # 5
    for c in path[1:]:  # 6
        if sn == 0:  # 6a
            return False
        if fn % 2 == 1 or fn == sn:  # 6b
            fr = HASH(b"\x01" + c + fr)
            sr = HASH(b"\x01" + c + sr)
            if fn % 2 == 0:
                while not (fn % 2 == 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            sr = HASH(b"\x01" + sr + c)
        fn >>= 1  # 6c
        sn >>= 1
    return fr == first_hash and sr == second_hash and sn == 0  # 7
