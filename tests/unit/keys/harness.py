"""The keys use cases wired to the in-memory fakes, as the unit tests of both services use them."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from services.keys.adapters.root_key import LocalRootKey
from services.keys.domain.api_keys import ApiKeyRecord, Caller, KeyRules
from services.keys.domain.restrictions import NO_LIMITS
from services.keys.service.api_keys import ApiKeyService
from services.keys.service.key_rings import KeyRingService
from services.keys.service.ports import RootKeyProvider
from tests.unit.keys.fakes import FakeAudit, FakeLastUsed, FakeNotices, FakeStore

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ROOT = LocalRootKey({"r1": bytes(range(32))}, "r1")
RULES = KeyRules(
    declared_permissions=frozenset({"sms.send", "sms.read", "api_keys.read", "api_keys.write", "audit.read"}),
    max_lifetime=timedelta(days=366),
    default_lifetime=timedelta(days=90),
)
ALICE = Caller(5, 6, frozenset({"sms.send", "sms.read", "api_keys.read", "api_keys.write"}))


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


@dataclasses.dataclass
class Services:
    api_keys: ApiKeyService
    rings: KeyRingService


@dataclasses.dataclass
class Parts:
    api_keys: ApiKeyService
    rings: KeyRingService
    store: FakeStore
    last_used: FakeLastUsed
    audit: FakeAudit
    notices: FakeNotices
    clock: Clock

    def again(self, root: RootKeyProvider = ROOT) -> Services:
        """Another replica (or a restarted process): same store, empty caches."""
        return services(self.store, self.last_used, self.audit, self.notices, self.clock, root)


def services(store: FakeStore, last_used: FakeLastUsed, audit: FakeAudit, notices: FakeNotices, clock: Clock,
             root: RootKeyProvider = ROOT, **kw: object) -> Services:
    api_keys = ApiKeyService(store, last_used, root, audit, rules=RULES, now=clock, notices=notices)
    rings = KeyRingService(store, root, audit, now=clock, notices=notices,
                           min_pending_window=timedelta(days=7), **kw)  # type: ignore[arg-type]
    api_keys.use_sealer(rings)
    return Services(api_keys, rings)


def parts() -> Parts:
    store, last_used, audit, notices, clock = FakeStore(), FakeLastUsed(), FakeAudit(), FakeNotices(), Clock()
    both = services(store, last_used, audit, notices, clock)
    return Parts(both.api_keys, both.rings, store, last_used, audit, notices, clock)


async def create(p: Parts, caller: Caller = ALICE, **kw: object) -> tuple[ApiKeyRecord, str]:
    args: dict[str, object] = {"name": "ci", "scopes": ["sms.send"], "expire_time": None, "allowed_cidrs": [],
                               "send_limits": NO_LIMITS}
    args.update(kw)
    return await p.api_keys.create_api_key(caller, **args)  # type: ignore[arg-type]
