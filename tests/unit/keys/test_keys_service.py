"""Keys use cases against in-memory fakes: audit ordering, no-oracle verification, KEK caching and coalescing."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from sendsafe.audit.v1 import event_pb2
from services.keys import domain as d
from services.keys.domain import ApiKeyRecord, DecryptFailed, InvalidCredentials, KeyVersionUnknown, StoredKek
from services.keys.service import Service
from svckit.audit import AuditUnavailable
from svckit.keyevents import API_KEYS_CHANGED, KeyNotice

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class FakeStore:
    def __init__(self) -> None:
        self.rings: dict[int, int] = {}
        self.keks: dict[tuple[int, int], StoredKek] = {}
        self.api_keys: dict[str, ApiKeyRecord] = {}
        self.calls: list[str] = []
        self.last_used: dict[str, datetime] = {}
        self.fail_last_used = False
        self.gate: asyncio.Event | None = None

    async def current_kek(self, account_id: int) -> StoredKek | None:
        self.calls.append("current_kek")
        if self.gate is not None:
            await self.gate.wait()
        v = self.rings.get(account_id)
        return None if v is None else self.keks[(account_id, v)]

    async def kek_version(self, account_id: int, version: int) -> StoredKek | None:
        self.calls.append("kek_version")
        return self.keks.get((account_id, version))

    async def create_first_kek(self, first: StoredKek) -> tuple[StoredKek, bool]:
        self.calls.append("create_first_kek")
        if first.account_id in self.rings:
            return self.keks[(first.account_id, self.rings[first.account_id])], False
        self.rings[first.account_id] = first.version
        self.keks[(first.account_id, first.version)] = first
        return first, True

    async def insert_api_key(self, record: ApiKeyRecord, before_commit: Callable[[], Awaitable[None]]) -> None:
        self.calls.append("insert_api_key")
        await before_commit()  # raises -> nothing stored, like the rolled-back transaction
        self.api_keys[record.key_id] = record

    async def api_key(self, key_id: str) -> ApiKeyRecord | None:
        self.calls.append("api_key")
        return self.api_keys.get(key_id)

    async def revoke_user_keys(self, account_id: int, user_id: int, keep_key_id: str, when: datetime) -> list[str]:
        self.calls.append("revoke_user_keys")
        out = []
        for k, r in self.api_keys.items():
            live = r.revoke_time is None or r.revoke_time > when
            if r.account_id == account_id and r.user_id == user_id and k != keep_key_id and live:
                self.api_keys[k] = dataclasses.replace(r, revoke_time=when)
                out.append(k)
        return sorted(out)

    async def set_last_used(self, items: Sequence[tuple[str, datetime]]) -> int:
        if self.fail_last_used:
            raise ConnectionError("db down")
        for k, t in items:
            self.last_used[k] = max(t, self.last_used.get(k, t))
        return len(items)


class FakeLastUsed:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.pending: set[str] = set()
        self.broken = False

    async def touch(self, key_id: str, when: float | None = None) -> None:
        if self.broken:
            raise ConnectionError("redis down")
        self.times[key_id] = 1_700_000_000.0
        self.pending.add(key_id)

    async def take(self, limit: int) -> list[tuple[str, datetime]]:
        out: list[tuple[str, datetime]] = []
        while self.pending and len(out) < limit:
            k = self.pending.pop()
            out.append((k, datetime.fromtimestamp(self.times[k], UTC)))
        return out

    async def give_back(self, key_ids: Sequence[str]) -> None:
        self.pending.update(key_ids)


class FakeAudit:
    def __init__(self) -> None:
        self.events: list[event_pb2.Event] = []
        self.strict: list[event_pb2.Event] = []
        self.down = False

    async def record(self, event: event_pb2.Event) -> None:
        self.events.append(event)

    async def record_strict(self, event: event_pb2.Event, timeout: float = 5.0) -> None:
        if self.down:
            raise AuditUnavailable("the audit log cannot record this action now; it was not performed")
        self.strict.append(event)
        self.events.append(event)


class FakeNotices:
    def __init__(self) -> None:
        self.sent: list[KeyNotice] = []

    async def publish(self, notice: KeyNotice) -> int:
        self.sent.append(notice)
        return 1


ROOT = d.LocalRootKey({"r1": bytes(range(32))}, "r1")


@pytest.fixture
def parts() -> tuple[Service, FakeStore, FakeLastUsed, FakeAudit]:
    store, last_used, audit = FakeStore(), FakeLastUsed(), FakeAudit()
    return Service(store, last_used, ROOT, audit, now=lambda: NOW), store, last_used, audit


Parts = tuple[Service, FakeStore, FakeLastUsed, FakeAudit]

# -- API keys -----------------------------------------------------------------------------------------


async def test_issue_then_verify(parts: Parts) -> None:
    service, store, last_used, audit = parts
    key_id, api_key = await service.issue_api_key(5, 6, "ci", False)
    assert api_key.startswith("ss_live_") and key_id in api_key
    stored = store.api_keys[key_id]
    assert stored.account_id == 5 and stored.user_id == 6 and stored.scopes == ("*",)
    assert api_key.encode() not in repr(stored).encode()
    assert d.parse_api_key(api_key).secret not in repr(stored)  # type: ignore[union-attr]
    verified = await service.verify_api_key(api_key)
    assert (verified.key_id, verified.account_id, verified.user_id, verified.scopes) == (key_id, 5, 6, ("*",))
    assert key_id in last_used.pending
    (issued,) = audit.strict
    assert issued.action == "keys.api_key.issued"
    assert (issued.resource.type, issued.resource.id, issued.actor.account_id) == ("api_key", key_id, 5)
    assert d.parse_api_key(api_key).secret not in str(issued)  # type: ignore[union-attr]
    assert api_key not in str(issued)


async def test_issue_fails_closed_when_audit_is_down(parts: Parts) -> None:
    service, store, _, audit = parts
    audit.down = True
    with pytest.raises(AuditUnavailable):
        await service.issue_api_key(5, 6, "ci", True)
    assert store.api_keys == {}
    # A superseding failure event says the (possibly still delivered) success event did not happen.
    (failed,) = audit.events
    assert (failed.action, failed.outcome, failed.error_reason) == (
        "keys.api_key.issued",
        event_pb2.OUTCOME_FAILURE,
        "AUDIT_UNAVAILABLE",
    )
    assert failed.actor.account_id == 5 and failed.resource.id and failed.details["supersedes_event_id"]


async def test_issue_rejects_bad_requests(parts: Parts) -> None:
    service, store, _, audit = parts
    with pytest.raises(d.RequestInvalid):
        await service.issue_api_key(0, 6, "ci", False)
    assert store.calls == [] and audit.events == []


async def test_every_verify_failure_looks_the_same(parts: Parts) -> None:
    service, store, last_used, audit = parts
    _, good = await service.issue_api_key(5, 6, "ci", False)
    _, revoked = await service.issue_api_key(5, 6, "old", False)
    _, expired = await service.issue_api_key(5, 6, "short", False)
    rid, eid = d.parse_api_key(revoked).key_id, d.parse_api_key(expired).key_id  # type: ignore[union-attr]
    store.api_keys[rid] = dataclasses.replace(store.api_keys[rid], revoke_time=NOW - timedelta(seconds=1))
    store.api_keys[eid] = dataclasses.replace(store.api_keys[eid], expire_time=NOW)
    p = d.parse_api_key(good)
    assert p is not None
    wrong_secret = d.ApiKeyParts(False, p.key_id, d.random_base62(22)).format()
    unknown = d.new_api_key(False).format()
    garbled = good[:-1] + ("A" if good[-1] != "A" else "B")
    last_used.pending.clear()
    messages = set()
    for candidate, failure in (
        (wrong_secret, "secret_mismatch"),
        (unknown, "unknown_key"),
        (garbled, "malformed"),
        ("", "malformed"),
        (revoked, "revoked"),
        (expired, "expired"),
    ):
        audit.events.clear()
        store.calls.clear()
        with pytest.raises(InvalidCredentials) as info:
            await service.verify_api_key(candidate)
        messages.add((info.value.code, info.value.reason, info.value.message))
        (ev,) = audit.events
        assert ev.action == "keys.api_key.verify_failed" and ev.details["failure"] == failure
        assert ev.outcome == event_pb2.OUTCOME_FAILURE
        if failure == "malformed":
            assert store.calls == []  # no database lookup for garbage
            assert ev.resource.id == ""
        else:
            assert ev.resource.id == d.parse_api_key(candidate).key_id  # type: ignore[union-attr]
        secret = d.parse_api_key(candidate).secret if d.parse_api_key(candidate) else candidate  # type: ignore[union-attr]
        assert not secret or secret not in str(ev)
    assert messages == {("UNAUTHENTICATED", "INVALID_CREDENTIALS", "the API key is not valid")}
    assert not last_used.pending  # failures are not uses


async def test_revoke_every_key_of_a_user(parts: Parts) -> None:
    service, store, _, audit = parts
    notices = FakeNotices()
    service = Service(store, FakeLastUsed(), ROOT, audit, now=lambda: NOW, notices=notices)
    keys = [await service.issue_api_key(5, 6, f"k{i}", False) for i in range(3)]
    _, other_user = await service.issue_api_key(5, 8, "other", False)
    keep_id, keep = keys[2]
    audit.events.clear()
    revoked = await service.revoke_user_api_keys(5, 6, keep_id, "regenerated")
    assert revoked == sorted(k for k, _ in keys[:2])
    for _, key in keys[:2]:
        with pytest.raises(InvalidCredentials):
            await service.verify_api_key(key)
    await service.verify_api_key(keep)
    await service.verify_api_key(other_user)
    assert notices.sent == [KeyNotice(API_KEYS_CHANGED, 5, tuple(revoked), "revoked")]
    done = [e for e in audit.events if e.action == "keys.api_key.revoked"]
    assert sorted(e.resource.id for e in done) == revoked
    assert all(e.details["reason"] == "regenerated" and e.actor.account_id == 5 for e in done)
    # Idempotent: nothing left to revoke, nothing published.
    assert await service.revoke_user_api_keys(5, 6, keep_id, "") == []
    assert len(notices.sent) == 1
    for bad in ((0, 6, "", ""), (5, 0, "", ""), (5, 6, "not a key id", ""), (5, 6, "", "Free Text!")):
        with pytest.raises(d.RequestInvalid):
            await service.revoke_user_api_keys(*bad)


async def test_verify_survives_a_broken_redis(parts: Parts) -> None:
    service, _, last_used, _ = parts
    _, key = await service.issue_api_key(5, 6, "ci", False)
    last_used.broken = True
    assert (await service.verify_api_key(key)).account_id == 5


async def test_last_used_write_back(parts: Parts) -> None:
    service, store, last_used, _ = parts
    ids = [(await service.issue_api_key(5, 6, f"k{i}", False)) for i in range(5)]
    for _, key in ids:
        await service.verify_api_key(key)
    store.fail_last_used = True
    with pytest.raises(ConnectionError):
        await service.flush_last_used(batch=2)
    assert len(last_used.pending) == 5  # given back for the next round
    store.fail_last_used = False
    assert await service.flush_last_used(batch=2) == 5
    assert set(store.last_used) == {k for k, _ in ids}
    assert await service.flush_last_used() == 0


# -- data keys ------------------------------------------------------------------------------------------


async def test_data_key_round_trip_creates_kek_once(parts: Parts) -> None:
    service, store, _, audit = parts
    plain, wrapped, version = await service.generate_data_key(9)
    assert version == 1 and len(plain) == 32 and plain not in wrapped
    assert await service.decrypt_data_key(9, wrapped) == (plain, 1)
    for _ in range(20):
        await service.generate_data_key(9)
    assert store.calls.count("create_first_kek") == 1
    assert store.calls.count("current_kek") == 1  # then served from the cache
    assert [e.action for e in audit.events] == ["keys.kek.created"]
    # The stored KEK is wrapped, not the key itself.
    stored = store.keks[(9, 1)]
    assert await ROOT.unwrap(stored.wrapped, d.kek_aad(9, 1)) not in stored.wrapped.blob


async def test_concurrent_first_use_coalesces(parts: Parts) -> None:
    service, store, _, _ = parts
    store.gate = asyncio.Event()
    tasks = [asyncio.create_task(service.generate_data_key(11)) for _ in range(30)]
    await asyncio.sleep(0.01)
    store.gate.set()
    results = await asyncio.gather(*tasks)
    assert store.calls.count("current_kek") == 1
    assert store.calls.count("create_first_kek") == 1
    for plain, wrapped, _ in results:
        assert (await service.decrypt_data_key(11, wrapped))[0] == plain


async def test_fresh_process_decrypts_through_the_store(parts: Parts) -> None:
    service, store, last_used, audit = parts
    plain, wrapped, _ = await service.generate_data_key(9)
    other = Service(store, last_used, ROOT, audit)
    store.calls.clear()
    assert (await other.decrypt_data_key(9, wrapped))[0] == plain
    assert store.calls == ["kek_version"]


async def test_data_key_failures(parts: Parts) -> None:
    service, _, _, audit = parts
    _, wrapped, _ = await service.generate_data_key(9)
    await service.generate_data_key(10)
    audit.events.clear()
    with pytest.raises(DecryptFailed):
        await service.decrypt_data_key(10, wrapped)  # another account (which has a version 1)
    with pytest.raises(KeyVersionUnknown):
        await service.decrypt_data_key(12, wrapped)  # an account without keys
    future = wrapped[:1] + (7).to_bytes(4, "big") + wrapped[5:]
    with pytest.raises(KeyVersionUnknown):
        await service.decrypt_data_key(9, future)
    with pytest.raises(DecryptFailed):
        await service.decrypt_data_key(9, wrapped[:-1] + bytes([wrapped[-1] ^ 1]))
    with pytest.raises(DecryptFailed):
        await service.decrypt_data_key(9, b"garbage")
    with pytest.raises(d.RequestInvalid):
        await service.decrypt_data_key(0, wrapped)
    reasons = [e.error_reason for e in audit.events]
    assert reasons == [
        "DECRYPT_FAILED",
        "KEY_VERSION_UNKNOWN",
        "KEY_VERSION_UNKNOWN",
        "DECRYPT_FAILED",
        "DECRYPT_FAILED",
    ]
    assert all(e.action == "keys.data_key.decrypt_failed" for e in audit.events)


async def test_kek_that_does_not_unwrap_is_an_internal_error(parts: Parts) -> None:
    service, store, last_used, audit = parts
    _, wrapped, _ = await service.generate_data_key(9)
    other_root = d.LocalRootKey({"r1": bytes(32)}, "r1")
    with pytest.raises(RuntimeError) as info:
        await Service(store, last_used, other_root, audit).decrypt_data_key(9, wrapped)
    assert "account 9" in str(info.value)


async def test_kek_cache_expires() -> None:
    store, last_used, audit = FakeStore(), FakeLastUsed(), FakeAudit()
    service = Service(store, last_used, ROOT, audit, kek_cache_seconds=0.0)
    await service.generate_data_key(9)
    await service.generate_data_key(9)
    assert store.calls.count("current_kek") == 2
