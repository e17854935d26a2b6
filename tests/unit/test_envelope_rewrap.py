"""svckit.envelope_rewrap: the key version read from a blob, the per-version counts a pass reports, and no
call to the keys service for batches already under the newest version it has seen."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from svckit.envelope import Envelope, KeysRefused, aad_for
from svckit.envelope_rewrap import kek_version, rewrap_all


class VersionedSource:
    """Wrapped keys in the keys service's layout (format 2, version, account, rest); rewrap moves a key to
    `current` by rewriting its version field."""

    def __init__(self) -> None:
        self.current = 1
        self.keys: dict[bytes, bytes] = {}
        self.calls = 0

    def _wrap(self, account_id: int, version: int, key: bytes) -> bytes:
        wrapped = struct.pack(">BIq", 2, version, account_id) + key[:8]
        self.keys[wrapped] = key
        return wrapped

    async def generate(self, account_id: int) -> tuple[bytes, bytes]:
        key = bytes(range(32))
        return key, self._wrap(account_id, self.current, key)

    async def decrypt(self, account_id: int, wrapped_key: bytes) -> bytes:
        return self.keys[wrapped_key]

    async def rewrap(self, account_id: int, wrapped_keys: Sequence[bytes]) -> list[bytes | str]:
        self.calls += 1
        return [self._wrap(account_id, self.current, self.keys[w]) for w in wrapped_keys]


async def test_counts_per_version_and_skips_batches_already_current() -> None:
    src = VersionedSource()
    env = Envelope(src, ttl_seconds=0)  # a data key per row
    table = {row: (5, await env.encrypt(5, aad_for(5, "m", str(row)), b"x")) for row in range(10)}
    assert {kek_version(b) for _, b in table.values()} == {1}
    assert kek_version(b"\x01\x00") == 0 and kek_version(b"\x01\x00\x08wk:12345") == 0  # not a keys format

    async def fetch(after: int | None, limit: int) -> list[tuple[int, int, bytes]]:
        return [(k, a, b) for k, (a, b) in sorted(table.items()) if after is None or k > after][:limit]

    async def save(updates: list[tuple[int, bytes]]) -> None:
        for row, blob in updates:
            table[row] = (5, blob)

    src.current = 2
    moved = await rewrap_all(env, fetch, save, batch=3)
    assert (moved.changed, moved.versions) == (10, {(5, 2): 10})
    assert src.calls == 4  # every batch held version-1 blobs
    src.calls = 0
    again = await rewrap_all(env, fetch, save, batch=3)
    assert (again.changed, again.versions, src.calls) == (0, {(5, 2): 10}, 1)  # one call learns version 2
    for row, (_, blob) in table.items():
        assert await Envelope(src).decrypt(5, aad_for(5, "m", str(row)), blob) == b"x"


class ClosingSource(VersionedSource):
    """The keys service for an account whose destruction is scheduled: no rewrap at all for it."""

    def __init__(self, closing: int) -> None:
        super().__init__()
        self.closing = closing

    async def rewrap(self, account_id: int, wrapped_keys: Sequence[bytes]) -> list[bytes | str]:
        if account_id == self.closing:
            self.calls += 1
            raise KeysRefused("scheduled for destruction", reason="KEYS_PENDING_DESTRUCTION")
        return await super().rewrap(account_id, wrapped_keys)


async def test_an_account_whose_keys_refuse_is_skipped_counted_and_asked_once() -> None:
    src = ClosingSource(closing=5)
    env = Envelope(src, ttl_seconds=0)
    table = {row: (5 if row % 2 else 6, b"") for row in range(10)}
    for row, (account, _) in table.items():
        table[row] = (account, await env.encrypt(account, aad_for(account, "m", str(row)), b"x"))

    async def fetch(after: int | None, limit: int) -> list[tuple[int, int, bytes]]:
        return [(k, a, b) for k, (a, b) in sorted(table.items()) if after is None or k > after][:limit]

    async def save(updates: list[tuple[int, bytes]]) -> None:
        for row, blob in updates:
            table[row] = (table[row][0], blob)

    src.current = 2
    src.calls = 0
    moved = await rewrap_all(env, fetch, save, batch=4)
    assert (moved.changed, moved.skipped, moved.failed) == (5, 5, 0)
    assert moved.refused == {5: "KEYS_PENDING_DESTRUCTION"}
    assert moved.versions == {(6, 2): 5, (5, 1): 5}  # the skipped rows still counted where they are
    assert src.calls == 1 + 3  # the closing account asked once; account 6 in each of the 3 batches
