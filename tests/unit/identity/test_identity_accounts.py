"""Identity use cases against in-memory fakes of the store, messaging and the audit client."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from sendsafe.audit.v1 import event_pb2
from services.identity.domain.accounts import Account, Currency, NewAccount, User, username_key
from services.identity.domain.errors import (
    BalanceUnavailable,
    EmailInvalid,
    UserDisabled,
    UserLookupInvalid,
    UsernameTaken,
    UserNotFound,
)
from services.identity.domain.flags import AccessFlags
from services.identity.service.accounts import Accounts, CreateAccountInput
from svckit.audit import AuditUnavailable

CURRENCY = Currency("AUD", "$", "c", "Australian Dollars", "20.00", "10000.00")


class FakeStore:
    """Commits only when before_commit returns, like the real transaction."""

    def __init__(self) -> None:
        self.accounts: dict[int, Account] = {}
        self.users: dict[int, User] = {}
        self._ids = itertools.count(1)

    async def get_user(self, user_id: int) -> tuple[Account, User] | None:
        u = self.users.get(user_id)
        return (self.accounts[u.account_id], u) if u else None

    async def find_user(self, api_username: str) -> tuple[Account, User] | None:
        for u in self.users.values():
            if username_key(u.api_username) == username_key(api_username):
                return self.accounts[u.account_id], u
        return None

    async def account_owners(self, account_id: int) -> list[User]:
        return [u for u in self.users.values() if u.account_id == account_id and u.is_main]

    async def create_account(
        self, new: NewAccount, before_commit: Callable[[Account, User], Awaitable[None]],
        password_hash: str | None = None,
    ) -> tuple[Account, User]:
        if await self.find_user(new.api_username):
            raise UsernameTaken("taken")
        now = datetime.now(UTC)
        a = Account(next(self._ids), new.account_name, new.country, new.timezone, new.test_mode, now)
        u = User(
            next(self._ids),
            a.id,
            new.api_username,
            new.email,
            new.phone_number,
            new.first_name,
            new.last_name,
            True,
            None,
            AccessFlags.all_granted(),
            True,
            False,
            now,
            now,
        )
        await before_commit(a, u)
        self.accounts[a.id], self.users[u.id] = a, u
        return a, u

    def add_user(self, account: Account, **kw: object) -> User:
        now = datetime.now(UTC)
        base = User(
            next(self._ids),
            account.id,
            f"user{len(self.users)}",
            "u@example.com",
            "",
            "",
            "",
            False,
            None,
            AccessFlags(),
            True,
            False,
            now,
            now,
        )
        u = replace(base, **kw)  # type: ignore[arg-type]
        self.users[u.id] = u
        return u


class FakeBalances:
    def __init__(self, balance: str | None = "12.5") -> None:
        self.balance = balance
        self.calls: list[int] = []

    async def get_balance(self, account_id: int) -> str:
        self.calls.append(account_id)
        if self.balance is None:
            raise BalanceUnavailable("down")
        return self.balance


class FakeAudit:
    def __init__(self, strict_ok: bool = True) -> None:
        self.strict_ok = strict_ok
        self.strict: list[event_pb2.Event] = []
        self.events: list[event_pb2.Event] = []

    async def record(self, event: event_pb2.Event) -> None:
        self.events.append(event)

    async def record_strict(self, event: event_pb2.Event, timeout: float = 5.0) -> None:
        self.strict.append(event)
        if not self.strict_ok:
            raise AuditUnavailable("no audit")


def _service(store: FakeStore, balances: FakeBalances | None = None, audit: FakeAudit | None = None) -> Accounts:
    return Accounts(
        store,
        balances or FakeBalances(),
        audit or FakeAudit(),
        currency=CURRENCY,
        default_country="AU",
        default_timezone="Australia/Melbourne",
    )


def _input(**kw: object) -> CreateAccountInput:
    base = CreateAccountInput("Demo", "demo", "demo@example.com", "+61411111111", "Demo", "User", "", False)
    return replace(base, **kw)  # type: ignore[arg-type]


async def test_create_account_records_evidence_before_commit() -> None:
    store, audit = FakeStore(), FakeAudit()
    account, user = await _service(store, audit=audit).create_account(_input())
    assert user.is_main and user.account_id == account.id and account.country == "AU"
    assert store.users[user.id] == user
    (ev,) = audit.strict
    assert ev.action == "account.create" and ev.outcome == event_pb2.OUTCOME_SUCCESS
    assert ev.resource.id == str(account.id) and ev.actor.account_id == account.id
    assert ev.details["api_username"] == "demo"
    # No personal contact details in the evidence.
    assert "demo@example.com" not in str(ev) and "+61411111111" not in str(ev)
    assert audit.events == []


async def test_create_account_fails_closed_without_audit() -> None:
    store, audit = FakeStore(), FakeAudit(strict_ok=False)
    with pytest.raises(AuditUnavailable):
        await _service(store, audit=audit).create_account(_input())
    assert store.users == {} and store.accounts == {}
    (attempt,) = audit.strict
    (superseded,) = audit.events
    assert superseded.outcome == event_pb2.OUTCOME_FAILURE
    assert superseded.error_reason == "AUDIT_UNAVAILABLE"
    assert superseded.resource.id == attempt.resource.id
    assert superseded.actor.account_id == attempt.actor.account_id != 0
    assert superseded.details["supersedes_event_id"] == attempt.event_id


async def test_duplicate_username_ignoring_case() -> None:
    store, audit = FakeStore(), FakeAudit()
    svc = _service(store, audit=audit)
    await svc.create_account(_input())
    with pytest.raises(UsernameTaken) as info:
        await svc.create_account(_input(api_username="DEMO", account_name="Other"))
    assert info.value.reason == "ALREADY_EXISTS"
    assert len(store.accounts) == 1
    assert audit.events[-1].error_reason == "ALREADY_EXISTS"


async def test_invalid_input_is_refused_and_audited_without_echoing_it() -> None:
    store, audit = FakeStore(), FakeAudit()
    with pytest.raises(EmailInvalid):
        await _service(store, audit=audit).create_account(_input(email="nope"))
    assert store.users == {} and audit.strict == []
    assert audit.events[-1].error_reason == "EMAIL_INVALID"
    audit.events.clear()
    with pytest.raises(Exception):  # noqa: B017
        await _service(store, audit=audit).create_account(_input(api_username="bad name\n"))
    assert "api_username" not in audit.events[-1].details


async def test_get_user_by_id_and_name() -> None:
    store = FakeStore()
    svc = _service(store)
    account, main = await svc.create_account(_input())
    assert await svc.get_user(main.id) == (account, main)
    assert await svc.get_user(0, "Demo") == (account, main)
    for args in [(main.id + 100, ""), (0, "nobody"), (0, "x y")]:
        with pytest.raises(UserNotFound) as info:
            await svc.get_user(*args)
        assert info.value.reason == "USER_NOT_FOUND"
    with pytest.raises(UserLookupInvalid):
        await svc.get_user(0, "")


async def test_account_owners_are_its_main_users() -> None:
    store = FakeStore()
    svc = _service(store)
    account, main = await svc.create_account(_input())
    store.add_user(account)
    assert await svc.account_owners(account.id) == [main]
    assert await svc.account_owners(account.id + 100) == []
    with pytest.raises(UserLookupInvalid):
        await svc.account_owners(0)


async def test_get_account_for_principal() -> None:
    store, balances = FakeStore(), FakeBalances("3.1485")
    svc = _service(store, balances)
    account, main = await svc.create_account(_input())
    details = await svc.get_account(account.id, main.id)
    assert details.balance == "3.148500" and details.user == main and details.account == account
    assert details.currency == CURRENCY
    assert balances.calls == [account.id]


async def test_get_account_checks_the_user_belongs_and_is_enabled() -> None:
    store = FakeStore()
    svc = _service(store)
    account, main = await svc.create_account(_input())
    other, _ = await svc.create_account(_input(api_username="other"))
    with pytest.raises(UserNotFound):
        await svc.get_account(other.id, main.id)
    banned = store.add_user(account, banned=True)
    with pytest.raises(UserDisabled):
        await svc.get_account(account.id, banned.id)


async def test_get_account_without_balance_is_unavailable() -> None:
    store = FakeStore()
    svc = _service(store, FakeBalances(None))
    account, main = await svc.create_account(_input())
    with pytest.raises(BalanceUnavailable) as info:
        await svc.get_account(account.id, main.id)
    assert info.value.code == "UNAVAILABLE"
