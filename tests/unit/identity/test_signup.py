"""Sign-up rules (domain.signup) and the sign-up use cases over in-memory fakes: the code's shape, life and
limits, the throttle's counters, and audit events that never carry an email address, a name or a code."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.identity.domain.accounts import Account, User
from services.identity.domain.caller import Caller
from services.identity.domain.credentials import PasswordPolicy
from services.identity.domain.errors import PasswordRejected
from services.identity.domain.sessions import Attempt
from services.identity.domain.signup import (
    CODE_DIGITS,
    SIGNUP,
    STAFF_OPENED,
    PasswordRequired,
    SignupCodeInvalid,
    SignupPolicy,
    SignupThrottled,
    TimezoneInvalid,
    Verification,
    check_code,
    check_timezone,
    new_code,
    split_name,
    verification_email,
)
from services.identity.service.accounts import Accounts
from services.identity.service.signup import SignupInput, Signups
from tests.unit.identity.test_identity_accounts import CURRENCY, FakeAudit, FakeBalances, FakeStore

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
PASSWORD = "quartz meadow ladder 42 ripple"
POLICY = SignupPolicy(address_max=100, ipv4_network_max=3, ipv6_network_max=3)


def _verification(**kw: object) -> Verification:
    base = Verification(account_id=1, user_id=2, username="ada", origin=SIGNUP, has_password=True,
                        code_hash="h", code_expire_time=NOW + timedelta(minutes=30), attempts=0, codes_sent=1,
                        last_send_time=NOW, verify_time=None)
    return replace(base, **kw)  # type: ignore[arg-type]


# -- rules ---------------------------------------------------------------------------------------------------


def test_codes_are_8_random_digits_and_only_that_shape_is_checked() -> None:
    codes = {new_code() for _ in range(200)}
    assert all(len(c) == CODE_DIGITS and c.isdigit() for c in codes) and len(codes) > 190
    assert check_code(" 1234-5678 ") == "12345678"
    for bad in ("", "1234567", "123456789", "abcdefgh", "\uff11" * 8):
        with pytest.raises(SignupCodeInvalid):
            check_code(bad)


def test_a_code_is_usable_until_it_expires_is_used_up_or_the_account_is_verified() -> None:
    assert _verification().code_usable(NOW, POLICY)
    assert not _verification().code_usable(NOW + timedelta(minutes=30), POLICY)  # expired
    assert not _verification(attempts=POLICY.max_attempts).code_usable(NOW, POLICY)
    assert not _verification(verify_time=NOW).code_usable(NOW, POLICY)
    assert not _verification(code_hash=None).code_usable(NOW, POLICY)


def test_resends_are_spaced_and_counted() -> None:
    assert not _verification().may_resend(NOW, POLICY)  # the last one just went
    later = NOW + timedelta(seconds=POLICY.resend_interval_seconds)
    assert _verification().may_resend(later, POLICY)
    assert not _verification(codes_sent=POLICY.max_codes).may_resend(later, POLICY)
    assert not _verification(verify_time=NOW).may_resend(later, POLICY)


def test_sign_ups_count_per_address_and_per_network_in_scopes_of_their_own() -> None:
    assert POLICY.counters("203.0.113.7", SIGNUP) == [
        ("signup_address", "203.0.113.7", 100), ("signup_network", "203.0.113.0/24", 3)]
    assert POLICY.counters("::ffff:203.0.113.7", SIGNUP)[1] == ("signup_network", "203.0.113.0/24", 3)
    assert POLICY.counters("2001:db8:1:2:3::4", SIGNUP)[1] == ("signup_network", "2001:db8:1:2::/64", 3)
    code = POLICY.counters("2001:db8:1:2:3::4", "signup_code")
    assert [c[0] for c in code] == ["signup_code_address", "signup_code_network"]
    assert all(c[2] == POLICY.code_attempts_max for c in code)
    assert POLICY.counters("", SIGNUP) == []


def test_names_time_zones_and_the_email_template() -> None:
    assert split_name("  Ada   King Lovelace ") == ("Ada King", "Lovelace")
    assert split_name("Cher") == ("Cher", "")
    assert check_timezone("", "Australia/Melbourne") == "Australia/Melbourne"
    assert check_timezone("Europe/London", "UTC") == "Europe/London"
    with pytest.raises(TimezoneInvalid):
        check_timezone("Mars/Olympus", "UTC")
    subject, body = verification_email("ada", "12345678", 1800, staff_opened=False)
    assert subject == "SendSafe sign-up code" and "12345678" in body and "30 minutes" in body and "ada" in body
    _, staff_body = verification_email("ada", "12345678", 1800, staff_opened=True)
    assert "password" in staff_body


# -- use cases over fakes ------------------------------------------------------------------------------------


class FakeSignupStore:
    def __init__(self) -> None:
        self.rows: dict[int, Verification] = {}
        self.users: dict[str, tuple[int, int]] = {}
        self.test_mode: dict[int, bool] = {}

    async def start_verification(self, account_id: int, user_id: int, origin: str, code_hash: str,
                                 expire_time: datetime) -> None:
        self.rows[account_id] = Verification(account_id, user_id, "", origin, origin == SIGNUP, code_hash,
                                             expire_time, 0, 1, NOW, None)

    async def verification(self, username: str) -> Verification | None:
        ids = self.users.get(username.lower())
        return replace(self.rows[ids[0]], username=username) if ids and ids[0] in self.rows else None

    async def count_attempt(self, account_id: int) -> int:
        v = self.rows[account_id]
        self.rows[account_id] = replace(v, attempts=v.attempts + 1)
        return v.attempts + 1

    async def forgive_attempt(self, account_id: int) -> None:
        v = self.rows[account_id]
        self.rows[account_id] = replace(v, attempts=max(0, v.attempts - 1))

    async def replace_code(self, account_id: int, code_hash: str, expire_time: datetime, *, max_codes: int,
                           interval_seconds: int) -> int:
        v = self.rows[account_id]
        if v.codes_sent >= max_codes or v.verify_time:
            return 0
        self.rows[account_id] = replace(v, code_hash=code_hash, code_expire_time=expire_time, attempts=0,
                                        codes_sent=v.codes_sent + 1)
        return v.codes_sent + 1

    async def complete(self, account_id: int, user_id: int, code_hash: str, password_hash: str | None,
                       before_commit: object) -> datetime | None:
        await before_commit()  # type: ignore[operator]
        self.rows[account_id] = replace(self.rows[account_id], verify_time=NOW, code_hash=None,
                                        has_password=True)
        self.test_mode[account_id] = False
        return NOW


class FakeThrottle:
    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    async def count_failure(self, scope: str, key: str, *, max_failures: int, window: int, lock: int) -> Attempt:
        n = self.counts[(scope, key)] = self.counts.get((scope, key), 0) + 1
        return Attempt(n, n > max_failures)


class FakeMail:
    def __init__(self) -> None:
        self.sent: list[tuple[int, str, str]] = []

    async def send(self, account_id: int, subject: str, body: str, notification_id: str) -> str:
        self.sent.append((account_id, subject, body))
        return "<m@test>"

    def last_code(self) -> str:
        return next(w for w in self.sent[-1][2].split() if w.isdigit() and len(w) == CODE_DIGITS)


class PlainHasher:  # the real one is argon2id off the loop; the rules here do not depend on the cost
    async def hash(self, password: str) -> str:
        return "h:" + password

    async def verify(self, stored: str | None, password: str) -> bool:
        return stored == "h:" + password

    def needs_rehash(self, stored: str) -> bool:
        return False


class Fixture:
    def __init__(self) -> None:
        self.accounts_store = FakeStore()
        self.audit = FakeAudit()
        self.store = FakeSignupStore()
        self.mail = FakeMail()
        self.signups = Signups(
            Accounts(self.accounts_store, FakeBalances(), self.audit, currency=CURRENCY, default_country="AU",
                     default_timezone="Australia/Melbourne", hasher=PlainHasher()),
            self.store, FakeThrottle(), self.mail, PlainHasher(), self.audit, policy=POLICY,
            password_policy=PasswordPolicy(), default_country="AU", default_timezone="Australia/Melbourne",
            clock=lambda: NOW,
        )

    def link(self, account: Account, user: User) -> None:
        self.store.users[user.api_username.lower()] = (account.id, user.id)

    def every_event(self) -> bytes:
        return b"".join(e.SerializeToString() for e in self.audit.events + self.audit.strict)


def _req(username: str = "ada1") -> SignupInput:
    return SignupInput(name="Ada Lovelace", username=username, email="ada.private@example.com", password=PASSWORD,
                       country="AU")


async def test_a_whole_sign_up_is_audited_with_ids_and_networks_never_an_email_a_name_or_a_code() -> None:
    f = Fixture()
    me = Caller(client_address="203.0.113.7")
    opened = await f.signups.signup(me, _req())
    f.link(opened.account, opened.user)
    assert opened.account.test_mode and opened.email_sent and opened.code_expire_time == NOW + timedelta(minutes=30)
    assert (opened.user.first_name, opened.user.last_name) == ("Ada", "Lovelace")
    code = f.mail.last_code()
    with pytest.raises(SignupCodeInvalid):
        await f.signups.verify(me, "ada1", f"{(int(code) + 1) % 10**8:08d}")
    _, when = await f.signups.verify(me, "ADA1", code)
    assert when == NOW and f.store.test_mode[opened.account.id] is False
    actions = [e.action for e in f.audit.events + f.audit.strict]
    assert {"account.create", "identity.signup", "identity.signup.code_sent", "identity.signup.verify"} <= set(actions)
    blob = f.every_event()
    for secret in (b"ada.private", b"Lovelace", b"Ada ", code.encode(), PASSWORD.encode()):
        assert secret not in blob, secret
    assert b"203.0.113.0/24" in blob  # the network fact


async def test_a_burst_from_one_network_is_throttled_before_any_password_is_hashed() -> None:
    f = Fixture()
    for i in range(POLICY.ipv4_network_max):
        await f.signups.signup(Caller(client_address=f"198.51.100.{i}"), _req(f"user{i}"))
    with pytest.raises(SignupThrottled):
        await f.signups.signup(Caller(client_address="198.51.100.99"), _req("late"))
    assert await f.accounts_store.find_user("late") is None
    await f.signups.signup(Caller(client_address="192.0.2.1"), _req("elsewhere"))  # another network


async def test_an_invalid_request_is_refused_before_it_counts() -> None:
    f = Fixture()
    for _ in range(POLICY.ipv4_network_max * 2):
        with pytest.raises(PasswordRejected):
            await f.signups.signup(Caller(client_address="198.51.100.1"), replace(_req(), password=""))
    await f.signups.signup(Caller(client_address="198.51.100.1"), _req())


async def test_a_staff_opened_account_needs_a_password_with_its_code() -> None:
    f = Fixture()
    seen: list[int] = []

    async def transparency(account: Account, user: User) -> None:
        seen.append(account.id)

    opened = await f.signups.open_for_customer(replace(_req("cust1"), password=""), transparency)
    f.link(opened.account, opened.user)
    assert seen == [opened.account.id] and f.store.rows[opened.account.id].origin == STAFF_OPENED
    code = f.mail.last_code()
    assert "password" in f.mail.sent[-1][2]
    me = Caller(client_address="192.0.2.5")
    with pytest.raises(PasswordRequired):
        await f.signups.verify(me, "cust1", code)
    with pytest.raises(PasswordRejected):
        await f.signups.verify(me, "cust1", code, "password1234")
    assert f.store.rows[opened.account.id].attempts == 0  # the right code with no good password costs nothing
    await f.signups.verify(me, "cust1", code, PASSWORD)
    assert f.store.test_mode[opened.account.id] is False
