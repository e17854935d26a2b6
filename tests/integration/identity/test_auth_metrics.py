"""Issue 16: identity's sign-in counters over real mTLS/PostgreSQL - logins by kind and outcome, lockouts and
step-ups by outcome, read from the process's Prometheus registry (what its /metrics serves). No label holds an
account, a user, a username or an address."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import REGISTRY, generate_latest

from sendsafe.identity.v1 import auth_service_pb2 as auth_pb
from sendsafe.identity.v1 import auth_service_pb2_grpc
from svckit.app import App
from tests.conftest import channel_as
from tests.integration.identity.test_auth_concurrency import (
    _address,
    _anonymous,
    _as_session,
    _customer,
    _enrol_totp,
    _password_login,
    _reason,
)
from tests.support import CertBundle


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_logins_lockouts_and_step_ups_are_counted_by_outcome(identity_app: App, certs: CertBundle) -> None:
    locked_name, _, _ = await _customer(identity_app, certs)
    name, account_id, user_id = await _customer(identity_app, certs)
    before = {
        "ok": _value("sendsafe_identity_logins_total", kind="user", outcome="success"),
        "bad": _value("sendsafe_identity_logins_total", kind="user", outcome="INVALID_CREDENTIALS"),
        "locked": _value("sendsafe_identity_lockouts_total", kind="user"),
        "up_ok": _value("sendsafe_identity_step_ups_total", outcome="success"),
        "up_bad": _value("sendsafe_identity_step_ups_total", outcome="INVALID_CREDENTIALS"),
    }
    address = _address()
    async with channel_as(certs, "gateway", identity_app.port, "identity") as ch:
        auth = auth_service_pb2_grpc.AuthServiceStub(ch)
        # Ten wrong passwords lock the user (LOGIN_MAX_FAILURES=10): ten failures, one lockout.
        for _ in range(10):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await auth.Login(_password_login(locked_name, "not the password"), metadata=_anonymous(address))
            assert _reason(err.value) == "INVALID_CREDENTIALS"
        bad = _value("sendsafe_identity_logins_total", kind="user", outcome="INVALID_CREDENTIALS")
        assert bad == before["bad"] + 10
        assert _value("sendsafe_identity_lockouts_total", kind="user") == before["locked"] + 1

        ok = await auth.Login(_password_login(name), metadata=_anonymous(address))
        assert _value("sendsafe_identity_logins_total", kind="user", outcome="success") == before["ok"] + 1
        session = await _as_session(auth, ok.session_token, address)

        # A step-up with a wrong code fails and is counted; one with the right code succeeds and is counted.
        totp, step = await _enrol_totp(auth, session)
        with pytest.raises(grpc.aio.AioRpcError):
            await auth.StepUp(auth_pb.StepUpRequest(totp_code="000000" if totp.at((step + 1) * 30) != "000000"
                                                    else "111111"), metadata=session)
        assert _value("sendsafe_identity_step_ups_total", outcome="INVALID_CREDENTIALS") == before["up_bad"] + 1
        await auth.StepUp(auth_pb.StepUpRequest(totp_code=totp.at((step + 1) * 30)), metadata=session)
        assert _value("sendsafe_identity_step_ups_total", outcome="success") == before["up_ok"] + 1

    exposed = generate_latest(REGISTRY).decode()
    assert "sendsafe_identity_logins_total" in exposed and "sendsafe_identity_step_ups_total" in exposed
    for line in exposed.splitlines():
        if line.startswith("sendsafe_identity_") and "{" in line:
            labels = dict(pair.split("=", 1) for pair in line[line.index("{") + 1:line.index("}")].split(","))
            assert set(labels) <= {"kind", "outcome"}, line
            for private in (name, locked_name, str(account_id), str(user_id), address):
                assert all(v.strip('"') != private for v in labels.values()), line
