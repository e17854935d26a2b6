"""Add a member to the staff directory (operator tooling; staff are never created through the gateway).

    python -m tools.staff create --identity HOST:PORT --certs .dev/certs \\
        --username ann --email ann@sendsafe.example --role security_admin [--display-name "Ann"] [--qr ann.png]

Runs as the `ops` service identity (its mTLS certificate under --certs), like tools.bootstrap, and calls
identity's CreateStaffUser with a random initial password. It prints, once, what the new member needs: the
initial password, the TOTP secret and otpauth URI (with --qr, a QR image written 0600) and the recovery codes.
Nothing is stored or logged here: hand them over on a channel you trust, then the member
1. logs in with `POST /v1/staff/login` {username, password, totp_code}: the first code confirms the factor
   (staff cannot log in without a second factor),
2. changes the password at once with `PUT /v1/auth/password` (every other session ends).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc

from sendsafe.identity.v1 import staff_service_pb2, staff_service_pb2_grpc
from svckit.rpc import secure_channel
from tools.keyadmin import ops_tls

ROLES = {
    "support_readonly": staff_service_pb2.STAFF_ROLE_SUPPORT_READONLY,
    "support_agent": staff_service_pb2.STAFF_ROLE_SUPPORT_AGENT,
    "security_admin": staff_service_pb2.STAFF_ROLE_SECURITY_ADMIN,
    "platform_admin": staff_service_pb2.STAFF_ROLE_PLATFORM_ADMIN,
}


@dataclass(frozen=True)
class Enrolment:
    staff_id: int
    username: str
    role: str
    initial_password: str
    otpauth_uri: str
    totp_secret: str
    qr_png: bytes
    recovery_codes: list[str]


def initial_password() -> str:
    """192 random bits in 32 URL-safe characters: passes any password policy identity can be configured with."""
    return secrets.token_urlsafe(24)


async def create(
    *, identity: str, certs: Path, username: str, email: str, role: str, display_name: str = "", timeout: float = 15.0
) -> Enrolment:
    tls = ops_tls(certs)
    password = initial_password()
    async with secure_channel(identity, tls, server_name="identity", timeout=timeout) as channel:
        resp = await staff_service_pb2_grpc.StaffServiceStub(channel).CreateStaffUser(
            staff_service_pb2.CreateStaffUserRequest(
                username=username, email=email, display_name=display_name, role=ROLES[role],  # type: ignore[arg-type]
                password=password,
            ),
            timeout=timeout, wait_for_ready=True,
        )
    return Enrolment(
        staff_id=resp.staff_user.staff_id, username=resp.staff_user.username, role=role, initial_password=password,
        otpauth_uri=resp.otpauth_uri, totp_secret=resp.totp_secret, qr_png=resp.qr_png,
        recovery_codes=list(resp.recovery_codes),
    )


def write_private(path: Path, data: bytes) -> None:
    """Readable by the owner only; never overwrites (a QR image is a second factor)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def announce(e: Enrolment, qr: Path | None) -> str:
    lines = [
        f"Staff member {e.username!r} (id {e.staff_id}, role {e.role}) created.",
        "Shown once -- hand these over on a channel you trust; nothing else keeps them:",
        f"  initial password: {e.initial_password}",
        f"  TOTP secret:      {e.totp_secret}",
        f"  otpauth URI:      {e.otpauth_uri}",
    ]
    if qr is not None:
        lines.append(f"  QR image:         {qr.resolve()} (mode 0600; delete it once scanned)")
    lines.append("  recovery codes (each works once):")
    lines += [f"    {code}" for code in e.recovery_codes]
    lines += [
        "Next, the member:",
        "  1. adds the TOTP secret (or the QR image) to an authenticator app;",
        "  2. logs in: POST /v1/staff/login {username, password, totp_code} -- the first code confirms the factor;",
        "  3. changes the password at once: PUT /v1/auth/password {current_password, new_password}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.staff", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("create", help="add a staff member and print their one-time enrolment")
    add.add_argument("--identity", required=True, help="identity service host:port")
    add.add_argument("--certs", required=True, type=Path, help="ops.crt/.key+internal-ca.crt or tls.crt/.key+ca.crt")
    add.add_argument("--username", required=True)
    add.add_argument("--email", required=True)
    add.add_argument("--role", required=True, choices=sorted(ROLES))
    add.add_argument("--display-name", default="")
    add.add_argument("--qr", type=Path, help="also write the TOTP QR code as a PNG here (must not exist)")
    add.add_argument("--timeout", type=float, default=15.0, help="seconds per call")
    args = parser.parse_args(argv)
    if args.qr is not None and args.qr.exists():
        print(f"staff: {args.qr} exists; choose a new path", file=sys.stderr)
        return 2
    try:
        enrolment = asyncio.run(
            create(identity=args.identity, certs=args.certs, username=args.username, email=args.email,
                   role=args.role, display_name=args.display_name, timeout=args.timeout)
        )
    except grpc.aio.AioRpcError as err:
        print(f"staff: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    if args.qr is not None:
        write_private(args.qr, enrolment.qr_png)
    print(announce(enrolment, args.qr), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
