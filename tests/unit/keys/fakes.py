"""In-memory fakes of what the keys service depends on (the store follows PgKeyStore's contract)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from sendsafe.audit.v1 import event_pb2
from services.keys.domain.api_keys import ApiKeyRecord
from services.keys.domain.errors import ApiKeyAlreadyRolled
from services.keys.domain.key_rings import AccountRing, RingState, StoredKek
from services.keys.domain.root_key import RootWrapped
from svckit.audit import AuditUnavailable
from svckit.keyevents import KeyNotice


@dataclasses.dataclass
class _Ring:
    current: int
    minimum: int = 1
    state: str = "enabled"
    period: int = 0
    destroy_time: datetime | None = None
    scheduled: datetime | None = None
    requested_by: str = ""


class FakeStore:
    def __init__(self) -> None:
        self.rings: dict[int, _Ring] = {}
        self.keks: dict[tuple[int, int], StoredKek] = {}
        self.api_keys: dict[str, ApiKeyRecord] = {}
        self.signing: dict[str, tuple[bytes, datetime]] = {}
        self.calls: list[str] = []
        self.last_used: dict[str, tuple[datetime, str]] = {}
        self.fail_last_used = False
        self.gate: asyncio.Event | None = None

    # -- rings --------------------------------------------------------------------------------------------
    def _ring(self, account_id: int) -> AccountRing | None:
        r = self.rings.get(account_id)
        if r is None:
            return None
        cur = self.keks[(account_id, r.current)]
        return AccountRing(account_id, r.current, r.minimum, RingState(r.state), r.period, r.destroy_time,
                           cur.create_time)

    async def ring(self, account_id: int) -> AccountRing | None:
        self.calls.append("ring")
        if self.gate is not None:
            await self.gate.wait()
        return self._ring(account_id)

    async def kek_version(self, account_id: int, version: int) -> StoredKek | None:
        self.calls.append("kek_version")
        return self.keks.get((account_id, version))

    async def kek_versions(self, account_id: int) -> list[StoredKek]:
        return [k for (a, _), k in sorted(self.keks.items()) if a == account_id]

    async def create_first_kek(self, first: StoredKek) -> tuple[AccountRing, bool]:
        self.calls.append("create_first_kek")
        created = first.account_id not in self.rings
        if created:
            self.rings[first.account_id] = _Ring(first.version)
            self.keks[(first.account_id, first.version)] = first
        ring = self._ring(first.account_id)
        assert ring is not None
        return ring, created

    async def add_kek_version(
        self, new: StoredKek, expected_current: int, before_commit: Callable[[], Awaitable[None]]
    ) -> AccountRing | None:
        r = self.rings[new.account_id]
        if r.current != expected_current or r.state != "enabled":
            return None
        await before_commit()
        r.current = new.version
        self.keks[(new.account_id, new.version)] = new
        return self._ring(new.account_id)

    async def set_policy(self, account_id: int, period: int, minimum: int,
                         before_commit: Callable[[], Awaitable[None]]) -> AccountRing | None:
        r = self.rings[account_id]
        if r.state != "enabled" or r.current < minimum:
            return None
        await before_commit()
        r.period, r.minimum = period, minimum
        return self._ring(account_id)

    async def schedule_destruction(self, account_id: int, destroy_time: datetime, now: datetime, requested_by: str,
                                   before_commit: Callable[[], Awaitable[None]]) -> AccountRing | None:
        r = self.rings[account_id]
        if r.state != "enabled":
            return None
        await before_commit()
        r.state, r.destroy_time, r.scheduled, r.requested_by = "pending_destruction", destroy_time, now, requested_by
        return self._ring(account_id)

    async def cancel_destruction(self, account_id: int,
                                 before_commit: Callable[[], Awaitable[None]]) -> AccountRing | None:
        r = self.rings[account_id]
        if r.state != "pending_destruction":
            return None
        await before_commit()
        r.state, r.destroy_time, r.scheduled = "enabled", None, None
        return self._ring(account_id)

    async def due_rotations(self, now: datetime, default_period_seconds: int, limit: int) -> list[AccountRing]:
        out = []
        for account_id, r in self.rings.items():
            period = r.period or default_period_seconds
            created = self.keks[(account_id, r.current)].create_time
            if r.state == "enabled" and period and created is not None and (now - created).total_seconds() >= period:
                ring = self._ring(account_id)
                assert ring is not None
                out.append(ring)
        return out[:limit]

    async def due_destructions(self, now: datetime, limit: int) -> list[int]:
        return [a for a, r in self.rings.items()
                if r.state == "pending_destruction" and r.destroy_time is not None and r.destroy_time <= now][:limit]

    async def destroy(
        self, account_id: int, now: datetime,
        before_commit: Callable[[list[tuple[int, bytes]], datetime | None, str], Awaitable[None]],
    ) -> bool:
        r = self.rings[account_id]
        if r.state != "pending_destruction" or r.destroy_time is None or r.destroy_time > now:
            return False
        live = [(v, k.wrapped.blob) for (a, v), k in sorted(self.keks.items()) if a == account_id and k.wrapped]
        await before_commit(live, r.scheduled, r.requested_by)
        for v, _ in live:
            self.keks[(account_id, v)] = dataclasses.replace(self.keks[(account_id, v)], wrapped=None)
        r.state, r.destroy_time = "destroyed", now
        return True

    async def newest_kek(self) -> StoredKek | None:
        live = [k for k in self.keks.values() if k.wrapped is not None]
        return max(live, key=lambda k: k.create_time, default=None)

    async def keks_to_rewrap(self, current_root_key_id: str, limit: int) -> list[StoredKek]:
        return [k for k in self.keks.values() if k.wrapped and k.wrapped.key_id != current_root_key_id][:limit]

    async def replace_wrapped(self, account_id: int, version: int, old_root_key_id: str, new: RootWrapped) -> bool:
        k = self.keks[(account_id, version)]
        if k.wrapped is None or k.wrapped.key_id != old_root_key_id:
            return False
        self.keks[(account_id, version)] = dataclasses.replace(k, wrapped=new)
        return True

    async def root_key_usage(self) -> tuple[dict[str, int], dict[str, int]]:
        keks: dict[str, int] = {}
        for k in self.keks.values():
            if k.wrapped:
                keks[k.wrapped.key_id] = keks.get(k.wrapped.key_id, 0) + 1
        peppers: dict[str, int] = {}
        for r in self.api_keys.values():
            peppers[r.pepper_id] = peppers.get(r.pepper_id, 0) + 1
        return keks, peppers

    async def add_signing_key(self, key_id: str, public_key: bytes, when: datetime) -> None:
        self.signing.setdefault(key_id, (public_key, when))

    async def signing_keys(self) -> list[tuple[str, bytes, datetime]]:
        return [(k, p, t) for k, (p, t) in self.signing.items()]

    # -- API keys -----------------------------------------------------------------------------------------
    async def insert_api_key(self, record: ApiKeyRecord, before_commit: Callable[[], Awaitable[None]]) -> None:
        self.calls.append("insert_api_key")
        await before_commit()  # raises -> nothing stored, like the rolled-back transaction
        self.api_keys[record.key_id] = record

    async def api_key(self, key_id: str) -> ApiKeyRecord | None:
        self.calls.append("api_key")
        return self.api_keys.get(key_id)

    async def api_key_lineage(self, key_id: str, limit: int) -> list[ApiKeyRecord]:
        chain: list[ApiKeyRecord] = []
        while key_id in self.api_keys and len(chain) < limit:
            chain.append(self.api_keys[key_id])
            key_id = chain[-1].rolled_to
        return chain

    async def list_api_keys(self, account_id: int, user_id: int, *, show_inactive: bool, now: datetime,
                            after: tuple[datetime, str] | None, limit: int) -> list[ApiKeyRecord]:
        rows = sorted((r for r in self.api_keys.values() if r.account_id == account_id and r.user_id == user_id
                       and (show_inactive or r.active(now))), key=lambda r: (r.create_time, r.key_id), reverse=True)
        if after is not None:
            rows = [r for r in rows if (r.create_time, r.key_id) < after]
        return rows[:limit]

    async def revoke_api_key(self, key_id: str, when: datetime) -> bool:
        r = self.api_keys[key_id]
        if r.revoke_time is not None and r.revoke_time <= when:
            return False
        self.api_keys[key_id] = dataclasses.replace(r, revoke_time=when)
        return True

    async def roll_api_key(self, old: ApiKeyRecord, old_expire_time: datetime, new: ApiKeyRecord,
                           before_commit: Callable[[], Awaitable[None]]) -> None:
        if self.api_keys[old.key_id].rolled_to:
            raise ApiKeyAlreadyRolled("the key was rolled by another request")
        await before_commit()
        self.api_keys[old.key_id] = dataclasses.replace(old, expire_time=old_expire_time, rolled_to=new.key_id)
        self.api_keys[new.key_id] = new

    async def revoke_user_keys(self, account_id: int, user_id: int, keep_key_id: str, when: datetime) -> list[str]:
        self.calls.append("revoke_user_keys")
        out = []
        for k, r in self.api_keys.items():
            live = r.revoke_time is None or r.revoke_time > when
            if r.account_id == account_id and r.user_id == user_id and k != keep_key_id and live:
                self.api_keys[k] = dataclasses.replace(r, revoke_time=when)
                out.append(k)
        return sorted(out)

    async def rehash_api_key(self, key_id: str, old_pepper_id: str, new_hmac: bytes, new_pepper_id: str) -> bool:
        r = self.api_keys[key_id]
        if r.pepper_id != old_pepper_id:
            return False
        self.api_keys[key_id] = dataclasses.replace(r, secret_hmac=new_hmac, pepper_id=new_pepper_id)
        return True

    async def set_last_used(self, items: Sequence[tuple[str, datetime, str]]) -> int:
        if self.fail_last_used:
            raise ConnectionError("db down")
        for k, t, a in items:
            if k not in self.last_used or self.last_used[k][0] < t:
                self.last_used[k] = (t, a)
        return len(items)


class FakeLastUsed:
    def __init__(self) -> None:
        self.uses: dict[str, tuple[float, str]] = {}
        self.pending: set[str] = set()
        self.broken = False

    async def touch(self, key_id: str, address: str = "", when: float | None = None) -> None:
        if self.broken:
            raise ConnectionError("redis down")
        self.uses[key_id] = (when or 1_700_000_000.0, address)
        self.pending.add(key_id)

    async def take(self, limit: int) -> list[tuple[str, datetime, str]]:
        out: list[tuple[str, datetime, str]] = []
        while self.pending and len(out) < limit:
            k = self.pending.pop()
            t, a = self.uses[k]
            out.append((k, datetime.fromtimestamp(t, UTC), a))
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

    def actions(self) -> list[str]:
        return [e.action for e in self.events]


class FakeNotices:
    def __init__(self) -> None:
        self.sent: list[KeyNotice] = []

    async def publish(self, notice: KeyNotice) -> int:
        self.sent.append(notice)
        return 1
