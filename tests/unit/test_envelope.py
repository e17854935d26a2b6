"""svckit.envelope against a fake data-key source: format, binding, caching, coalescing, failures."""

from __future__ import annotations

import asyncio
import os
import struct
from dataclasses import dataclass, field

import grpc
import pytest

from sendsafe.keys.v1 import keys_service_pb2
from svckit import envelope, envelope_rewrap
from svckit.envelope import DecryptFailed, Envelope, KeysRefused, KeysStubSource, KeysUnavailable, aad_for
from svckit.errors import FailedPrecondition


@dataclass
class FakeSource:
    """Wrapped keys are random handles; a handle unwraps only for the account it was generated for."""

    check_account: bool = True
    gate: asyncio.Event | None = None
    fail_next: int = 0
    keys: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)
    generated: int = 0
    decrypted: int = 0
    retired: set[bytes] = field(default_factory=set)
    rewrap_calls: list[list[bytes]] = field(default_factory=list)

    async def generate(self, account_id: int) -> tuple[bytes, bytes]:
        self.generated += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next -= 1
            raise KeysUnavailable()
        key, handle = os.urandom(32), b"wk:" + os.urandom(20)
        self.keys[handle] = (account_id, key)
        return key, handle

    async def decrypt(self, account_id: int, wrapped_key: bytes) -> bytes:
        self.decrypted += 1
        if self.gate is not None:
            await self.gate.wait()
        owner, key = self.keys.get(wrapped_key, (None, b""))
        if owner is None or (self.check_account and owner != account_id):
            raise DecryptFailed()
        return key

    async def rewrap(self, account_id: int, wrapped_keys: list[bytes]) -> list[bytes | str]:
        """"Rotation" gives every handle a new form once; handles marked retired cannot move."""
        self.rewrap_calls.append(list(wrapped_keys))
        out: list[bytes | str] = []
        for handle in wrapped_keys:
            owner, key = self.keys.get(handle, (None, b""))
            if owner != account_id or handle in self.retired:
                out.append("KEY_VERSION_RETIRED" if handle in self.retired else "DECRYPT_FAILED")
            elif handle.startswith(b"v2:"):
                out.append(handle)
            else:
                fresh = b"v2:" + handle
                self.keys[fresh] = (owner, key)
                out.append(fresh)
        return out


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


AAD = aad_for(7, "message", "m-1")


async def test_round_trip_and_blob_layout() -> None:
    src = FakeSource()
    env = Envelope(src)
    blob = await env.encrypt(7, AAD, b"hello world")
    assert blob[0] == envelope.BLOB_VERSION
    (wlen,) = struct.unpack(">H", blob[1:3])
    wrapped = blob[3 : 3 + wlen]
    assert wrapped in src.keys
    assert len(blob) == 3 + wlen + 12 + len(b"hello world") + 16
    assert b"hello world" not in blob
    assert await env.decrypt(7, AAD, blob) == b"hello world"
    # A separate process (no cache) decrypts through the source.
    other = Envelope(src)
    assert await other.decrypt(7, AAD, blob) == b"hello world"
    assert src.decrypted == 1


async def test_empty_plaintext_round_trips() -> None:
    env = Envelope(FakeSource())
    assert await env.decrypt(7, AAD, await env.encrypt(7, AAD, b"")) == b""


async def test_wrong_aad_fails() -> None:
    env = Envelope(FakeSource())
    blob = await env.encrypt(7, AAD, b"secret body")
    for aad in (aad_for(7, "message", "m-2"), aad_for(7, "draft", "m-1"), aad_for(8, "message", "m-1"), b""):
        with pytest.raises(DecryptFailed) as info:
            await env.decrypt(7, aad, blob)
        assert info.value.reason == "DECRYPT_FAILED"
        assert isinstance(info.value, FailedPrecondition)


async def test_other_account_fails_at_the_source() -> None:
    src = FakeSource()
    blob = await Envelope(src).encrypt(7, AAD, b"secret body")
    with pytest.raises(DecryptFailed):
        await Envelope(src).decrypt(8, AAD, blob)


