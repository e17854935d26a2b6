"""Login throttling per client network, over real mTLS and PostgreSQL (issue 12): an IPv6 client rotating
addresses inside its /64, or many addresses of one IPv4 /24, hit the network's limit even though no single
address reaches its own. The gateway forwards the client address in the principal; here the test chooses it."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from sendsafe.context.v1 import principal_pb2
from sendsafe.identity.v1 import auth_service_pb2 as auth_pb
from sendsafe.identity.v1 import auth_service_pb2_grpc, identity_service_pb2, identity_service_pb2_grpc
from svckit.app import App
from tests.conftest import channel_as
from tests.integration.identity.conftest import identity_settings
from tests.integration.identity.fakes import FakeMessaging
from tests.integration.identity.test_auth_concurrency import PASSWORD, _reason
from tests.support import CertBundle

IPV6_LIMIT = 5
IPV4_LIMIT = 8


def _from(address: str) -> tuple[tuple[str, bytes], ...]:
    p = principal_pb2.Principal(client_address=address, user_agent="pytest", request_id=uuid.uuid4().hex)
    return (("x-sendsafe-principal-bin", p.SerializeToString()),)


@pytest.fixture(scope="module")
async def identity(
    certs: CertBundle, identity_dsn: str, audit_app: App, keys_app: App, fake_messaging: tuple[FakeMessaging, object],
) -> AsyncIterator[App]:
    """Identity with small network limits and an exact-address limit far above them."""
    from services.identity.app import build

    app = await build(
        identity_settings(
            certs, identity_dsn, audit_port=audit_app.port, messaging_port=fake_messaging[1].port,  # type: ignore[attr-defined]
            keys_port=keys_app.port, login_address_max_failures=1000,
            login_ipv6_network_max_failures=IPV6_LIMIT, login_ipv4_network_max_failures=IPV4_LIMIT,
        )
    )
    yield app
    await app.stop()


async def _customer(app: App, certs: CertBundle) -> str:
    name = f"net{uuid.uuid4().hex[:10]}"
    async with channel_as(certs, "ops", app.port, "identity") as ch:
        await identity_service_pb2_grpc.IdentityServiceStub(ch).CreateAccount(
            identity_service_pb2.CreateAccountRequest(
                account_name="Networks Pty Ltd", api_username=name, email=f"{name}@example.com", country="AU",
                password=PASSWORD,
            )
        )
    return name


async def _wrong(auth: auth_service_pb2_grpc.AuthServiceStub, username: str, address: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await auth.Login(auth_pb.LoginRequest(username=username, password="not the password"), metadata=_from(address))
    return _reason(err.value)


def _ipv6_net() -> str:
    return f"2001:db8:{random.getrandbits(16):x}:{random.getrandbits(16):x}"


async def test_an_ipv6_client_rotating_inside_its_64_is_throttled(identity: App, certs: CertBundle) -> None:
    username = await _customer(identity, certs)
    net = _ipv6_net()
    async with channel_as(certs, "gateway", identity.port, "identity") as ch:
        auth = auth_service_pb2_grpc.AuthServiceStub(ch)
        reasons = [await _wrong(auth, f"nobody{i}", f"{net}:{i:x}::{i + 1:x}") for i in range(IPV6_LIMIT)]
        assert reasons == ["INVALID_CREDENTIALS"] * IPV6_LIMIT  # each address is new
        with pytest.raises(grpc.aio.AioRpcError) as throttled:
            await auth.Login(auth_pb.LoginRequest(username=username, password=PASSWORD), metadata=_from(f"{net}::beef"))
        assert throttled.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _reason(throttled.value) == "LOGIN_THROTTLED" and "network" in (throttled.value.details() or "")
        # Another /64 is another subscriber: not throttled, and the right password works there.
        ok = await auth.Login(auth_pb.LoginRequest(username=username, password=PASSWORD),
                              metadata=_from(f"{_ipv6_net()}::1"))
        assert ok.session_token


async def test_an_ipv4_24_is_throttled_at_its_looser_limit(identity: App, certs: CertBundle) -> None:
    net = f"198.18.{random.randrange(256)}"  # a test address, never contacted
    async with channel_as(certs, "gateway", identity.port, "identity") as ch:
        auth = auth_service_pb2_grpc.AuthServiceStub(ch)
        reasons = [await _wrong(auth, "nobody", f"{net}.{i + 1}") for i in range(IPV4_LIMIT - 1)]
        # The IPv4-mapped IPv6 form of an address in the /24 is the same network.
        reasons.append(await _wrong(auth, "nobody", f"::ffff:{net}.200"))
        assert reasons == ["INVALID_CREDENTIALS"] * IPV4_LIMIT
        assert await _wrong(auth, "nobody", f"{net}.201") == "LOGIN_THROTTLED"
        assert await _wrong(auth, "nobody", "198.19.0.1") == "INVALID_CREDENTIALS"  # the next /24 is not


async def test_a_success_is_forgiven_to_its_network_too(identity: App, certs: CertBundle) -> None:
    username = await _customer(identity, certs)
    net = _ipv6_net()
    store = identity.extras["store"]
    async with channel_as(certs, "gateway", identity.port, "identity") as ch:
        auth = auth_service_pb2_grpc.AuthServiceStub(ch)
        for i in range(3):
            await auth.Login(auth_pb.LoginRequest(username=username, password=PASSWORD), metadata=_from(f"{net}::{i}"))
    assert await store.failures("network", f"{net}::/64") == 0
    assert await store.failures("address", f"{net}::1") == 0
