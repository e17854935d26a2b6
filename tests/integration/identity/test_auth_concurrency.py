"""Login under concurrency, over real mTLS against real PostgreSQL, with the real audit and keys services
(TOTP secrets are sealed through keys): the same TOTP code in many parallel logins lets exactly one in, N
parallel wrong passwords move the user's counter to exactly N, and unknown users, wrong passwords and locked
users get one answer at the cost of one argon2 verification each. The in-process service lets the test read
its store's counters and its Hasher's verification count; the audit feed is read through AuditService."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Callable

import grpc
import pyotp
import pytest
from google.rpc import error_details_pb2, status_pb2

from sendsafe.audit.v1 import audit_service_pb2, audit_service_pb2_grpc, event_pb2
from sendsafe.context.v1 import principal_pb2
from sendsafe.identity.v1 import auth_service_pb2 as auth_pb
from sendsafe.identity.v1 import (
    auth_service_pb2_grpc,
    identity_service_pb2,
    identity_service_pb2_grpc,
    staff_service_pb2,
    staff_service_pb2_grpc,
)
from services.identity.adapters.store.pg import PgIdentityStore
from services.identity.service.sessions import Sessions
from svckit.app import App
from tests.conftest import channel_as
from tests.integration.identity.conftest import identity_settings
from tests.integration.identity.fakes import FakeMessaging
from tests.support import CertBundle

PASSWORD = "quartz meadow ladder 42 ripple"
STAFF_PASSWORD = "copper falcon tundra 19 mosaic"
Metadata = tuple[tuple[str, bytes], ...]


def _md(p: principal_pb2.Principal) -> Metadata:
    return (("x-sendsafe-principal-bin", p.SerializeToString()),)


def _address() -> str:
    """A client address of the test's own, in a /64 of its own (the per-address and per-network counters are not
    what these tests are about)."""
    return f"2001:db8:{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}::1"


def _anonymous(address: str) -> Metadata:
    """What the gateway forwards for a public route: where the request came from, nobody yet."""
    return _md(principal_pb2.Principal(client_address=address, user_agent="pytest", request_id=uuid.uuid4().hex))


def _password_login(username: str, password: str = PASSWORD) -> auth_pb.LoginRequest:
    return auth_pb.LoginRequest(username=username, password=password)


def _status(err: grpc.aio.AioRpcError) -> status_pb2.Status:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    raise AssertionError("no rich status")


def _reason(err: grpc.aio.AioRpcError) -> str:
    for d in _status(err).details:
        info = error_details_pb2.ErrorInfo()
        if d.Unpack(info):
            return info.reason
    return ""


async def _customer(app: App, certs: CertBundle) -> tuple[str, int, int]:
    """A new account whose main user has PASSWORD: (username, account_id, user_id)."""
    name = f"auth{uuid.uuid4().hex[:10]}"
    async with channel_as(certs, "ops", app.port, "identity") as ch:
        resp = await identity_service_pb2_grpc.IdentityServiceStub(ch).CreateAccount(
            identity_service_pb2.CreateAccountRequest(
                account_name="Concurrency Pty Ltd", api_username=name, email=f"{name}@example.com", country="AU",
                password=PASSWORD,
            )
        )
    return name, resp.account_id, resp.user.user_id


async def _as_session(auth: auth_service_pb2_grpc.AuthServiceStub, token: str, address: str) -> Metadata:
    """The principal the gateway builds for `Authorization: Bearer <token>`."""
    s = await auth.ResolveSession(auth_pb.ResolveSessionRequest(session_token=token))
    p = principal_pb2.Principal(
        account_id=s.account_id, user_id=s.user_id, api_username=s.username, staff=s.staff,
        auth_method=principal_pb2.AUTH_METHOD_SESSION, session_id=s.session_id, permissions=list(s.permissions),
        client_address=address, request_id=uuid.uuid4().hex,
    )
    if s.HasField("mfa_time"):
        p.mfa_time.CopyFrom(s.mfa_time)
    return _md(p)


async def _enrol_totp(auth: auth_service_pb2_grpc.AuthServiceStub, session: Metadata) -> tuple[pyotp.TOTP, int]:
    """Enrol and confirm TOTP; returns the authenticator and the step its confirmation consumed."""
    enrolment = await auth.StartTotpEnrollment(auth_pb.StartTotpEnrollmentRequest(password=PASSWORD), metadata=session)
    totp = pyotp.parse_uri(enrolment.otpauth_uri)
    step = int(time.time()) // 30
    confirmed = await auth.ConfirmTotpEnrollment(
        auth_pb.ConfirmTotpEnrollmentRequest(code=totp.at(step * 30)), metadata=session
    )
    assert len(confirmed.recovery_codes) == 10
    return totp, step


async def _feed(
    audit_app: App, certs: CertBundle, account_id: int, action: str,
    until: Callable[[list[event_pb2.Event]], bool], deadline: float = 15.0,
) -> list[event_pb2.Event]:
    """The account's audit feed for `action`, read through AuditService, polled until `until` holds (events
    reach the log in the audit client's batches)."""
    reader = _md(principal_pb2.Principal(
        account_id=account_id, user_id=1, permissions=["audit.read"], request_id=uuid.uuid4().hex,
        auth_method=principal_pb2.AUTH_METHOD_API_KEY, api_key_id="test",
    ))
    end = time.monotonic() + deadline
    async with channel_as(certs, "gateway", audit_app.port, "audit") as ch:
        stub = audit_service_pb2_grpc.AuditServiceStub(ch)
        while True:
            events: list[event_pb2.Event] = []
            token = ""
            while True:
                page = await stub.ListEvents(
                    audit_service_pb2.ListEventsRequest(action=action, page_size=500, page_token=token),
                    metadata=reader,
                )
                events.extend(page.events)
                token = page.next_page_token
                if not token:
                    break
            if until(events) or time.monotonic() > end:
                return events
            await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