async def test_other_account_fails_even_if_the_key_unwraps() -> None:
    # The account id is in the GCM associated data, so a blob moved to another account fails even when the
    # data key is available (e.g. already cached) and the caller's aad was copied along.
    src = FakeSource(check_account=False)
    env = Envelope(src)
    blob = await env.encrypt(7, AAD, b"secret body")
    with pytest.raises(DecryptFailed):
        await env.decrypt(8, AAD, blob)
    with pytest.raises(DecryptFailed):
        await Envelope(src).decrypt(8, AAD, blob)


async def test_cached_key_is_not_shared_across_accounts() -> None:
    src = FakeSource()
    env = Envelope(src)
    blob = await env.encrypt(7, AAD, b"x")
    with pytest.raises(DecryptFailed):
        await env.decrypt(8, AAD, blob)
    assert src.decrypted == 1  # it asked the source for account 8 rather than using account 7's cache entry


async def test_every_tampered_byte_fails() -> None:
    src = FakeSource()
    env = Envelope(src)
    blob = await env.encrypt(7, AAD, b"attack at dawn")
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(DecryptFailed):
            await env.decrypt(7, AAD, bytes(bad))


@pytest.mark.parametrize(
    "blob",
    [b"", b"\x01", b"\x01\x00", b"\x02\x00\x01x" + b"\x00" * 40, b"\x01\x00\x00" + b"\x00" * 40, b"\x01\xff\xff"],
)
async def test_malformed_blobs_fail(blob: bytes) -> None:
    src = FakeSource()
    with pytest.raises(DecryptFailed):
        await Envelope(src).decrypt(7, AAD, blob)
    assert src.decrypted == 0  # structurally invalid: no call to the keys service


async def test_error_messages_carry_no_secrets() -> None:
    src = FakeSource()
    env = Envelope(src)
    blob = await env.encrypt(7, AAD, b"TOPSECRET")
    ((_, key),) = src.keys.values()
    with pytest.raises(DecryptFailed) as info:
        await env.decrypt(7, b"other", blob)
    text = f"{info.value} {info.value!r} {info.value.metadata}"
    assert "TOPSECRET" not in text and key.hex() not in text and str(key) not in text


def test_aad_is_canonical_and_unambiguous() -> None:
    assert aad_for(1, "ab", "c") != aad_for(1, "a", "bc")
    assert aad_for(1, "message", "1") != aad_for(2, "message", "1")
    assert aad_for(1, "message", "1") == aad_for(1, "message", "1")
    assert aad_for(-1, "t", "") != aad_for(1, "t", "")
    with pytest.raises(ValueError):
        aad_for(1, "", "x")


async def test_data_key_reused_until_ttl() -> None:
    src, clock = FakeSource(), Clock()
    env = Envelope(src, ttl_seconds=60, clock=clock)
    blobs = [await env.encrypt(7, AAD, b"m") for _ in range(100)]
    assert src.generated == 1
    assert len({b[: 3 + struct.unpack(">H", b[1:3])[0]] for b in blobs}) == 1
    assert len({b[-28:-16] for b in blobs}) == 100  # fresh nonce each time
    clock.now += 61
    await env.encrypt(7, AAD, b"m")
    assert src.generated == 2
    # Other accounts get their own key.
    await env.encrypt(8, aad_for(8, "message", "1"), b"m")
    assert src.generated == 3


async def test_data_key_retired_after_message_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envelope, "MAX_MESSAGES_PER_KEY", 3)
    src = FakeSource()
    env = Envelope(src)
    for _ in range(3):
        await env.encrypt(7, AAD, b"m")
    assert src.generated == 1
    await env.encrypt(7, AAD, b"m")
    assert src.generated == 2
    # A batch larger than the limit is split across keys; every item still decrypts.
    items = [(aad_for(7, "message", str(i)), f"body {i}".encode()) for i in range(7)]
    blobs = await env.encrypt_many(7, items)
    assert src.generated == 5  # chunks of 3, 3, 1: none fits on a used key, each needs a fresh one
    for (aad, pt), blob in zip(items, blobs, strict=True):
        assert await Envelope(src).decrypt(7, aad, blob) == pt


