"""Self-service sign-up over real mTLS and PostgreSQL (issue 15): the account opens in test mode, the code goes to
messaging's email channel (a fake NotificationService behind the real Guard, which records what identity asked
for), is stored only as a hash, takes a few attempts, and takes the account out of test mode. Bursts from one
client network get SIGNUP_THROTTLED while another network is unaffected. The gateway forwards the client address
in the principal; here the test chooses it."""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest

from sendsafe.context.v1 import principal_pb2
from sendsafe.identity.v1 import (
    auth_service_pb2,
    auth_service_pb2_grpc,
    identity_service_pb2,
    identity_service_pb2_grpc,
    signup_service_pb2_grpc,
)
from sendsafe.identity.v1 import signup_service_pb2 as pb
from sendsafe.messaging.v1 import (
    messaging_service_pb2_grpc,
    notification_service_pb2,
    notification_service_pb2_grpc,
)
from svckit.app import App
from svckit.server import RunningServer, start_server
from tests.conftest import channel_as
from tests.integration.identity.conftest import identity_settings
from tests.integration.identity.fakes import FakeMessaging
from tests.integration.identity.test_auth_concurrency import PASSWORD, _reason
from tests.support import CertBundle

NETWORK_LIMIT = 3
MAX_ATTEMPTS = 5


class FakeMail(notification_service_pb2_grpc.NotificationServiceServicer):
    """Messaging's email channel as identity sees it: records each request; `fail` makes it UNAVAILABLE."""

    def __init__(self) -> None:
        self.sent: list[notification_service_pb2.SendNotificationRequest] = []
        self.fail = False

    async def SendNotification(
        self, request: notification_service_pb2.SendNotificationRequest, context: grpc.aio.ServicerContext
    ) -> notification_service_pb2.SendNotificationResponse:
        if self.fail:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the mail server is away")
        self.sent.append(request)
        return notification_service_pb2.SendNotificationResponse(message_id=f"<m{len(self.sent)}@test>")

    def code_for(self, account_id: int) -> str:
        bodies = [r.body for r in self.sent if r.account_id == account_id]
        assert bodies, f"no email for account {account_id}"
        found = re.search(r"^\s+(\d{8})$", bodies[-1], re.M)
        assert found, bodies[-1]
        return found.group(1)


@pytest.fixture(scope="module")
async def mail(certs: CertBundle) -> AsyncIterator[tuple[FakeMail, RunningServer]]:
    fake, balances = FakeMail(), FakeMessaging()  # type: ignore[abstract]

    def register(s: grpc.aio.Server) -> None:
        notification_service_pb2_grpc.add_NotificationServiceServicer_to_server(fake, s)
        messaging_service_pb2_grpc.add_MessagingServiceServicer_to_server(balances, s)

    server = await start_server(
        listen="127.0.0.1:0", tls=certs.tls("messaging"), register=register,
        service_names=["sendsafe.messaging.v1.NotificationService", "sendsafe.messaging.v1.MessagingService"],
    )
    yield fake, server
    await server.stop(0)


@pytest.fixture(scope="module")
async def identity(
    certs: CertBundle, identity_dsn: str, audit_app: App, keys_app: App, mail: tuple[FakeMail, RunningServer],
) -> AsyncIterator[App]:
    """Identity with a small per-network sign-up limit, an exact-address limit far above it, and no wait between
    codes."""
    from services.identity.app import build

    app = await build(identity_settings(
        certs, identity_dsn, audit_port=audit_app.port, messaging_port=mail[1].port, keys_port=keys_app.port,
        signup_address_max=1000, signup_ipv4_network_max=NETWORK_LIMIT, signup_ipv6_network_max=NETWORK_LIMIT,
        signup_resend_interval_seconds=0,
    ))
    yield app
    await app.stop()


def _from(address: str) -> tuple[tuple[str, bytes], ...]:
    p = principal_pb2.Principal(client_address=address, user_agent="pytest", request_id=uuid.uuid4().hex)
    return (("x-sendsafe-principal-bin", p.SerializeToString()),)


