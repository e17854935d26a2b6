"""Account closure (issue 15): the state machine (pure) and the use case over in-memory fakes of the store, the
other services and the audit client - the order of the steps, a peer that is down (the step is retried by the next
sweep, nothing after it runs), the window, cancel, and what the main user may do meanwhile."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from sendsafe.audit.v1 import event_pb2
from services.identity.domain.accounts import Account, User
from services.identity.domain.caller import Caller
from services.identity.domain.closure import (
    CLOSING_PERMISSIONS,
    FINAL_STEPS,
    IMMEDIATE_STEPS,
    Closure,
    ClosureState,
    check_cancel,
    check_close,
    permissions_while,
    receipt_reference,
)
from services.identity.domain.errors import (
    AccountClosed,
    AccountClosing,
    AccountNameMismatch,
    AccountNotClosing,
    MainUserOnly,
)
from services.identity.domain.flags import AccessFlags
from services.identity.service.closure import Closures
from svckit.errors import Unavailable

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
WINDOW = 3600
RECEIPT = (b'{"account_id":"7"}', b"s" * 64, "local-1.abc")


# -- the state machine ---------------------------------------------------------------------------------------------

def test_immediate_steps_come_first_then_the_final_ones_only_after_the_window() -> None:
    c = Closure(7, ClosureState.CLOSING, T0, T0 + timedelta(seconds=WINDOW), ("sessions_ended",))
    assert c.next_steps(T0 + timedelta(days=1)) == list(IMMEDIATE_STEPS[1:])  # immediate ones before anything else
    done = replace(c, steps_done=IMMEDIATE_STEPS)
    assert done.next_steps(T0 + timedelta(seconds=WINDOW - 1)) == []  # the window is still open
    assert done.next_steps(T0 + timedelta(seconds=WINDOW)) == list(FINAL_STEPS)
    later = replace(done, steps_done=(*IMMEDIATE_STEPS, "keys_purged", "messaging_purged"))
    assert later.next_steps(T0 + timedelta(days=1)) == ["audit_purged", "receipt_sent", "identity_purged"]
    assert Closure(7, ClosureState.OPEN).next_steps(T0) == []
    assert replace(done, state=ClosureState.CLOSED).next_steps(T0 + timedelta(days=9)) == []


def test_while_closing_the_main_user_holds_only_the_closure_and_nobody_else_anything() -> None:
    held = frozenset({"sms.send", "account.read", "account.close"})
    assert permissions_while("open", True, held) == held
    assert permissions_while("closing", True, held) == CLOSING_PERMISSIONS == {"account.close"}
    assert permissions_while("closing", False, frozenset({"sms.send"})) == frozenset()
    assert permissions_while("closing", True, frozenset()) == frozenset()  # a disabled main user stays disabled
    assert permissions_while("closed", True, held) == frozenset()


def test_closing_needs_the_main_user_an_open_account_and_its_exact_name() -> None:
    check_close(ClosureState.OPEN, True, "Acme Pty Ltd", "Acme Pty Ltd")
    check_close(ClosureState.OPEN, True, "  Acme Pty Ltd ", "Acme Pty Ltd")  # surrounding spaces forgiven
    with pytest.raises(MainUserOnly):
        check_close(ClosureState.OPEN, False, "Acme Pty Ltd", "Acme Pty Ltd")
    for typed in ("", "acme pty ltd", "Acme", "Acme Pty Ltd."):
        with pytest.raises(AccountNameMismatch):
            check_close(ClosureState.OPEN, True, typed, "Acme Pty Ltd")
    with pytest.raises(AccountClosing):
        check_close(ClosureState.CLOSING, True, "Acme Pty Ltd", "Acme Pty Ltd")
    check_cancel(ClosureState.CLOSING)
    for state in (ClosureState.OPEN, ClosureState.CLOSED):
        with pytest.raises(AccountNotClosing):
            check_cancel(state)
    assert receipt_reference(b"x") == "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"


# -- the use case --------------------------------------------------------------------------------------------------

class FakeStore:
    def __init__(self) -> None:
        now = T0
        self.account = Account(7, "Acme Pty Ltd", "AU", "UTC", False, now)
        flags = AccessFlags.all_granted()
        self.main = User(70, 7, "acme", "owner@example.com", "", "", "", True, None, flags, True, False, now, now)
        self.sub = User(71, 7, "acme-sub", "sub@example.com", "", "", "", False, None, flags, True, False, now, now)
        self.closure_row: Closure | None = None
        self.state = ClosureState.OPEN
        self.email_ct: bytes | None = None
        self.totp: tuple[int, int, bytes] | None = (70, 7, b"totp-under-7")
        self.sessions_live = 3
        self.purged = False

    async def get_user(self, user_id: int) -> tuple[Account, User] | None:
        user = {70: self.main, 71: self.sub}.get(user_id)
        return (self.account, user) if user else None

    async def closure(self, account_id: int) -> Closure | None:
        if account_id != 7:
            return None
        return self.closure_row or Closure(7, self.state)

    async def closing_accounts(self, limit: int) -> list[int]:
        return [7] if self.closure_row else []

    @contextlib.asynccontextmanager
    async def closure_lock(self, account_id: int, *, wait: bool) -> AsyncIterator[bool]:
        yield True

    async def start_closure(
        self, account_id: int, requested_by: str, destroy_time: datetime, owner_email_ct: bytes,
        totp: tuple[int, int, bytes] | None, before_commit: Callable[[], Awaitable[None]],
    ) -> bool:
        if self.state is not ClosureState.OPEN:
            return False
        await before_commit()
        self.state = ClosureState.CLOSING
        self.closure_row = Closure(7, ClosureState.CLOSING, T0, destroy_time, ("sessions_ended",), requested_by)
        self.email_ct, self.sessions_live = owner_email_ct, 0
        if totp is not None:
            self.totp = totp
        return True

    async def end_sessions(self, account_id: int) -> int:
        n, self.sessions_live = self.sessions_live, 0
        return n

    async def step_done(self, account_id: int, step: str, destroy_time: datetime | None = None) -> None:
        assert self.closure_row is not None
        self.closure_row = replace(self.closure_row, steps_done=(*self.closure_row.steps_done, step),
                                   destroy_time=destroy_time or self.closure_row.destroy_time)

    async def owner_email_ct(self, account_id: int) -> bytes | None:
        return self.email_ct

    async def main_totp(self, account_id: int) -> tuple[int, int, bytes] | None:
        return self.totp

    async def cancel_closure(
        self, account_id: int, totp: tuple[int, int, bytes] | None, before_commit: Callable[[], Awaitable[None]]
    ) -> bool:
        if self.state is not ClosureState.CLOSING:
            return False
        await before_commit()
        self.state, self.closure_row, self.email_ct = ClosureState.OPEN, None, None
        if totp is not None:
            self.totp = totp
        return True

    async def purge_account(self, account_id: int, receipt_sha256: str) -> int:
        self.purged, self.state, self.closure_row, self.email_ct = True, ClosureState.CLOSED, None, None
        return 5


class FakePeers:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.down: set[str] = set()
        self.keys_destroyed = False
        self.mailed: list[tuple[str, bytes]] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name in self.down:
            raise Unavailable(f"{name} is down")

    async def revoke_account_api_keys(self, account_id: int) -> int:
        self._call("revoke_account_api_keys")
        return 2

    async def stop_sends(self, account_id: int) -> int:
        self._call("stop_sends")
        return 1

    async def resume_sends(self, account_id: int) -> None:
        self._call("resume_sends")

    async def schedule_key_destruction(self, account_id: int, window_seconds: int) -> datetime | None:
        self._call("schedule_key_destruction")
        return T0 + timedelta(seconds=window_seconds + 5)  # keys' own time wins

    async def cancel_key_destruction(self, account_id: int) -> None:
        self._call("cancel_key_destruction")
        if self.keys_destroyed:
            raise AccountClosed("too late")

    async def purge_keys(self, account_id: int) -> tuple[bytes, bytes, str]:
        self._call("purge_keys")
        if not self.keys_destroyed:
            raise Unavailable("KEYS_NOT_DESTROYED")
        return RECEIPT

    async def purge_messaging(self, account_id: int) -> int:
        self._call("purge_messaging")
        return 10

    async def purge_audit(self, account_id: int) -> int:
        self._call("purge_audit")
        return 3

    async def send_receipt(self, account_id: int, to: str, receipt: tuple[bytes, bytes, str]) -> bool:
        self._call("send_receipt")
        self.mailed.append((to, receipt[0]))
        return True


class FakeAudit:
    def __init__(self) -> None:
        self.events: list[event_pb2.Event] = []

    async def record(self, event: event_pb2.Event) -> None:
        self.events.append(event)

    async def record_strict(self, event: event_pb2.Event, timeout: float = 5.0) -> None:
        self.events.append(event)


class FakeSealer:
    async def encrypt(self, account_id: int, aad: bytes, plaintext: bytes) -> bytes:
        return b"%d|" % account_id + aad + b"|" + plaintext

    async def decrypt(self, account_id: int, aad: bytes, blob: bytes) -> bytes:
        prefix = b"%d|" % account_id + aad + b"|"
        if blob.startswith(prefix):
            return blob[len(prefix):]
        return b"totp-secret"  # the fake's stored TOTP blob stands for this secret under its own account


PLATFORM = 1


def _parts(now: list[datetime]) -> tuple[Closures, FakeStore, FakePeers, FakeAudit]:
    store, peers, audit = FakeStore(), FakePeers(), FakeAudit()
    closures = Closures(store, peers, audit, FakeSealer(), platform_account_id=PLATFORM, pending_seconds=WINDOW,
                        now=lambda: now[0])
    return closures, store, peers, audit


def _main() -> Caller:
    return Caller(account_id=7, user_id=70, session_id="s1")


def _actions(audit: FakeAudit) -> list[str]:
    return [e.action for e in audit.events]


async def test_close_does_the_immediate_steps_in_order_and_the_sweep_finishes_after_the_window() -> None:
    now = [T0]
    closures, store, peers, audit = _parts(now)
    closure = await closures.close(_main(), "Acme Pty Ltd")
    assert closure.state is ClosureState.CLOSING and closure.steps_done == IMMEDIATE_STEPS
    assert closure.destroy_time == T0 + timedelta(seconds=WINDOW + 5)  # the keys service's destroy time
    assert peers.calls == ["revoke_account_api_keys", "stop_sends", "schedule_key_destruction"]
    assert store.sessions_live == 0
    assert store.totp is not None and store.totp[1] == PLATFORM  # the main user's second factor still works
    assert store.email_ct is not None and store.email_ct.startswith(b"1|")  # sealed under the platform's key
    assert _actions(audit)[:2] == ["account.closure.requested", "account.closure.sessions_ended"]

    assert await closures.sweep() == 0  # the window is open: nothing to do
    now[0] = T0 + timedelta(seconds=WINDOW + 5)
    assert await closures.sweep() == 0  # keys maintenance has not destroyed the keys yet: retried later
    assert not store.purged and peers.calls[-1] == "purge_keys"
    peers.keys_destroyed = True
    assert await closures.sweep() == len(FINAL_STEPS)
    assert peers.calls[-6:] == ["purge_keys", "purge_messaging", "purge_audit",  # keys first: the receipt exists
                                "purge_keys", "send_receipt", "purge_keys"]  # identity's own rows last
    assert store.purged and store.state is ClosureState.CLOSED and store.email_ct is None
    assert peers.mailed == [("owner@example.com", RECEIPT[0])]
    assert _actions(audit)[-5:] == ["account.closure.keys_purged", "account.closure.messaging_purged",
                                    "account.closure.audit_purged", "account.closure.receipt_sent", "account.closed"]
    assert await closures.sweep() == 0  # idempotent: nothing left


async def test_a_peer_down_stops_the_steps_there_and_the_sweep_resumes_in_order() -> None:
    now = [T0]
    closures, store, peers, _ = _parts(now)
    peers.down = {"stop_sends"}
    closure = await closures.close(_main(), "Acme Pty Ltd")
    assert closure.steps_done == ("sessions_ended", "api_keys_revoked")  # nothing after the failing step ran
    assert "schedule_key_destruction" not in peers.calls
    assert await closures.sweep() == 0
    peers.down = set()
    assert await closures.sweep() == 2
    assert store.closure_row is not None and store.closure_row.steps_done == IMMEDIATE_STEPS
    assert peers.calls.count("revoke_account_api_keys") == 1  # a step done is not done again


async def test_cancel_restores_keys_and_sends_and_refuses_when_nothing_or_too_late() -> None:
    now = [T0]
    closures, store, peers, audit = _parts(now)
    with pytest.raises(AccountNotClosing):
        await closures.cancel(_main())
    await closures.close(_main(), "Acme Pty Ltd")
    with pytest.raises(AccountClosing):
        await closures.close(_main(), "Acme Pty Ltd")  # twice
    reopened = await closures.cancel(_main())
    assert reopened.state is ClosureState.OPEN and store.state is ClosureState.OPEN
    assert peers.calls[-2:] == ["cancel_key_destruction", "resume_sends"]
    assert store.totp is not None and store.totp[1] == 7  # back under the account's own key
    assert "account.closure.cancelled" in _actions(audit)
    await closures.close(_main(), "Acme Pty Ltd")  # again
    peers.keys_destroyed = True
    with pytest.raises(AccountClosed):
        await closures.cancel(_main())
    assert store.state is ClosureState.CLOSING


async def test_only_the_main_user_closes_with_the_right_name() -> None:
    closures, store, peers, _ = _parts([T0])
    with pytest.raises(MainUserOnly):
        await closures.close(Caller(account_id=7, user_id=71, session_id="s2"), "Acme Pty Ltd")
    with pytest.raises(AccountNameMismatch):
        await closures.close(_main(), "Acme")
    assert store.state is ClosureState.OPEN and peers.calls == []
    staff_cancel: list[str] = []

    async def evidence() -> None:
        staff_cancel.append("both feeds")

    await closures.close(_main(), "Acme Pty Ltd")
    assert (await closures.cancel_for(7, "staff:3", evidence)).state is ClosureState.OPEN
    assert staff_cancel == ["both feeds"]