async def test_encrypt_many_uses_one_key() -> None:
    src = FakeSource()
    env = Envelope(src)
    items = [(aad_for(7, "message", str(i)), f"body {i}".encode()) for i in range(1000)]
    blobs = await env.encrypt_many(7, items)
    assert src.generated == 1
    fresh = Envelope(src)
    assert [await fresh.decrypt(7, aad, b) for (aad, _), b in zip(items, blobs, strict=True)] == [p for _, p in items]
    assert src.decrypted == 1
    assert await env.encrypt_many(7, []) == []


async def test_decrypt_cache_ttl() -> None:
    src, clock = FakeSource(), Clock()
    blob = await Envelope(src).encrypt(7, AAD, b"m")
    env = Envelope(src, ttl_seconds=10, clock=clock)
    await env.decrypt(7, AAD, blob)
    await env.decrypt(7, AAD, blob)
    assert src.decrypted == 1
    clock.now += 11
    await env.decrypt(7, AAD, blob)
    assert src.decrypted == 2


async def test_caches_are_bounded_lru() -> None:
    src = FakeSource()
    env = Envelope(src, max_entries=2)
    blobs = {a: await env.encrypt(a, aad_for(a, "m", "1"), b"x") for a in (1, 2, 3)}
    assert src.generated == 3
    await env.encrypt(3, aad_for(3, "m", "1"), b"x")
    await env.encrypt(2, aad_for(2, "m", "1"), b"x")
    assert src.generated == 3
    await env.encrypt(1, aad_for(1, "m", "1"), b"x")  # evicted as least recently used
    assert src.generated == 4
    assert len(env._current) <= 2 and len(env._unwrapped) <= 2
    for a, blob in blobs.items():
        assert await env.decrypt(a, aad_for(a, "m", "1"), blob) == b"x"


async def test_concurrent_misses_coalesce() -> None:
    gate = asyncio.Event()
    src = FakeSource(gate=gate)
    env = Envelope(src)
    tasks = [asyncio.create_task(env.encrypt(7, AAD, b"m")) for _ in range(50)]
    await asyncio.sleep(0)
    gate.set()
    blobs = await asyncio.gather(*tasks)
    assert src.generated == 1

    src.gate = gate = asyncio.Event()
    reader = Envelope(src)
    tasks = [asyncio.create_task(reader.decrypt(7, AAD, b)) for b in blobs]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*tasks) == [b"m"] * 50
    assert src.decrypted == 1


async def test_cancelled_waiter_does_not_break_others() -> None:
    gate = asyncio.Event()
    src = FakeSource(gate=gate)
    env = Envelope(src)
    first = asyncio.create_task(env.encrypt(7, AAD, b"a"))
    second = asyncio.create_task(env.encrypt(7, AAD, b"b"))
    await asyncio.sleep(0)
    first.cancel()
    gate.set()
    blob = await second
    assert first.cancelled()
    assert await env.decrypt(7, AAD, blob) == b"b"
    assert src.generated == 1


async def test_source_failures_are_not_cached() -> None:
    src = FakeSource(fail_next=1)
    env = Envelope(src)
    with pytest.raises(KeysUnavailable):
        await env.encrypt(7, AAD, b"m")
    blob = await env.encrypt(7, AAD, b"m")
    assert await env.decrypt(7, AAD, blob) == b"m"
    assert src.generated == 2