async def roomy_identity(
    certs: CertBundle, identity_dsn: str, audit_app: App, keys_app: App,
    fake_messaging: tuple[FakeMessaging, object],
) -> AsyncIterator[App]:
    """Identity with a per-user limit far above the race below, so every racer gets as far as the TOTP check
    (with the default limit, racers past the 10th would be turned away as locked before it)."""
    from services.identity.app import build

    app = await build(
        identity_settings(
            certs, identity_dsn, audit_port=audit_app.port, messaging_port=fake_messaging[1].port,  # type: ignore[attr-defined]
            keys_port=keys_app.port, login_max_failures=1000,
        )
    )
    yield app
    await app.stop()


async def test_same_totp_code_in_parallel_logins_lets_exactly_one_in(
    roomy_identity: App, audit_app: App, certs: CertBundle
) -> None:
    racers = 30
    username, account_id, user_id = await _customer(roomy_identity, certs)
    address = _address()
    async with channel_as(certs, "gateway", roomy_identity.port, "identity") as ch:
        auth = auth_service_pb2_grpc.AuthServiceStub(ch)
        first = await auth.Login(_password_login(username), metadata=_anonymous(address))
        totp, confirmed_step = await _enrol_totp(auth, await _as_session(auth, first.session_token, address))
        # At rest the secret is sealed with the account's data key (through the keys service), never in clear.
        store: PgIdentityStore = roomy_identity.extras["store"]
        factor = await store.totp_factor("user", user_id)
        assert factor is not None and factor.confirmed
        for clear in (totp.secret.encode(), base64.b32decode(totp.secret)):
            assert clear not in factor.secret_blob
        # The confirmation consumed its step; the next one is fresh and inside the +-1 window.
        code = totp.at((confirmed_step + 1) * 30)
        request = auth_pb.LoginRequest(username=username, password=PASSWORD, totp_code=code)
        results = await asyncio.gather(
            *(auth.Login(request, metadata=_anonymous(_address())) for _ in range(racers)), return_exceptions=True
        )
        won = [r for r in results if isinstance(r, auth_pb.LoginResponse)]
        lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(won) == 1 and len(lost) == racers - 1, results
        assert list(won[0].session.amr) == ["pwd", "otp"]
        assert {(e.code(), _reason(e)) for e in lost} == {(grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS")}
        # The step stays spent.
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await auth.Login(request, metadata=_anonymous(address))
        assert _reason(again.value) == "INVALID_CREDENTIALS"

    # Every loser held a right code and lost at the database (not at the code check).
    def replayed(events: list[event_pb2.Event]) -> list[event_pb2.Event]:
        return [e for e in events if e.details.get("failure") == "second_factor_replayed"]

    events = await _feed(audit_app, certs, account_id, "auth.login", lambda evs: len(replayed(evs)) >= racers)
    assert len(replayed(events)) == racers  # the 29 losers and the late retry
    otp_successes = [e for e in events if e.outcome == event_pb2.OUTCOME_SUCCESS and e.details["amr"] == "pwd,otp"]
    assert len(otp_successes) == 1 and otp_successes[0].details["session_id"] == won[0].session.session_id


async def test_parallel_wrong_passwords_count_exactly_and_lock_the_user(
    identity_app: App, audit_app: App, certs: CertBundle
) -> None:
    store: PgIdentityStore = identity_app.extras["store"]
    sessions: Sessions = identity_app.extras["sessions"]
    hasher, limit = sessions.hasher, sessions._throttle.max_failures  # what the running service uses
    attempts = limit + 5  # past the lock: attempts over the limit are counted too
    username, account_id, user_id = await _customer(identity_app, certs)
    address = _address()
    async with channel_as(certs, "gateway", identity_app.port, "identity") as ch:
        auth = auth_service_pb2_grpc.AuthServiceStub(ch)
        wrong = auth_pb.LoginRequest(username=username, password="not the password, sorry")
        before = hasher.verifications
        results = await asyncio.gather(
            *(auth.Login(wrong, metadata=_anonymous(address)) for _ in range(attempts)), return_exceptions=True
        )
        assert all(isinstance(r, grpc.aio.AioRpcError) and _reason(r) == "INVALID_CREDENTIALS" for r in results)
        assert hasher.verifications - before == attempts  # one each: the locked ones pay a decoy verification
        assert await store.failures("subject", f"user:{user_id}") == attempts

        # Locked: the right password gets the same answer now.
        with pytest.raises(grpc.aio.AioRpcError) as locked:
            await auth.Login(_password_login(username), metadata=_anonymous(address))
        assert _reason(locked.value) == "INVALID_CREDENTIALS"
        assert await store.failures("subject", f"user:{user_id}") == attempts + 1

    def counted(events: list[event_pb2.Event]) -> dict[int, str]:
        return {int(e.details["failures"]): e.details["failure"] for e in events
                if e.outcome == event_pb2.OUTCOME_FAILURE and "failures" in e.details}

    events = await _feed(audit_app, certs, account_id, "auth.login", lambda evs: len(counted(evs)) > attempts)
    failures = [int(e.details["failures"]) for e in events if "failures" in e.details]
    assert sorted(failures) == list(range(1, attempts + 2))  # every value exactly once: no count was lost
    seen = counted(events)
    assert {n for n, why in seen.items() if why == "bad_password"} == set(range(1, limit + 1))
    assert {n for n, why in seen.items() if why == "locked"} == set(range(limit + 1, attempts + 2))
    lockouts = await _feed(audit_app, certs, account_id, "auth.lockout", bool)
    assert [e.details["failures"] for e in lockouts] == [str(limit)]


async def test_unknown_wrong_and_locked_get_one_answer_for_one_verification(
    identity_app: App, certs: CertBundle
) -> None:
    sessions: Sessions = identity_app.extras["sessions"]
    hasher, limit = sessions.hasher, sessions._throttle.max_failures
    known, _, _ = await _customer(identity_app, certs)
    locked, _, _ = await _customer(identity_app, certs)
    address = _address()
    async with channel_as(certs, "gateway", identity_app.port, "identity") as ch:
        auth = auth_service_pb2_grpc.AuthServiceStub(ch)
        for _ in range(limit):
            with pytest.raises(grpc.aio.AioRpcError):
                await auth.Login(auth_pb.LoginRequest(username=locked, password="wrong"), metadata=_anonymous(address))

        answers = {}
        for path, (username, password) in {
            "unknown user": (f"nobody{uuid.uuid4().hex[:8]}", PASSWORD),
            "wrong password": (known, "not the password, sorry"),
            "locked user, right password": (locked, PASSWORD),
        }.items():
            before = hasher.verifications
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await auth.Login(_password_login(username, password), metadata=_anonymous(address))
            assert hasher.verifications - before == 1, path
            answers[path] = (err.value.code(), err.value.details(), _status(err.value).SerializeToString())
    assert len(set(answers.values())) == 1, answers
    assert next(iter(answers.values()))[0] == grpc.StatusCode.UNAUTHENTICATED


async def test_staff_status_change_reports_the_users_second_factor(identity_app: App, certs: CertBundle) -> None:
    """SetCustomerUserStatus answers with the user's real MFA state (it used to say false for everyone)."""
    username, account_id, user_id = await _customer(identity_app, certs)
    staff_name = f"staff{uuid.uuid4().hex[:8]}"
    async with channel_as(certs, "ops", identity_app.port, "identity") as ops:
        created = await staff_service_pb2_grpc.StaffServiceStub(ops).CreateStaffUser(
            staff_service_pb2.CreateStaffUserRequest(
                username=staff_name, email=f"{staff_name}@sendsafe.example", display_name="Agent",
                role=staff_service_pb2.STAFF_ROLE_SUPPORT_AGENT, password=STAFF_PASSWORD,
            )
        )
    address = _address()
    async with channel_as(certs, "gateway", identity_app.port, "identity") as ch:
        auth = auth_service_pb2_grpc.AuthServiceStub(ch)
        staff = staff_service_pb2_grpc.StaffServiceStub(ch)
        mine = await auth.Login(_password_login(username), metadata=_anonymous(address))
        await _enrol_totp(auth, await _as_session(auth, mine.session_token, address))
        login = await staff.StaffLogin(
            staff_service_pb2.StaffLoginRequest(
                username=staff_name, password=STAFF_PASSWORD, totp_code=pyotp.TOTP(created.totp_secret).now()
            ),
            metadata=_anonymous(address),
        )
        as_staff = await _as_session(auth, login.session_token, address)
        for active in (False, True):
            changed = await staff.SetCustomerUserStatus(
                staff_service_pb2.SetCustomerUserStatusRequest(
                    account_id=account_id, user_id=user_id, active=active, reason="ticket 42: integration test"
                ),
                metadata=as_staff,
            )
            assert changed.user.active is active and changed.user.mfa_enabled
        listed = await staff.GetCustomerAccount(
            staff_service_pb2.GetCustomerAccountRequest(account_id=account_id, reason="ticket 42"), metadata=as_staff
        )
        assert [(u.user_id, u.mfa_enabled) for u in listed.users] == [(user_id, True)]
