"""Login, step-up and their brute-force rules against an in-memory store, a recording audit client and the real
argon2id Hasher (cheap parameters): every path that checks a password costs exactly one argon2 verification and
every refusal of credentials is the same INVALID_CREDENTIALS answer, so nobody learns whether a user exists,
is locked, or typed the wrong password."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pyotp
import pytest

from sendsafe.audit.v1 import event_pb2
from sendsafe.context.v1 import principal_pb2
from services.identity.adapters.hasher import Hasher
from services.identity.api import caller_of
from services.identity.domain import credentials
from services.identity.domain.caller import Caller
from services.identity.domain.credentials import Argon2Params, PasswordPolicy
from services.identity.domain.errors import InvalidCredentials, LoginThrottled, MfaCodeInvalid, MfaRequired
from services.identity.domain.sessions import (
    STAFF,
    USER,
    Attempt,
    SecondFactorUse,
    SessionRecord,
    SessionSettings,
    Subject,
    ThrottlePolicy,
    TotpFactor,
)
from services.identity.service.sessions import Sessions
from svckit.errors import DomainError

PASSWORD = "quartz meadow ladder 42 ripple"
PLATFORM = 1
CHEAP = Argon2Params(time_cost=1, memory_kib=8192, parallelism=1)
THROTTLE = ThrottlePolicy(max_failures=3, window_seconds=900, lock_seconds=900, address_max_failures=50)


@dataclass
class Factor:
    secret: str
    confirmed: bool = True
    last_step: int = 0


@dataclass
class FakeAuthStore:
    """The parts of PgIdentityStore that login and step-up use, with the same semantics (counted before any
    check; a second factor is consumed only by moving forward; success clears the subject's count)."""

    subjects: dict[tuple[str, str], Subject] = field(default_factory=dict)
    counters: dict[tuple[str, str], int] = field(default_factory=dict)
    factors: dict[tuple[str, int], Factor] = field(default_factory=dict)
    recovery: dict[tuple[str, int], dict[bytes, bool]] = field(default_factory=dict)
    sessions: dict[str, SessionRecord] = field(default_factory=dict)
    hashes: dict[tuple[str, int], str] = field(default_factory=dict)

    def add(self, subject: Subject) -> Subject:
        self.subjects[(subject.kind, subject.username.lower())] = subject
        if subject.password_hash:
            self.hashes[(subject.kind, subject.id)] = subject.password_hash
        return subject

    async def find_subject(self, kind: str, username: str, platform_account_id: int) -> Subject | None:
        s = self.subjects.get((kind, username.lower()))
        return replace(s, password_hash=self.hashes.get((s.kind, s.id))) if s else None

    async def get_subject(self, kind: str, subject_id: int, platform_account_id: int) -> Subject | None:
        return next((s for s in self.subjects.values() if s.kind == kind and s.id == subject_id), None)

    async def count_failure(self, scope: str, key: str, *, max_failures: int, window: int, lock: int) -> Attempt:
        n = self.counters.get((scope, key), 0) + 1
        self.counters[(scope, key)] = n
        return Attempt(failures=n, locked=n > max_failures)

    async def forgive(self, counters: list[tuple[str, str]]) -> None:
        for key in counters:
            self.counters[key] = max(0, self.counters.get(key, 0) - 1)

    async def totp_factor(self, kind: str, subject_id: int) -> TotpFactor | None:
        f = self.factors.get((kind, subject_id))
        if f is None:
            return None
        return TotpFactor(PLATFORM, f"sealed:{f.secret}".encode(), f.confirmed, f.last_step)

    def _consume(self, kind: str, subject_id: int, use: SecondFactorUse) -> bool:
        if use.totp_step is not None:
            f = self.factors.get((kind, subject_id))
            if f is None or f.last_step >= use.totp_step or not (f.confirmed or use.confirm):
                return False
            f.last_step, f.confirmed = use.totp_step, True
            return True
        if use.recovery_hash is not None:
            codes = self.recovery.get((kind, subject_id), {})
            if codes.get(use.recovery_hash) is not False:  # unknown (None) or used (True)
                return False
            codes[use.recovery_hash] = True
            return True
        return True

    async def create_session(
        self, session: SessionRecord, token_hash: bytes, use: SecondFactorUse | None, subject_key: str
    ) -> bool:
        if use is not None and not self._consume(session.subject_kind, session.subject_id, use):
            return False
        self.sessions[session.id] = session
        self.counters.pop(("subject", subject_key), None)
        return True

    async def rehash_password(self, kind: str, subject_id: int, old_hash: str, new_hash: str) -> None:
        if self.hashes.get((kind, subject_id)) == old_hash:
            self.hashes[(kind, subject_id)] = new_hash

    async def recovery_codes_left(self, kind: str, subject_id: int) -> int:
        return sum(1 for used in self.recovery.get((kind, subject_id), {}).values() if not used)

    async def get_session(self, session_id: str) -> SessionRecord | None:
        return self.sessions.get(session_id)

    async def step_up(
        self, session_id: str, kind: str, subject_id: int, use: SecondFactorUse, amr: str, subject_key: str
    ) -> datetime | None:
        if not self._consume(kind, subject_id, use):
            return None
        s = self.sessions[session_id]
        now = datetime.now(UTC)
        self.sessions[session_id] = replace(s, mfa_time=now, amr=(*s.amr, amr))
        self.counters.pop(("subject", subject_key), None)
        return now


class RecordingAudit:
    def __init__(self) -> None:
        self.events: list[event_pb2.Event] = []

    async def record(self, event: event_pb2.Event) -> None:
        self.events.append(event)

    async def record_strict(self, event: event_pb2.Event, timeout: float = 5.0) -> None:
        self.events.append(event)


class FakeSealer:
    async def encrypt(self, account_id: int, aad: bytes, plaintext: bytes) -> bytes:
        return b"sealed:" + plaintext

    async def decrypt(self, account_id: int, aad: bytes, blob: bytes) -> bytes:
        assert blob.startswith(b"sealed:")
        return blob[len(b"sealed:"):]


@pytest.fixture(scope="module")
def hasher() -> Iterator[Hasher]:
    h = Hasher(CHEAP, workers=2)
    yield h
    h.close()


@pytest.fixture(scope="module")
async def stored_hash(hasher: Hasher) -> str:
    return await hasher.hash(PASSWORD)


@dataclass
class World:
    store: FakeAuthStore
    audit: RecordingAudit
    sessions: Sessions
    hasher: Hasher
    user: Subject
    clock: list[datetime]

    def advance(self, seconds: float) -> None:
        self.clock[0] += timedelta(seconds=seconds)


@pytest.fixture
def world(hasher: Hasher, stored_hash: str) -> World:
    store, audit = FakeAuthStore(), RecordingAudit()
    clock = [datetime.now(UTC)]
    sessions = Sessions(
        store, audit, FakeSealer(), hasher, platform_account_id=PLATFORM, policy=PasswordPolicy(),
        throttle=THROTTLE, settings=SessionSettings(step_up_max_age_seconds=300), now=lambda: clock[0],
    )
    user = store.add(_subject(USER, 10, "alice", stored_hash))
    return World(store, audit, sessions, hasher, user, clock)


def _subject(kind: str, sid: int, username: str, password_hash: str | None, **kw: object) -> Subject:
    return Subject(
        kind=kind, id=sid, account_id=PLATFORM if kind == STAFF else 100, username=username,
        email=f"{username}@example.com", password_hash=password_hash, enabled=True,
        permissions=frozenset({"self.manage"}), **kw,  # type: ignore[arg-type]
    )


# Login arrives from the gateway without a principal's identity, only where it came from.
ANONYMOUS = caller_of(principal_pb2.Principal(client_address="203.0.113.7"))


async def _attempt(w: World, username: str, password: str, **kw: str) -> tuple[DomainError | None, int]:
    """(the refusal or None, argon2 verifications this attempt cost)."""
    before = w.hasher.verifications
    try:
        await w.sessions.login(ANONYMOUS, USER, username, password, **kw)
    except DomainError as err:
        return err, w.hasher.verifications - before
    return None, w.hasher.verifications - before


def _answer(err: DomainError | None) -> tuple[str, str, str, dict[str, str]]:
    assert err is not None
    return type(err).code, err.reason, err.message, err.metadata


def _enrol(w: World, subject: Subject, *, confirmed: bool = True) -> pyotp.TOTP:
    secret = credentials.new_totp_secret()
    w.store.factors[(subject.kind, subject.id)] = Factor(secret, confirmed=confirmed)
    return pyotp.TOTP(secret)


def _failures(w: World) -> list[str]:
    return [e.details.get("failure", "") for e in w.audit.events if e.outcome == event_pb2.OUTCOME_FAILURE]


# -- no enumeration: one answer, one verification -------------------------------------------------------


async def test_unknown_wrong_locked_disabled_and_malformed_cost_one_verification_and_answer_alike(
    world: World, stored_hash: str
) -> None:
    w = world
    w.store.add(replace(_subject(USER, 11, "carol", stored_hash), enabled=False))
    w.store.add(_subject(USER, 12, "dave", None))  # never set a password
    w.store.add(_subject(USER, 13, "erin", stored_hash))
    w.store.counters[("subject", "user:13")] = THROTTLE.max_failures  # the next attempt is over the limit

    paths = {
        "unknown": ("nobody-here", PASSWORD),
        "wrong_password": ("alice", "not the password at all"),
        "locked_right_password": ("erin", PASSWORD),
        "disabled": ("carol", PASSWORD),
        "no_password": ("dave", PASSWORD),
        "malformed_username": ("no spaces allowed!", PASSWORD),
    }
    answers = {}
    for name, (username, password) in paths.items():
        err, cost = await _attempt(w, username, password)
        assert isinstance(err, InvalidCredentials), name
        assert cost == 1, f"{name}: {cost} argon2 verifications"
        answers[name] = _answer(err)
    assert len(set(map(repr, answers.values()))) == 1, answers
    assert answers["unknown"][:2] == ("UNAUTHENTICATED", "INVALID_CREDENTIALS")
    assert _failures(w) == ["unknown_user", "bad_password", "locked", "disabled", "no_password", "unknown_user"]


async def test_every_login_path_costs_exactly_one_verification(world: World, stored_hash: str) -> None:
    w = world
    bob = w.store.add(_subject(USER, 20, "bob", stored_hash))
    totp = _enrol(w, bob)
    step = credentials.current_step()
    codes = credentials.new_recovery_codes()
    w.store.recovery[(USER, bob.id)] = {credentials.recovery_code_hash(c): False for c in codes}

    near = {totp.at((step + d) * 30) for d in (-1, 0, 1)}
    wrong_code = next(c for c in ("000000", "111111", "222222", "333333") if c not in near)
    cases: list[tuple[str, dict[str, str], type[DomainError] | None]] = [
        ("alice", {}, None),  # no second factor enrolled: password only
        ("bob", {}, MfaRequired),
        ("bob", {"totp_code": wrong_code}, InvalidCredentials),
        ("bob", {"totp_code": totp.at(step * 30)}, None),
        ("bob", {"totp_code": totp.at(step * 30)}, InvalidCredentials),  # replayed step
        ("bob", {"recovery_code": codes[0]}, None),
        ("bob", {"recovery_code": codes[0]}, InvalidCredentials),  # single use
        ("bob", {"recovery_code": "aaaa-bbbb-cccc-dddd"}, InvalidCredentials),
    ]
    for username, kw, expected in cases:
        err, cost = await _attempt(w, username, PASSWORD, **kw)
        assert cost == 1, (username, kw, cost)
        if expected is None:
            assert err is None, (username, kw, err)
        else:
            assert isinstance(err, expected), (username, kw, err)
    assert await w.store.recovery_codes_left(USER, bob.id) == len(codes) - 1
    assert [e.action for e in w.audit.events].count("auth.recovery_code.use") == 1


async def test_address_over_its_limit_is_429_before_anything_is_checked(world: World) -> None:
    """429 says nothing about any user, so it needs no decoy verification."""
    w = world
    w.store.counters[("address", "203.0.113.7")] = THROTTLE.address_max_failures
    err, cost = await _attempt(w, "alice", PASSWORD)
    assert isinstance(err, LoginThrottled) and cost == 0
    assert err.metadata["retry_after_seconds"] == str(THROTTLE.address_window_seconds)


async def test_user_is_locked_after_max_failures_even_with_the_right_password(world: World) -> None:
    w = world
    for _ in range(THROTTLE.max_failures):
        err, _ = await _attempt(w, "alice", "wrong wrong wrong")
        assert isinstance(err, InvalidCredentials)
    err, cost = await _attempt(w, "alice", PASSWORD)
    assert isinstance(err, InvalidCredentials) and cost == 1
    logins = [e for e in w.audit.events if e.action == "auth.login"]
    counted = [int(e.details["failures"]) for e in logins if "failures" in e.details]
    assert counted == [1, 2, 3, 4]
    lockouts = [e for e in w.audit.events if e.action == "auth.lockout"]
    assert len(lockouts) == 1 and lockouts[0].details["failures"] == str(THROTTLE.max_failures)
    assert _failures(w)[-1] == "locked"


async def test_success_clears_the_count_and_forgives_the_address(world: World) -> None:
    w = world
    await _attempt(w, "alice", "wrong wrong wrong")
    await _attempt(w, "alice", "wrong wrong wrong")
    err, _ = await _attempt(w, "alice", PASSWORD)
    assert err is None
    assert ("subject", "user:10") not in w.store.counters
    # Three attempts from the address, one forgiven for the success.
    assert w.store.counters[("address", "203.0.113.7")] == 2


async def test_staff_always_need_a_second_factor_and_the_first_code_confirms_it(
    world: World, stored_hash: str
) -> None:
    w = world
    staff = w.store.add(_subject(STAFF, 7, "ops-ann", stored_hash, role="security_admin"))
    totp = _enrol(w, staff, confirmed=False)  # as CreateStaffUser leaves it
    before = w.hasher.verifications
    with pytest.raises(MfaRequired):
        await w.sessions.login(ANONYMOUS, STAFF, "ops-ann", PASSWORD)
    _, session = await w.sessions.login(ANONYMOUS, STAFF, "ops-ann", PASSWORD, totp_code=totp.now())
    assert w.hasher.verifications - before == 2
    assert session.amr == ("pwd", "otp") and session.mfa_time is not None
    assert w.store.factors[(STAFF, staff.id)].confirmed


async def test_password_hashed_with_old_parameters_is_upgraded_at_login(world: World) -> None:
    w = world
    old = Hasher(Argon2Params(time_cost=1, memory_kib=4096, parallelism=1), workers=1)
    try:
        w.store.hashes[(USER, w.user.id)] = await old.hash(PASSWORD)
    finally:
        old.close()
    assert w.hasher.needs_rehash(w.store.hashes[(USER, w.user.id)])
    err, cost = await _attempt(w, "alice", PASSWORD)
    assert err is None and cost == 1
    upgraded = w.store.hashes[(USER, w.user.id)]
    assert not w.hasher.needs_rehash(upgraded) and await w.hasher.verify(upgraded, PASSWORD)


async def test_no_secret_in_any_login_event(world: World) -> None:
    w = world
    totp = _enrol(w, w.user)
    await _attempt(w, "alice", "a wrong secret password")
    token_and_session = await w.sessions.login(ANONYMOUS, USER, "alice", PASSWORD, totp_code=totp.now())
    text = "\n".join(str(e) for e in w.audit.events)
    for secret in (PASSWORD, "a wrong secret password", totp.secret, token_and_session[0]):
        assert secret not in text


# -- step-up (RFC 9470) ---------------------------------------------------------------------------------


def _as_session(session: SessionRecord, *, staff: bool = False) -> Caller:
    p = principal_pb2.Principal(
        account_id=session.account_id, user_id=session.subject_id, session_id=session.id, staff=staff,
        auth_method=principal_pb2.AUTH_METHOD_SESSION, permissions=["self.manage"],
    )
    return caller_of(p)


async def test_a_step_up_moves_the_sessions_second_factor_time_and_refuses_a_replay(world: World) -> None:
    """How recent it must be for a privileged call is the guard's check (tests/integration/test_guard_policy.py)."""
    w = world
    totp = _enrol(w, w.user)
    step = credentials.current_step()
    _, session = await w.sessions.login(ANONYMOUS, USER, "alice", PASSWORD, totp_code=totp.at(step * 30))
    me = _as_session(session)
    w.advance(301)
    with pytest.raises(InvalidCredentials):  # the login's step again: a replay
        await w.sessions.step_up(me, totp.at(step * 30), "")
    w.clock[0] = datetime.now(UTC)
    when = await w.sessions.step_up(me, totp.at((step + 1) * 30), "")  # the next step, inside the +-1 window
    assert session.mfa_time is not None and when > session.mfa_time


def test_totp_window_is_plus_minus_one_step() -> None:
    secret = credentials.new_totp_secret()
    totp = pyotp.TOTP(secret)
    now = time.time()
    step = credentials.current_step(now)
    for delta in (-1, 0, 1):
        assert credentials.matching_step(secret, totp.at((step + delta) * 30), now) == step + delta
    for delta in (-2, 2):
        assert credentials.matching_step(secret, totp.at((step + delta) * 30), now) is None


def test_recovery_codes_are_ten_of_at_least_64_bits_and_stored_hashed() -> None:
    codes = credentials.new_recovery_codes()
    assert len(codes) >= 10 and len(set(codes)) == len(codes)
    for code in codes:
        raw = code.replace("-", "")
        assert len(raw) * 5 >= 64  # base32: 5 bits a character
        assert credentials.recovery_code_hash(code) == credentials.recovery_code_hash(code.upper().replace("-", " "))
        assert code.encode() not in credentials.recovery_code_hash(code)


def _wide(digits: str) -> str:
    """Full-width digits (U+FF10..U+FF19) for ASCII ones."""
    return "".join(chr(0xFF10 + int(d)) if d.isdigit() else d for d in digits)


@pytest.mark.parametrize(
    "typed", [_wide("012345"), _wide("123456"), "12345\u0666", "123 45" + _wide("6"), _wide("1") + "2345" + _wide("6")]
)
def test_codes_are_ascii_only(typed: str) -> None:
    """Full-width and other non-ASCII digits pass str.isdigit (and then made hmac.compare_digest raise):
    they are wrong codes, at every check."""
    secret = credentials.new_totp_secret()
    now = time.time()
    assert credentials.matching_step(secret, typed, now) is None
    with pytest.raises(MfaCodeInvalid):
        credentials.require_code_format(typed)
    assert credentials.normalize_recovery_code(typed) == ""
