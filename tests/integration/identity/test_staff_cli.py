"""`python -m tools.staff create` against the real identity service over mTLS (ops certificate): what it prints
once is enough for the new member to log in with a second factor, with the role asked for."""

from __future__ import annotations

import asyncio
import re
import stat
import uuid
from pathlib import Path

import pyotp
import pytest

from sendsafe.context.v1 import principal_pb2
from sendsafe.identity.v1 import auth_service_pb2, auth_service_pb2_grpc, staff_service_pb2, staff_service_pb2_grpc
from svckit.app import App
from svckit.permissions import ROLE_PERMISSIONS
from tests.conftest import channel_as
from tests.support import CertBundle
from tools import staff


async def test_create_prints_a_one_time_enrolment_that_logs_the_member_in(
    identity_app: App, certs: CertBundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"ann{uuid.uuid4().hex[:8]}"
    qr = tmp_path / "ann.png"
    args = ["create", "--identity", f"127.0.0.1:{identity_app.port}", "--certs", str(certs.dir), "--username", name,
            "--email", f"{name}@sendsafe.example", "--role", "support_agent", "--display-name", "Ann", "--qr", str(qr)]
    assert await asyncio.to_thread(staff.main, args) == 0
    out = capsys.readouterr().out
    password = re.search(r"initial password: (\S+)", out)
    secret = re.search(r"TOTP secret: +(\S+)", out)
    codes = re.findall(r"^ {4}([a-z2-7]{4}(?:-[a-z2-7]{4}){3})$", out, re.MULTILINE)
    assert password and secret and len(codes) == 10 and "role support_agent" in out
    assert qr.read_bytes().startswith(b"\x89PNG") and stat.S_IMODE(qr.stat().st_mode) == 0o600

    where = principal_pb2.Principal(client_address="192.0.2.50")
    anonymous = (("x-sendsafe-principal-bin", where.SerializeToString()),)
    async with channel_as(certs, "gateway", identity_app.port, "identity") as ch:
        login = await staff_service_pb2_grpc.StaffServiceStub(ch).StaffLogin(
            staff_service_pb2.StaffLoginRequest(
                username=name, password=password.group(1), totp_code=pyotp.TOTP(secret.group(1)).now()
            ),
            metadata=anonymous,
        )
        assert list(login.session.amr) == ["pwd", "otp"]
        who = await auth_service_pb2_grpc.AuthServiceStub(ch).ResolveSession(
            auth_service_pb2.ResolveSessionRequest(session_token=login.session_token)
        )
    assert who.staff and set(who.permissions) == ROLE_PERMISSIONS["support_agent"]

    # The same username again fails cleanly; an existing QR path is never overwritten.
    assert await asyncio.to_thread(staff.main, [*args[:-2]]) == 1
    assert "ALREADY_EXISTS" in capsys.readouterr().err
    assert staff.main(args) == 2
    assert "exists" in capsys.readouterr().err


def test_roles_are_the_directorys_roles() -> None:
    assert set(staff.ROLES) == set(ROLE_PERMISSIONS)
    with pytest.raises(SystemExit):
        staff.main(["create", "--identity", "x:1", "--certs", ".", "--username", "a", "--email", "e", "--role", "root"])