def _net4() -> str:
    return f"10.{random.randrange(256)}.{random.randrange(256)}"


def _request(username: str = "", **kw: str) -> pb.SignupRequest:
    username = username or f"su{uuid.uuid4().hex[:10]}"
    fields = {"name": "Ada Lovelace", "username": username, "email": f"{username}@example.com", "password": PASSWORD,
              "country": "AU", **kw}
    return pb.SignupRequest(**fields)


async def _signup(app: App, certs: CertBundle, req: pb.SignupRequest, address: str) -> pb.SignupResponse:
    async with channel_as(certs, "gateway", app.port, "identity") as ch:
        return await signup_service_pb2_grpc.SignupServiceStub(ch).Signup(req, metadata=_from(address))


async def _refused(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    return err.value.code(), _reason(err.value)


async def _test_mode(app: App, certs: CertBundle, user_id: int) -> bool:
    async with channel_as(certs, "ops", app.port, "identity") as ch:
        got = await identity_service_pb2_grpc.IdentityServiceStub(ch).GetUser(
            identity_service_pb2.GetUserRequest(user_id=user_id))
    return bool(got.user.test_mode)


async def test_signup_opens_a_test_mode_account_and_the_emailed_code_takes_it_out(
    identity: App, certs: CertBundle, mail: tuple[FakeMail, RunningServer], identity_dsn: str,
) -> None:
    fake = mail[0]
    req = _request(timezone="Europe/London")
    made = await _signup(identity, certs, req, f"{_net4()}.7")
    assert made.username == req.username and made.account_id > 0 and made.user_id > 0
    assert made.test_mode and made.email_verification_pending and made.verification_email_sent
    assert PASSWORD not in str(made)
    # The email request names the account and goes to its owners: the address itself never leaves identity.
    (sent,) = [r for r in fake.sent if r.account_id == made.account_id]
    assert sent.account_owners and not sent.to and sent.channel == notification_service_pb2.NOTIFICATION_CHANNEL_EMAIL
    assert req.username in sent.body and "test mode" in sent.body
    code = fake.code_for(made.account_id)
    assert await _test_mode(identity, certs, made.user_id)
    # At rest: the code only as an argon2id hash; the email and names sealed.
    conn = await asyncpg.connect(identity_dsn)
    try:
        row = await conn.fetchrow("SELECT * FROM signup_verifications WHERE account_id = $1", made.account_id)
        user = await conn.fetchrow("SELECT * FROM users WHERE id = $1", made.user_id)
        account = await conn.fetchrow("SELECT * FROM accounts WHERE id = $1", made.account_id)
    finally:
        await conn.close()
    assert row["code_hash"].startswith("$argon2id$") and code not in row["code_hash"]
    assert row["origin"] == "signup" and row["codes_sent"] == 1 and row["verify_time"] is None
    assert user["email"] is None and user["first_name"] is None and user["email_ct"] and user["first_name_ct"]
    assert account["timezone"] == "Europe/London" and account["test_mode"]

    async with channel_as(certs, "gateway", identity.port, "identity") as ch:
        signup = signup_service_pb2_grpc.SignupServiceStub(ch)
        wrong = f"{(int(code) + 1) % 10**8:08d}"
        refused = await _refused(signup.VerifySignup(pb.VerifySignupRequest(username=req.username, code=wrong),
                                                     metadata=_from("192.0.2.1")))
        assert refused == (grpc.StatusCode.INVALID_ARGUMENT, "SIGNUP_CODE_INVALID")
        assert await _test_mode(identity, certs, made.user_id)
        done = await signup.VerifySignup(pb.VerifySignupRequest(username=req.username.upper(), code=code),
                                         metadata=_from("192.0.2.1"))
        assert done.account_id == made.account_id and not done.test_mode and done.verify_time.seconds > 0
        again = await _refused(signup.VerifySignup(pb.VerifySignupRequest(username=req.username, code=code),
                                                   metadata=_from("192.0.2.1")))
        assert again == (grpc.StatusCode.INVALID_ARGUMENT, "SIGNUP_CODE_INVALID")  # used up
        # A verified account gets no more codes, with the same answer as anyone else.
        before = len(fake.sent)
        await signup.ResendSignupCode(pb.ResendSignupCodeRequest(username=req.username), metadata=_from("192.0.2.1"))
        assert len(fake.sent) == before
        # The password chosen at sign-up logs in.
        session = await auth_service_pb2_grpc.AuthServiceStub(ch).Login(
            auth_service_pb2.LoginRequest(username=req.username, password=PASSWORD), metadata=_from("192.0.2.1"))
        assert session.session_token
    assert not await _test_mode(identity, certs, made.user_id)


async def test_a_taken_username_a_weak_password_and_a_bad_email_are_refused_clearly(
    identity: App, certs: CertBundle,
) -> None:
    net = _net4()
    first = await _signup(identity, certs, _request(), f"{net}.1")
    async with channel_as(certs, "gateway", identity.port, "identity") as ch:
        signup = signup_service_pb2_grpc.SignupServiceStub(ch)
        cases = {
            "taken (any case)": (_request(first.username.upper()), grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS"),
            "weak password": (_request(password="password1234"), grpc.StatusCode.INVALID_ARGUMENT, "PASSWORD_REJECTED"),
            "no password": (_request(password=""), grpc.StatusCode.INVALID_ARGUMENT, "PASSWORD_REJECTED"),
            "bad email": (_request(email="not-an-address"), grpc.StatusCode.INVALID_ARGUMENT, "EMAIL_INVALID"),
            "no name": (_request(name=""), grpc.StatusCode.INVALID_ARGUMENT, "NAME_INVALID"),
            "bad country": (_request(country="ZZ"), grpc.StatusCode.INVALID_ARGUMENT, "COUNTRY_INVALID"),
            "bad timezone": (_request(timezone="Mars/Olympus"), grpc.StatusCode.INVALID_ARGUMENT, "TIMEZONE_INVALID"),
        }
        for what, (req, code, reason) in cases.items():
            try:
                await signup.Signup(req, metadata=_from(f"{_net4()}.2"))
            except grpc.aio.AioRpcError as err:
                assert (err.code(), _reason(err)) == (code, reason), what
            else:
                pytest.fail(f"{what}: accepted")


async def test_a_burst_from_one_network_is_throttled_and_another_network_is_not(
    identity: App, certs: CertBundle,
) -> None:
    net = _net4()
    for i in range(NETWORK_LIMIT):  # each from another address of the same /24
        await _signup(identity, certs, _request(), f"{net}.{10 + i}")
    async with channel_as(certs, "gateway", identity.port, "identity") as ch:
        signup = signup_service_pb2_grpc.SignupServiceStub(ch)
        got = await _refused(signup.Signup(_request(), metadata=_from(f"{net}.200")))
        assert got == (grpc.StatusCode.RESOURCE_EXHAUSTED, "SIGNUP_THROTTLED")
        v6 = f"2001:db8:{random.getrandbits(16):x}:{random.getrandbits(16):x}"
        for i in range(NETWORK_LIMIT):
            await signup.Signup(_request(), metadata=_from(f"{v6}::{i + 1:x}"))
        got = await _refused(signup.Signup(_request(), metadata=_from(f"{v6}:ffff::1")))
        assert got == (grpc.StatusCode.RESOURCE_EXHAUSTED, "SIGNUP_THROTTLED")  # rotating inside the /64
    # Another network is unaffected.
    other = await _signup(identity, certs, _request(), f"{_net4()}.9")
    assert other.test_mode


async def test_a_code_takes_a_few_attempts_then_only_a_new_one_works(
    identity: App, certs: CertBundle, mail: tuple[FakeMail, RunningServer],
) -> None:
    fake = mail[0]
    made = await _signup(identity, certs, _request(), f"{_net4()}.3")
    code = fake.code_for(made.account_id)
    wrong = f"{(int(code) + 1) % 10**8:08d}"
    async with channel_as(certs, "gateway", identity.port, "identity") as ch:
        signup = signup_service_pb2_grpc.SignupServiceStub(ch)
        where = _from(f"{_net4()}.4")
        for _ in range(MAX_ATTEMPTS):
            got = await _refused(signup.VerifySignup(pb.VerifySignupRequest(username=made.username, code=wrong),
                                                     metadata=where))
            assert got[1] == "SIGNUP_CODE_INVALID"
        got = await _refused(signup.VerifySignup(pb.VerifySignupRequest(username=made.username, code=code),
                                                 metadata=where))
        assert got[1] == "SIGNUP_CODE_INVALID"  # the right code, too late
        # An unknown username gets exactly the same answer, for verify and for resend.
        got = await _refused(signup.VerifySignup(pb.VerifySignupRequest(username="nobody-" + made.username, code=code),
                                                 metadata=where))
        assert got == (grpc.StatusCode.INVALID_ARGUMENT, "SIGNUP_CODE_INVALID")
        before = len(fake.sent)
        assert await signup.ResendSignupCode(pb.ResendSignupCodeRequest(username="nobody-x1"), metadata=where) == \
            pb.ResendSignupCodeResponse()
        assert len(fake.sent) == before
        await signup.ResendSignupCode(pb.ResendSignupCodeRequest(username=made.username), metadata=where)
        fresh = fake.code_for(made.account_id)
        assert len(fake.sent) == before + 1 and "signup-" in fake.sent[-1].notification_id
        if fresh != code:  # the old code no longer works (1 in 10^8 they are equal)
            got = await _refused(signup.VerifySignup(pb.VerifySignupRequest(username=made.username, code=code),
                                                     metadata=where))
            assert got[1] == "SIGNUP_CODE_INVALID"
        done = await signup.VerifySignup(pb.VerifySignupRequest(username=made.username, code=fresh), metadata=where)
        assert not done.test_mode


async def test_resends_are_limited_per_signup(
    identity: App, certs: CertBundle, mail: tuple[FakeMail, RunningServer],
) -> None:
    fake = mail[0]
    made = await _signup(identity, certs, _request(), f"{_net4()}.5")
    async with channel_as(certs, "gateway", identity.port, "identity") as ch:
        signup = signup_service_pb2_grpc.SignupServiceStub(ch)
        for _ in range(10):
            await signup.ResendSignupCode(pb.ResendSignupCodeRequest(username=made.username),
                                          metadata=_from(f"{_net4()}.6"))
    assert len([r for r in fake.sent if r.account_id == made.account_id]) == 5  # the first and 4 more


async def test_the_account_stays_when_the_email_cannot_be_sent_and_a_resend_delivers_it(
    identity: App, certs: CertBundle, mail: tuple[FakeMail, RunningServer],
) -> None:
    fake = mail[0]
    fake.fail = True
    try:
        made = await _signup(identity, certs, _request(), f"{_net4()}.8")
    finally:
        fake.fail = False
    assert made.test_mode and made.email_verification_pending and not made.verification_email_sent
    async with channel_as(certs, "gateway", identity.port, "identity") as ch:
        signup = signup_service_pb2_grpc.SignupServiceStub(ch)
        await signup.ResendSignupCode(pb.ResendSignupCodeRequest(username=made.username), metadata=_from("192.0.2.9"))
        done = await signup.VerifySignup(
            pb.VerifySignupRequest(username=made.username, code=fake.code_for(made.account_id)),
            metadata=_from("192.0.2.9"))
    assert not done.test_mode


async def test_only_the_gateway_may_call_signup(identity: App, certs: CertBundle) -> None:
    async with channel_as(certs, "messaging", identity.port, "identity") as ch:
        stub = signup_service_pb2_grpc.SignupServiceStub(ch)
        got = await _refused(stub.Signup(_request(), metadata=_from("10.0.0.1")))
    assert got[0] == grpc.StatusCode.PERMISSION_DENIED