async def test_clear_forgets_keys() -> None:
    src = FakeSource()
    env = Envelope(src)
    b7 = await env.encrypt(7, AAD, b"m")
    b8 = await env.encrypt(8, aad_for(8, "m", "1"), b"m")
    env.clear(7)
    await env.decrypt(8, aad_for(8, "m", "1"), b8)
    assert src.decrypted == 0
    await env.decrypt(7, AAD, b7)
    assert src.decrypted == 1
    await env.encrypt(7, AAD, b"m")
    assert src.generated == 3
    env.clear()
    await env.decrypt(8, aad_for(8, "m", "1"), b8)
    assert src.decrypted == 2


async def test_clear_during_generate_does_not_cache_the_result() -> None:
    gate = asyncio.Event()
    src = FakeSource(gate=gate)
    env = Envelope(src)
    task = asyncio.create_task(env.encrypt(7, AAD, b"m"))
    await asyncio.sleep(0)
    env.clear(7)
    gate.set()
    await task
    assert 7 not in env._current


# -- rewrap -----------------------------------------------------------------------------------------------


async def test_rewrap_many_swaps_only_the_wrapped_key() -> None:
    src = FakeSource()
    env = Envelope(src)
    aads = [aad_for(7, "message", f"m-{i}") for i in range(5)]
    blobs = await env.encrypt_many(7, [(a, f"body {i}".encode()) for i, a in enumerate(aads)])
    outcomes = await env.rewrap_many(7, [*blobs, b"junk"])
    assert len(src.rewrap_calls) == 1 and len(src.rewrap_calls[0]) == 1  # one data key: one rewrap
    assert [o.changed for o in outcomes] == [True] * 5 + [False]
    assert outcomes[-1].error_reason == "DECRYPT_FAILED" and outcomes[-1].blob == b"junk"
    for old, new in zip(blobs, outcomes, strict=False):
        assert new.blob.endswith(old[-(12 + 6 + 16) :])  # same nonce and ciphertext
    fresh = Envelope(src)
    for i, (a, o) in enumerate(zip(aads, outcomes, strict=False)):
        assert await fresh.decrypt(7, a, o.blob) == f"body {i}".encode()
    again = await env.rewrap_many(7, [o.blob for o in outcomes[:5]])
    assert [o.changed for o in again] == [False] * 5 and [o.blob for o in again] == [o.blob for o in outcomes[:5]]


async def test_rewrap_all_is_batched_resumable_and_counts_failures() -> None:
    src = FakeSource()
    env = Envelope(src, ttl_seconds=0)  # a new data key per encryption: many distinct keys
    table: dict[int, tuple[int, bytes]] = {}
    for row in range(1, 26):
        account = 7 if row % 2 else 8
        table[row] = (account, await env.encrypt(account, aad_for(account, "m", str(row)), f"r{row}".encode()))
    retired_row = 13
    src.retired.add(envelope._parse(table[retired_row][1])[0])

    async def fetch(after: int | None, limit: int) -> list[tuple[int, int, bytes]]:
        rows = [(k, a, b) for k, (a, b) in sorted(table.items()) if after is None or k > after]
        return rows[:limit]

    async def save(updates: list[tuple[int, bytes]]) -> None:
        for row, blob in updates:
            table[row] = (table[row][0], blob)

    seen: list[int] = []

    async def progress(p: envelope_rewrap.RewrapProgress) -> None:
        seen.append(p.scanned)
        if p.scanned == 10:
            raise RuntimeError("crash after the second batch")

    with pytest.raises(RuntimeError):
        await envelope_rewrap.rewrap_all(env, fetch, save, batch=5, on_progress=progress)
    assert seen == [5, 10]
    resumed = await envelope_rewrap.rewrap_all(env, fetch, save, start=10, batch=5)
    assert (resumed.cursor, resumed.scanned, resumed.changed, resumed.failed) == (25, 15, 14, 1)
    assert resumed.failures == {"KEY_VERSION_RETIRED": 1}
    for row, (account, blob) in table.items():
        moved = envelope._parse(blob)[0].startswith(b"v2:")
        assert moved == (row != retired_row)
        assert await Envelope(src).decrypt(account, aad_for(account, "m", str(row)), blob) == f"r{row}".encode()


