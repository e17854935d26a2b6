"""The identity service over real mTLS against a real PostgreSQL database and the real audit service."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import clicksend.models
import grpc
import pytest
from google.protobuf.message import DecodeError, Message

from sendsafe.audit.v1 import event_pb2
from sendsafe.context.v1 import principal_pb2
from sendsafe.identity.v1 import identity_service_pb2 as pb
from sendsafe.identity.v1 import identity_service_pb2_grpc
from sendsafe.options.v1 import options_pb2
from svckit.app import App
from svckit.permissions import PERMISSION_FLAGS
from svckit.rpcstatus import error_reason as _reason
from tests.conftest import channel_as
from tests.integration.identity.fakes import BALANCE, FakeMessaging
from tests.support import CertBundle


def _principal(account_id: int, user_id: int, *perms: str) -> tuple[tuple[str, bytes], ...]:
    p = principal_pb2.Principal(
        account_id=account_id,
        user_id=user_id,
        permissions=list(perms),
        request_id=uuid.uuid4().hex,
        auth_method=principal_pb2.AUTH_METHOD_API_KEY,
        api_key_id="key1",
        client_address="203.0.113.9",
    )
    return (("x-sendsafe-principal-bin", p.SerializeToString()),)


def _wire_json(msg: Message) -> dict[str, Any]:
    """The external JSON the gateway derives: wire names, presence respected, int64 as ints."""
    out: dict[str, Any] = {}
    for field in msg.DESCRIPTOR.fields:
        if field.has_presence and not msg.HasField(field.name):
            continue
        name = field.GetOptions().Extensions[options_pb2.wire_name] or field.name
        value = getattr(msg, field.name)
        out[name] = _wire_json(value) if field.message_type is not None else value
    return out


def _unique(prefix: str = "user") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def _create_request(username: str, **kw: Any) -> pb.CreateAccountRequest:
    args: dict[str, Any] = dict(
        account_name="Acme Pty Ltd",
        api_username=username,
        email=f"{username}@Example.com",
        phone_number="0411 111 111",
        first_name="Ada",
        last_name="Lovelace",
        country="au",
    )
    args.update(kw)
    return pb.CreateAccountRequest(**args)


async def _create(app: App, certs: CertBundle, username: str, **kw: Any) -> pb.CreateAccountResponse:
    async with channel_as(certs, "ops", app.port, "identity") as ch:
        return await identity_service_pb2_grpc.IdentityServiceStub(ch).CreateAccount(_create_request(username, **kw))


async def _audit_events(audit_app: App) -> list[event_pb2.Event]:
    rows = await audit_app.extras["service"]._store.chain_rows(0, 1_000_000)  # type: ignore[attr-defined]
    out = []
    for r in rows:
        # The audit suite shares this log and tampers with a row on purpose; skip what does not parse.
        with contextlib.suppress(DecodeError):
            out.append(event_pb2.Event.FromString(r[1]))
    return out


async def test_create_account_as_ops(identity_app: App, audit_app: App, certs: CertBundle) -> None:
    name = _unique()
    resp = await _create(identity_app, certs, name)
    user = resp.user
    assert resp.account_id > 0 and user.account_id == resp.account_id
    assert user.api_username == name and user.is_main and user.active and not user.test_mode
    assert set(user.permissions) == set(PERMISSION_FLAGS)  # the main user holds every customer permission
    assert user.create_time.seconds > 0
    events = [e for e in await _audit_events(audit_app) if e.action == "account.create"]
    (ev,) = [e for e in events if e.resource.id == str(resp.account_id)]
    assert ev.outcome == event_pb2.OUTCOME_SUCCESS and ev.service == "identity"
    assert ev.actor.type == "service" and ev.actor.id == "ops" and ev.actor.account_id == resp.account_id
    shown = event_pb2.Event()
    shown.CopyFrom(ev)
    for random_hex in ("event_id", "request_id", "trace_id", "prev_hash", "hash"):  # may spell "0411" by chance
        shown.ClearField(random_hex)  # type: ignore[arg-type]
    assert "example.com" not in str(shown).lower() and "0411" not in str(shown)


async def test_duplicate_username_is_already_exists(identity_app: App, certs: CertBundle) -> None:
    name = _unique()
    await _create(identity_app, certs, name)
    for dup in (name, name.upper()):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _create(identity_app, certs, dup, account_name="Someone Else")
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert _reason(info.value) == "ALREADY_EXISTS"


async def test_invalid_create_is_invalid_argument(identity_app: App, certs: CertBundle) -> None:
    cases = {
        "USERNAME_INVALID": dict(api_username="no"),
        "EMAIL_INVALID": dict(email="not-an-email"),
        "PHONE_INVALID": dict(phone_number="+61 4"),
        "COUNTRY_INVALID": dict(country="ZZ"),
        "NAME_INVALID": dict(account_name=" "),
    }
    async with channel_as(certs, "ops", identity_app.port, "identity") as ch:
        stub = identity_service_pb2_grpc.IdentityServiceStub(ch)
        for reason, override in cases.items():
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.CreateAccount(_create_request(_unique(), **override))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, reason
            assert _reason(info.value) == reason


async def test_create_account_from_gateway_is_refused(identity_app: App, certs: CertBundle) -> None:
    async with channel_as(certs, "gateway", identity_app.port, "identity") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await identity_service_pb2_grpc.IdentityServiceStub(ch).CreateAccount(_create_request(_unique()))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _reason(info.value) == "CALLER_NOT_ALLOWED"


async def test_get_account_as_gateway(
    identity_app: App, certs: CertBundle, fake_messaging: tuple[FakeMessaging, object]
) -> None:
    name = _unique()
    created = await _create(identity_app, certs, name)
    uid, aid = created.user.user_id, created.account_id
    async with channel_as(certs, "gateway", identity_app.port, "identity") as ch:
        resp = await identity_service_pb2_grpc.IdentityServiceStub(ch).GetAccount(
            pb.GetAccountRequest(), metadata=_principal(aid, uid, "account.read")
        )
    assert aid in fake_messaging[0].balance_calls
    assert (resp.user_id, resp.account, resp.username) == (uid, aid, name)
    assert resp.user_email == f"{name}@example.com"
    assert (resp.active, resp.banned) == (1, 0)
    assert resp.balance == BALANCE
    assert resp.user_phone == "+61411111111"
    assert (resp.user_first_name, resp.user_last_name) == ("Ada", "Lovelace")
    assert (resp.account_name, resp.country, resp.default_country_sms) == ("Acme Pty Ltd", "AU", "AU")
    assert resp.timezone == "Australia/Melbourne"
    assert abs(resp.date_sign_up - created.user.create_time.seconds) <= 1
    assert resp.currency.currency_name_short == "AUD"
    sub = resp.subaccount
    assert sub.api_key == "********" and sub.is_main == 1 and sub.subaccount_id == uid
    assert sub.access_sms == 1 and sub.access_reporting == 1 and sub.hide_pricing == 0
    assert not sub.HasField("notes")

    # The response is what the official SDK accepts as `GET /v3/account` data.
    data = _wire_json(resp)
    assert {"_currency", "_subaccount"} <= data.keys() and isinstance(data["account"], int)
    model = clicksend.models.Account.from_dict(data)
    assert model is not None and model.subaccount is not None and model.currency is not None
    assert model.user_id == uid and model.balance == BALANCE and model.date_sign_up == resp.date_sign_up
    assert model.subaccount.api_key == "********" and model.currency.currency_name_long == "Australian Dollars"


async def test_get_account_needs_account_read(identity_app: App, certs: CertBundle) -> None:
    created = await _create(identity_app, certs, _unique())
    async with channel_as(certs, "gateway", identity_app.port, "identity") as ch:
        stub = identity_service_pb2_grpc.IdentityServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetAccount(
                pb.GetAccountRequest(), metadata=_principal(created.account_id, created.user.user_id, "sms.send")
            )
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert _reason(info.value) == "MISSING_PERMISSION"
        # A principal for a user of another account finds nothing.
        elsewhere = _principal(created.account_id + 1, created.user.user_id, "account.read")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetAccount(pb.GetAccountRequest(), metadata=elsewhere)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert _reason(info.value) == "USER_NOT_FOUND"


async def test_get_user(identity_app: App, audit_app: App, certs: CertBundle) -> None:
    name = _unique()
    created = await _create(identity_app, certs, name)
    async with channel_as(certs, "gateway", identity_app.port, "identity") as ch:
        stub = identity_service_pb2_grpc.IdentityServiceStub(ch)
        got = await stub.GetUser(pb.GetUserRequest(user_id=created.user.user_id))
        assert got.user == created.user
        by_name = await stub.GetUser(pb.GetUserRequest(api_username=name.upper()))
        assert by_name.user == created.user
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetUser(pb.GetUserRequest(user_id=created.user.user_id + 10_000))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert _reason(info.value) == "USER_NOT_FOUND"
    async with channel_as(certs, "messaging", identity_app.port, "identity") as ch:  # re-checks alert owners
        got = await identity_service_pb2_grpc.IdentityServiceStub(ch).GetUser(
            pb.GetUserRequest(user_id=created.user.user_id))
        assert got.user == created.user
    async with channel_as(certs, "keys", identity_app.port, "identity") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await identity_service_pb2_grpc.IdentityServiceStub(ch).GetUser(
                pb.GetUserRequest(user_id=created.user.user_id)
            )
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert _reason(info.value) == "CALLER_NOT_ALLOWED"
    await identity_app.extras["audit"].flush()  # type: ignore[attr-defined]
    denied = [e for e in await _audit_events(audit_app) if e.action == "rpc.denied" and e.service == "identity"]
    assert any(e.actor.id == "keys" and e.resource.id.endswith("/GetUser") for e in denied)


async def test_get_account_owners_is_the_main_users_email_for_messaging_only(
    identity_app: App, certs: CertBundle
) -> None:
    """Security notifications go to the account's main user (issue 14): messaging asks identity for its address;
    a sub-account is no owner, an unknown account has none, and no other service may ask."""
    name = _unique()
    created = await _create(identity_app, certs, name)
    admin = _principal(created.account_id, created.user.user_id, *created.user.permissions)
    async with channel_as(certs, "gateway", identity_app.port, "identity") as gw:
        await identity_service_pb2_grpc.IdentityServiceStub(gw).CreateSubaccount(pb.CreateSubaccountRequest(
            api_username=_unique("sub"), password="quartz meadow ladder 42 ripple", email="sub@example.com",
            first_name="Sub", last_name="User"), metadata=admin)
    async with channel_as(certs, "messaging", identity_app.port, "identity") as ch:
        stub = identity_service_pb2_grpc.IdentityServiceStub(ch)
        got = await stub.GetAccountOwners(pb.GetAccountOwnersRequest(account_id=created.account_id))
        assert [(o.user_id, o.email) for o in got.owners] == [(created.user.user_id, f"{name}@example.com")]
        assert not (await stub.GetAccountOwners(pb.GetAccountOwnersRequest(account_id=10**12))).owners
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetAccountOwners(pb.GetAccountOwnersRequest(account_id=0))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for other in ("gateway", "audit", "keys"):
        async with channel_as(certs, other, identity_app.port, "identity") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await identity_service_pb2_grpc.IdentityServiceStub(ch).GetAccountOwners(
                    pb.GetAccountOwnersRequest(account_id=created.account_id))
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_cut_off_from_messaging_get_account_is_unavailable(
    identity_app: App, cut_off_identity: App, certs: CertBundle
) -> None:
    created = await _create(identity_app, certs, _unique())
    async with channel_as(certs, "gateway", cut_off_identity.port, "identity") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await identity_service_pb2_grpc.IdentityServiceStub(ch).GetAccount(
                pb.GetAccountRequest(), metadata=_principal(created.account_id, created.user.user_id, "account.read")
            )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert _reason(info.value) == "BALANCE_UNAVAILABLE"


async def test_create_account_fails_closed_without_audit(
    identity_app: App, cut_off_identity: App, certs: CertBundle
) -> None:
    name = _unique()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _create(cut_off_identity, certs, name)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert _reason(info.value) == "AUDIT_UNAVAILABLE"
    # Nothing was written: the user does not exist and the name is still free.
    async with channel_as(certs, "ops", identity_app.port, "identity") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as nf:
            await identity_service_pb2_grpc.IdentityServiceStub(ch).GetUser(pb.GetUserRequest(api_username=name))
        assert nf.value.code() == grpc.StatusCode.NOT_FOUND
    store = identity_app.extras["service"]._store  # type: ignore[attr-defined]
    async with store._pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM users WHERE lower(api_username) = $1", name.lower()) == 0
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM accounts a WHERE NOT a.platform"
                " AND NOT EXISTS (SELECT 1 FROM users u WHERE u.account_id = a.id)"
            )
            == 0
        )
    created = await _create(identity_app, certs, name)
    assert created.user.api_username == name
