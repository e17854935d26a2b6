"""The kinds of caller the authorization matrix tries every external RPC with, made through the real suite.

Each actor knows only what the permission tables say it holds (svckit.permissions: PERMISSION_FLAGS for
customers, ROLE_PERMISSIONS for staff, a key's scopes), never what today's code happens to answer: the matrix
derives the expected outcome from that and the RPC's declaration. Actors are made once per module and reused; the few
calls that act on the caller's own session (see `acts_on_own_session`) get a fresh session of the same kind.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pyotp
from google.protobuf import descriptor

from gateway.routes import Route
from sendsafe.identity.v1 import (
    auth_service_pb2,
    identity_service_pb2,
    identity_service_pb2_grpc,
    staff_service_pb2,
    staff_service_pb2_grpc,
)
from sendsafe.keys.v1 import keys_service_pb2, keys_service_pb2_grpc
from svckit.access import access_for
from svckit.permissions import ALWAYS, PERMISSION_FLAGS, ROLE_PERMISSIONS
from svckit.rpc import secure_channel
from svckit.tls import TlsFiles
from tests.e2e.api_client import Http
from tests.e2e.conftest import Customer
from tests.e2e.identity_support import PASSWORD, bearer, login, unique
from tests.support import CertBundle
from tools.suite import Suite

STAFF_PASSWORD = "copper falcon tundra 19 mosaic"
# Every access flag that grants a customer permission (the flags PERMISSION_FLAGS names; ALWAYS and MAIN_USER
# permissions have none).
FLAGS: tuple[str, ...] = tuple(sorted({f for f in PERMISSION_FLAGS.values() if isinstance(f, str)}))
CUSTOMER_PERMISSIONS: frozenset[str] = frozenset(PERMISSION_FLAGS)
# A fresh step-up is renewed before it gets this old (identity's step-up age is 300 s).
FRESH_FOR_SECONDS = 200
# A "stale" second factor is this old: far beyond any step-up age the suite runs with.
STALE_SECONDS = 3600

KEY_KINDS: tuple[str, ...] = (
    "main_key", "sub_with_flag", "sub_without_flag", "deidentified_with_flag", "key_scoped", "key_other_scope",
)
SESSION_KINDS: tuple[str, ...] = (
    "session_no_mfa", "session_stale_mfa", "session_fresh_mfa", *(f"staff_{role}" for role in ROLE_PERMISSIONS),
)
ACTOR_KINDS: tuple[str, ...] = (*KEY_KINDS, *SESSION_KINDS)


def flag_of(permission: str) -> str | None:
    """The access flag granting `permission` to a sub-account; None when every user holds it or no flag does."""
    flag = PERMISSION_FLAGS.get(permission)
    return flag if isinstance(flag, str) else None


def flag_permissions(flags: frozenset[str]) -> frozenset[str]:
    """What a (non-main, enabled) user with these access flags holds, per PERMISSION_FLAGS."""
    return frozenset(p for p, f in PERMISSION_FLAGS.items() if f is ALWAYS or f in flags)


def other_permission(permission: str) -> str:
    """A customer permission other than `permission` (the scope of the "key scoped to another" actor)."""
    return next(p for p in sorted(CUSTOMER_PERMISSIONS) if p != permission)


def acts_on_own_session(route: Route) -> bool:
    """Calls that change the caller's own sessions, second factor or password (session_only, not a read): logout,
    revoking sessions, removing the factor... They get a fresh session so they cannot spoil the shared ones."""
    access = access_for(route.rpc_path)
    return access is not None and access.session_only and route.http_method != "GET"


def matrix_account(suite: Suite, certs: CertBundle) -> Customer:
    """An account of its own for the matrix, in test mode (test hooks allowed, nothing sent or charged), made as
    the ops identity: every call of the matrix lands there, never in the demo account other tests use."""
    tls = TlsFiles(certs.dir / "ops.crt", certs.dir / "ops.key", certs.dir / "internal-ca.crt")
    name = unique("matrix")

    async def make() -> str:
        async with (
            secure_channel(suite.addrs["identity"], tls, server_name="identity") as ich,
            secure_channel(suite.addrs["keys"], tls, server_name="keys") as kch,
        ):
            made = await identity_service_pb2_grpc.IdentityServiceStub(ich).CreateAccount(
                identity_service_pb2.CreateAccountRequest(
                    account_name="Matrix", api_username=name, email=f"{name}@example.com", first_name="M",
                    last_name="Atrix", country="AU", test_mode=True), timeout=15)
            issued = await keys_service_pb2_grpc.KeysServiceStub(kch).IssueApiKey(keys_service_pb2.IssueApiKeyRequest(
                account_id=made.user.account_id, user_id=made.user.user_id, name="matrix", test_mode=True), timeout=15)
            return str(issued.api_key)

    return Customer(suite.gateway_url, name, asyncio.run(make()), certs.public_ca)


@dataclass
class Actor:
    kind: str
    headers: dict[str, str]
    permissions: frozenset[str]  # what the tables say this credential may use
    owner_permissions: frozenset[str]  # what its user holds (a key's scopes may leave some out)
    session: bool = False
    deidentified: bool = False
    fresh_mfa: bool = False  # a session whose second factor is kept younger than the step-up age
    totp: pyotp.TOTP | None = None
    last_step: int = 0
    mfa_at: float = 0.0
    password: str = ""  # the user's own password, for calls that ask for it again (empty: unknown)


@dataclass
class Actors:
    """Makes each actor once (per flag or scope where the kind depends on the RPC) and hands it out."""

    suite: Suite
    customer: Customer
    certs: CertBundle
    http: Http
    _cache: dict[tuple[str, str], Actor] = field(default_factory=dict)

    @property
    def main(self) -> dict[str, str]:
        return _basic(self.customer.username, self.customer.api_key)

    def for_row(self, kind: str, route: Route) -> Actor:
        access = access_for(route.rpc_path)
        assert access is not None
        if kind in SESSION_KINDS and acts_on_own_session(route):
            actor = self.make(kind, access.permission)
        else:
            key = (kind, self._variant(kind, access.permission))
            if key not in self._cache:
                self._cache[key] = self.make(kind, access.permission)
            actor = self._cache[key]
        if actor.fresh_mfa:
            self._keep_fresh(actor)
        return actor

    @staticmethod
    def _variant(kind: str, permission: str) -> str:
        if kind in ("sub_with_flag", "sub_without_flag", "deidentified_with_flag"):
            return flag_of(permission) or ""
        if kind == "key_scoped":
            return permission if permission in CUSTOMER_PERMISSIONS else ""
        if kind == "key_other_scope":
            return other_permission(permission)
        return ""

    def make(self, kind: str, permission: str) -> Actor:
        """A new actor of this kind for an RPC needing `permission` (its flag or scope depends on it)."""
        flag = flag_of(permission)
        everything = frozenset(FLAGS)
        if kind == "main_key":
            return Actor(kind, self.main, CUSTOMER_PERMISSIONS, CUSTOMER_PERMISSIONS)
        if kind == "sub_with_flag":
            return self._sub(kind, frozenset({flag} if flag else ()))
        if kind == "sub_without_flag":
            return self._sub(kind, everything - {flag} if flag else everything)
        if kind == "deidentified_with_flag":
            return self._sub(kind, frozenset({flag} if flag else ()), deidentified=True)
        if kind == "key_scoped":
            # A key can only be scoped to permissions its owner holds: for a staff permission the closest is the
            # main user's own key (which still lacks it).
            if permission not in CUSTOMER_PERMISSIONS:
                return Actor(kind, self.main, CUSTOMER_PERMISSIONS, CUSTOMER_PERMISSIONS)
            return self._scoped_key(kind, permission)
        if kind == "key_other_scope":
            return self._scoped_key(kind, other_permission(permission))
        if kind == "session_no_mfa":
            sub = self._create_sub(everything)
            r = login(self.http, sub["api_username"])
            assert r.status == 200, r.body
            return Actor(kind, bearer(r.json()["session_token"]), flag_permissions(everything),
                         flag_permissions(everything), session=True, password=PASSWORD)
        if kind in ("session_stale_mfa", "session_fresh_mfa"):
            actor, session_id = self._totp_session(kind, everything)
            if kind == "session_stale_mfa":
                self._age_second_factor(session_id, STALE_SECONDS)
                actor.fresh_mfa = False
            return actor
        if kind.startswith("staff_"):
            return self._staff(kind, kind.removeprefix("staff_"))
        raise AssertionError(f"unknown actor kind {kind}")

    # -- customers -------------------------------------------------------------------------------------

    def _create_sub(self, flags: frozenset[str], *, deidentified: bool = False) -> dict[str, Any]:
        name = unique("mx")
        body: dict[str, Any] = {"api_username": name, "password": PASSWORD, "email": f"{name}@example.com"}
        body.update({f: int(f in flags) for f in FLAGS})
        if deidentified:
            body["sms_deidentify_message"] = 1
        r = self.http.call("POST", "/v3/subaccounts", headers=self.main, json_body=body)
        assert r.status == 200, r.body
        return dict(r.json()["data"])

    def _sub(self, kind: str, flags: frozenset[str], *, deidentified: bool = False) -> Actor:
        sub = self._create_sub(flags, deidentified=deidentified)
        held = flag_permissions(flags)
        return Actor(kind, _basic(sub["api_username"], sub["api_key"]), held, held, deidentified=deidentified,
                     password=PASSWORD)

    def _scoped_key(self, kind: str, scope: str) -> Actor:
        r = self.http.call("POST", "/v1/api-keys", headers=self.main,
                           json_body={"name": f"matrix {scope}", "scopes": [scope]})
        assert r.status == 200, r.body
        return Actor(kind, _basic(self.customer.username, r.json()["secret"]), frozenset({scope}),
                     CUSTOMER_PERMISSIONS)

    def _totp_session(self, kind: str, flags: frozenset[str]) -> tuple[Actor, str]:
        """A sub-account that enrolled TOTP, logged in with a code: a session whose second factor is fresh."""
        sub = self._create_sub(flags)
        first = login(self.http, sub["api_username"])
        assert first.status == 200, first.body
        enrolling = bearer(first.json()["session_token"])
        again = reauthentication(auth_service_pb2.StartTotpEnrollmentRequest.DESCRIPTOR, PASSWORD)
        start = self.http.call("POST", "/v1/auth/mfa/totp", headers=enrolling, json_body=again)
        assert start.status == 200, start.body
        totp = pyotp.parse_uri(start.json()["otpauth_uri"])
        assert isinstance(totp, pyotp.TOTP)
        step = int(time.time()) // 30
        confirm = self.http.call("POST", "/v1/auth/mfa/totp/confirm", headers=enrolling,
                                 json_body={"code": totp.at(step * 30)})
        assert confirm.status == 200, confirm.body
        # The confirming step is spent; the next one is inside the +-1 window.
        r = login(self.http, sub["api_username"], totp_code=totp.at((step + 1) * 30))
        assert r.status == 200, r.body
        held = flag_permissions(flags)
        actor = Actor(kind, bearer(r.json()["session_token"]), held, held, session=True, fresh_mfa=True, totp=totp,
                      last_step=step + 1, mfa_at=time.monotonic(), password=PASSWORD)
        return actor, str(r.json()["session"]["session_id"])

    # -- staff -----------------------------------------------------------------------------------------

    def _staff(self, kind: str, role: str) -> Actor:
        """What an operator does (tools.staff): CreateStaffUser over mTLS with the ops certificate; the member then
        logs in with password + TOTP (staff cannot log in without)."""

        async def create() -> staff_service_pb2.CreateStaffUserResponse:
            name = unique("mxstaff")
            ops = self.certs.tls("ops")
            async with secure_channel(self.suite.addrs["identity"], ops, server_name="identity") as ch:
                return await staff_service_pb2_grpc.StaffServiceStub(ch).CreateStaffUser(
                    staff_service_pb2.CreateStaffUserRequest(
                        username=name, email=f"{name}@sendsafe.example", display_name="Matrix Staff",
                        role=staff_service_pb2.StaffRole.Value(f"STAFF_ROLE_{role.upper()}"),
                        password=STAFF_PASSWORD,
                    ),
                    timeout=15,
                )

        created = asyncio.run(create())
        totp = pyotp.parse_uri(created.otpauth_uri)
        assert isinstance(totp, pyotp.TOTP)
        step = int(time.time()) // 30
        r = login(self.http, created.staff_user.username, STAFF_PASSWORD, staff=True, totp_code=totp.at(step * 30))
        assert r.status == 200, r.body
        held = ROLE_PERMISSIONS[role]
        return Actor(kind, bearer(r.json()["session_token"]), held, held, session=True, fresh_mfa=True, totp=totp,
                     last_step=step, mfa_at=time.monotonic(), password=STAFF_PASSWORD)

    # -- time --------------------------------------------------------------------------------------------

    def _keep_fresh(self, actor: Actor) -> None:
        """Step up with an unused TOTP step before the second factor nears the step-up age (no sleeping)."""
        if time.monotonic() - actor.mfa_at < FRESH_FOR_SECONDS:
            return
        assert actor.totp is not None
        step = max(int(time.time()) // 30, actor.last_step + 1)
        r = self.http.call("POST", "/v1/auth/step-up", headers=actor.headers,
                           json_body={"totp_code": actor.totp.at(step * 30)})
        assert r.status == 200, r.body
        actor.last_step, actor.mfa_at = step, time.monotonic()

    def _age_second_factor(self, session_id: str, seconds: int) -> None:
        """Time passes: the session's second factor becomes `seconds` old (the services' clocks cannot be driven,
        so the session row is moved back), before the gateway has seen the token (so no cached principal holds
        the fresh time, as after real minutes)."""

        async def run() -> None:
            conn = await asyncpg.connect(self.suite.config.database_url("identity"))
            try:
                done = await conn.execute(
                    "UPDATE sessions SET mfa_time = now() - make_interval(secs => $2) WHERE id = $1",
                    session_id, seconds,
                )
                assert done == "UPDATE 1"
            finally:
                await conn.close()

        asyncio.run(run())


def _basic(username: str, key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{key}".encode()).decode()}


REAUTHENTICATION_FIELDS = ("password", "current_password")


def reauthentication(request: descriptor.Descriptor, password: str) -> dict[str, str]:
    """The caller's own password in the fields a self-service request asks for it again (a change of password,
    enrolling a second factor), so such a call is judged on who calls, not refused for an empty password."""
    return {name: password for name in REAUTHENTICATION_FIELDS if name in request.fields_by_name and password}