# -- the gRPC adapter ----------------------------------------------------------------------------------


def _rpc_error(code: grpc.StatusCode, reason: str = "") -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata()
    if reason:
        from google.protobuf import any_pb2
        from google.rpc import error_details_pb2, status_pb2

        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="sendsafe.io"))
        trailing.add("grpc-status-details-bin", status_pb2.Status(code=9, details=[detail]).SerializeToString())
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details="boom")


class FakeStub:
    def __init__(
        self, error: grpc.StatusCode | None = None, plaintext: bytes = b"k" * 32, reason: str = ""
    ) -> None:
        self.error = error
        self.reason = reason
        self.plaintext = plaintext
        self.requests: list[object] = []

    async def GenerateDataKey(self, request: keys_service_pb2.GenerateDataKeyRequest) -> object:
        self.requests.append(request)
        if self.error:
            raise _rpc_error(self.error, self.reason)
        return keys_service_pb2.GenerateDataKeyResponse(plaintext=self.plaintext, wrapped_key=b"w", key_version=1)

    async def DecryptDataKey(self, request: keys_service_pb2.DecryptDataKeyRequest) -> object:
        self.requests.append(request)
        if self.error:
            raise _rpc_error(self.error, self.reason)
        return keys_service_pb2.DecryptDataKeyResponse(plaintext=self.plaintext, key_version=1)


async def test_stub_source_round_trip() -> None:
    stub = FakeStub()
    source = KeysStubSource(stub)  # type: ignore[arg-type]
    assert await source.generate(5) == (b"k" * 32, b"w")
    assert await source.decrypt(5, b"w") == b"k" * 32
    assert [r.account_id for r in stub.requests] == [5, 5]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, DecryptFailed),
        (grpc.StatusCode.FAILED_PRECONDITION, DecryptFailed),
        (grpc.StatusCode.UNAVAILABLE, KeysUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, KeysUnavailable),
        (grpc.StatusCode.PERMISSION_DENIED, grpc.aio.AioRpcError),
    ],
)
async def test_stub_source_maps_errors(code: grpc.StatusCode, expected: type[Exception]) -> None:
    source = KeysStubSource(FakeStub(error=code))  # type: ignore[arg-type]
    with pytest.raises(expected):
        await source.decrypt(5, b"w")


async def test_stub_source_generate_errors() -> None:
    with pytest.raises(KeysUnavailable):
        await KeysStubSource(FakeStub(error=grpc.StatusCode.UNAVAILABLE)).generate(5)  # type: ignore[arg-type]
    with pytest.raises(KeysUnavailable):
        await KeysStubSource(FakeStub(plaintext=b"short")).generate(5)  # type: ignore[arg-type]
    with pytest.raises(DecryptFailed):
        await KeysStubSource(FakeStub(plaintext=b"short")).decrypt(5, b"w")  # type: ignore[arg-type]


async def test_stub_source_keeps_the_keys_service_reason() -> None:
    for reason in ("KEY_VERSION_RETIRED", "KEYS_DESTROYED", "KEY_ACCOUNT_MISMATCH"):
        source = KeysStubSource(FakeStub(error=grpc.StatusCode.FAILED_PRECONDITION, reason=reason))  # type: ignore[arg-type]
        with pytest.raises(DecryptFailed) as info:
            await source.decrypt(5, b"w")
        assert info.value.reason == reason
    with pytest.raises(KeysRefused) as refused:
        await KeysStubSource(
            FakeStub(error=grpc.StatusCode.FAILED_PRECONDITION, reason="KEYS_DESTROYED")  # type: ignore[arg-type]
        ).generate(5)
    assert refused.value.reason == "KEYS_DESTROYED"
    with pytest.raises(DecryptFailed) as plain:
        await KeysStubSource(FakeStub(error=grpc.StatusCode.INVALID_ARGUMENT)).decrypt(5, b"w")  # type: ignore[arg-type]
    assert plain.value.reason == "DECRYPT_FAILED"
