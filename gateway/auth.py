"""Who is calling: HTTP authentication, credentials -> `Identity` (the principal the services receive is
built from it in `gateway.principal`).

ClickSend's scheme is HTTP Basic with `api_username:api_key`. Verification:
1. keys `VerifyApiKey(api_key)` -> key id, account, user, scopes (unknown/revoked/expired keys fail);
2. identity `GetUser(user_id)` -> the user's api_username, active flag, permissions, test mode;
3. the presented username must equal the user's api_username (constant-time), the user must be
   active and belong to the key's account;
4. permissions = the user's permissions, intersected with the key's scopes unless the key has none
   or has the wildcard scope "*" (what the keys service issues by default);
5. send limits = the key's, with the sender ids both the key and the user allow (svckit.senders, issue 21).

Results (successes AND definitive failures) are cached for at most `cache_seconds` (hard max 5 s)
under a SHA-256 of the scheme, credentials and (for API keys) the client address, since a key's IP
allow-list makes the answer depend on where the request comes from; the raw key is never stored. An
entry never outlives the key's own expiry (the keys service says how long it stays valid), and the keys
service's notices (svckit.keyevents over Redis) drop a revoked or rolled key's entries at once. Concurrent requests with
the same credentials share one verification (`svckit.ttlcache`). Transport failures (keys/identity unavailable) are not
cached and surface as 5xx, never as 401.

`Bearer <session token>` (interactive sessions from `/v1/auth/login` and `/v1/staff/login`) resolves
through identity `ResolveSession` (with the client address: an account's allowed networks apply to every use
of a session) -> account, user (or staff member), permissions, session id and the time of the last second
factor; it is cached the same way (per token and client address, never past the session's expiry), so a
revoked session, and a change of its account's policy, takes effect within `cache_seconds`. Other schemes plug in
with `Authenticator.register_scheme(name, handler)`. Nothing
else in the gateway depends on how the caller authenticated.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf import timestamp_pb2

from gateway.errors import from_rpc_error
from sendsafe.context.v1 import principal_pb2
from sendsafe.identity.v1 import auth_service_pb2, identity_service_pb2
from sendsafe.keys.v1 import keys_service_pb2
from svckit import context as callctx
from svckit.access import second_factor_within as svckit_second_factor_within
from svckit.keyevents import API_KEYS_CHANGED, KeyNotice
from svckit.rpcstatus import error_info
from svckit.senders import intersect_senders
from svckit.ttlcache import TtlCache

_LOG = logging.getLogger(__name__)

# A key whose scopes are empty or contain "*" carries all of its user's permissions.
ALL_SCOPES = "*"
MAX_USERNAME_BYTES = 256
MAX_API_KEY_BYTES = 512
MAX_SESSION_TOKEN_BYTES = 256
SESSION_TOKEN_PREFIX = "ss_sess_"  # noqa: S105 - identity's session tokens; anything else is not one (no RPC)
# gRPC codes with which keys/identity *reject* credentials (as opposed to failing to answer).
_REJECTING_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)
_AUTH_METHOD_NAMES: dict[int, str] = {
    principal_pb2.AUTH_METHOD_API_KEY: "api_key",
    principal_pb2.AUTH_METHOD_SESSION: "session",
}
# Guard reasons that mean the gateway itself is misconfigured, not that the caller is wrong.
_GATEWAY_MISCONFIGURED = frozenset({"CALLER_NOT_ALLOWED"})
# Reasons the keys service gives only to someone who holds a real key: passed on (status, reason).
_KEY_REASONS: dict[str, int] = {
    "API_KEY_REVOKED": 401,
    "API_KEY_EXPIRED": 401,
    "API_KEY_ADDRESS_NOT_ALLOWED": 403,
    "NETWORK_NOT_ALLOWED": 403,  # a live session used from outside its account's allowed networks
}


@dataclass(frozen=True)
class Identity:
    """An authenticated caller (the request-independent part of the principal)."""

    account_id: int
    user_id: int
    api_username: str
    auth_method: int  # principal_pb2.AuthMethod
    permissions: frozenset[str]
    test_mode: bool = False
    api_key_id: str = ""
    session_id: str = ""
    mfa_time: timestamp_pb2.Timestamp | None = None
    staff: bool = False  # a SendSafe staff member (account_id is the platform account)
    # Permissions the user holds but the API key's scopes leave out (for a 403 that says so).
    outside_scope: frozenset[str] = frozenset()
    # Seconds this answer may be reused at most (the key's remaining life); None: the cache's own limit.
    cache_for: float | None = None
    # The API key's send limits, carried to messaging in the principal (None: none).
    send_limits: principal_pb2.SendLimits | None = None
    # The user may not see message bodies and numbers (ClickSend sms_deidentify_message): messaging masks them.
    sms_deidentify_message: bool = False

    @property
    def auth_method_name(self) -> str:
        return _AUTH_METHOD_NAMES.get(self.auth_method, "")


@dataclass(frozen=True)
class Rejection:
    """A definitive "no" for some credentials (cacheable; an exception instance is not)."""

    reason: str  # public: MISSING_CREDENTIALS | INVALID_CREDENTIALS
    detail: str  # log/audit only: KEY_REJECTED, USERNAME_MISMATCH, USER_INACTIVE, ...
    account_id: int = 0
    user_id: int = 0
    api_key_id: str = ""
    http_status: int = 401  # 403: a real key used where it may not be (its IP allow-list)


class AuthFailure(Exception):
    """Credentials missing or rejected. `reason` is public; `detail` is for the log and audit only."""

    def __init__(
        self, reason: str, detail: str, *, account_id: int = 0, user_id: int = 0, api_key_id: str = "",
        http_status: int = 401,
    ):
        super().__init__(f"{reason} ({detail})")
        self.reason = reason
        self.detail = detail
        self.account_id = account_id
        self.user_id = user_id
        self.api_key_id = api_key_id
        self.http_status = http_status

    @classmethod
    def of(cls, r: Rejection) -> AuthFailure:
        return cls(r.reason, r.detail, account_id=r.account_id, user_id=r.user_id, api_key_id=r.api_key_id,
                   http_status=r.http_status)


class KeysStub(Protocol):
    def VerifyApiKey(
        self, request: keys_service_pb2.VerifyApiKeyRequest, *, timeout: float | None = ..., metadata: Any = ...
    ) -> Awaitable[keys_service_pb2.VerifyApiKeyResponse]: ...


class IdentityStub(Protocol):
    def GetUser(
        self, request: identity_service_pb2.GetUserRequest, *, timeout: float | None = ..., metadata: Any = ...
    ) -> Awaitable[identity_service_pb2.GetUserResponse]: ...


class SessionsStub(Protocol):
    def ResolveSession(
        self, request: auth_service_pb2.ResolveSessionRequest, *, timeout: float | None = ..., metadata: Any = ...
    ) -> Awaitable[auth_service_pb2.ResolveSessionResponse]: ...


SchemeHandler = Callable[[str, str], Awaitable[Identity]]


class Authenticator:
    def __init__(
        self,
        keys: KeysStub,
        identity: IdentityStub,
        *,
        cache_seconds: float,
        timeout: float = 5.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        sessions: SessionsStub | None = None,
    ) -> None:
        self._keys = keys
        self._identity = identity
        self._sessions = sessions
        self._timeout = timeout
        # Successes and definitive rejections, by credential digest (svckit.ttlcache: bounded, single-flight).
        self.cache: TtlCache[bytes, Identity | Rejection] = TtlCache(cache_seconds, max_entries, clock)
        self._schemes: dict[str, SchemeHandler] = {}  # Basic is built in (it also needs the client address)
        if sessions is not None:
            self._schemes["bearer"] = self._bearer

    def register_scheme(self, scheme: str, handler: SchemeHandler) -> None:
        """Accept `Authorization: <scheme> <credentials>` (e.g. "bearer" for session tokens). Basic (API keys)
        is built in and cannot be replaced."""
        if scheme.lower() == "basic":
            raise ValueError("the Basic scheme is built in and cannot be replaced")
        self._schemes[scheme.lower()] = handler

    def on_key_notice(self, notice: KeyNotice) -> None:
        """A key notice from the keys service: stop trusting cached answers for those keys."""
        if notice.kind == API_KEYS_CHANGED:
            ids = set(notice.key_ids)
            self.cache.pop_where(lambda _, v: bool(v.api_key_id) and v.api_key_id in ids)

    async def authenticate(self, authorization: str | None, request_id: str = "", client_address: str = "") -> Identity:
        """The caller's identity, or AuthFailure. Upstream outages raise GatewayError (5xx)."""
        if not authorization or not authorization.strip():
            raise AuthFailure("MISSING_CREDENTIALS", "NO_AUTHORIZATION_HEADER")
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "basic":
            return await self._basic(credentials.strip(), request_id, client_address)
        if scheme.lower() == "bearer" and self._sessions is not None and self._schemes.get("bearer") == self._bearer:
            return await self._bearer(credentials.strip(), request_id, client_address)
        handler = self._schemes.get(scheme.lower())
        if handler is None:
            raise AuthFailure("INVALID_CREDENTIALS", "UNSUPPORTED_SCHEME")
        return await handler(credentials.strip(), request_id)

    async def reauthenticate(
        self, authorization: str | None, request_id: str = "", client_address: str = ""
    ) -> Identity:
        """`authenticate` past a cached session: a step-up moves the session's mfa_time, which a cached
        principal would not show for up to `cache_seconds`."""
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        if scheme.lower() == "bearer":
            raw = credentials.strip().encode("utf-8", "replace")
            self.cache.pop(credential_digest("bearer", raw, client_address.encode()))
        return await self.authenticate(authorization, request_id, client_address)

    async def _basic(self, credentials: str, request_id: str, client_address: str = "") -> Identity:
        try:
            decoded = base64.b64decode(credentials, validate=True)
        except (binascii.Error, ValueError):
            raise AuthFailure("INVALID_CREDENTIALS", "MALFORMED_BASIC") from None
        username_b, sep, key_b = decoded.partition(b":")
        if not sep or not username_b or not key_b:
            raise AuthFailure("INVALID_CREDENTIALS", "MALFORMED_BASIC")
        if len(username_b) > MAX_USERNAME_BYTES or len(key_b) > MAX_API_KEY_BYTES:
            raise AuthFailure("INVALID_CREDENTIALS", "CREDENTIALS_TOO_LONG")
        try:
            username, api_key = username_b.decode("utf-8"), key_b.decode("utf-8")
        except UnicodeDecodeError:
            raise AuthFailure("INVALID_CREDENTIALS", "MALFORMED_BASIC") from None
        cache_key = credential_digest("basic", username_b, key_b, client_address.encode())
        result = await self.cache.get_or_load(
            cache_key, lambda: self._verify_basic(username, api_key, request_id, client_address), _cache_for
        )
        if isinstance(result, Rejection):
            raise AuthFailure.of(result)
        return result

    async def _verify_basic(
        self, username: str, api_key: str, request_id: str, client_address: str
    ) -> Identity | Rejection:
        metadata = ((callctx.REQUEST_ID_METADATA_KEY, request_id),) if request_id else ()
        try:
            key = await self._keys.VerifyApiKey(
                keys_service_pb2.VerifyApiKeyRequest(api_key=api_key, client_address=client_address),
                timeout=self._timeout, metadata=metadata,
            )
        except grpc.aio.AioRpcError as err:
            return self._rejection(err, "KEY_REJECTED")
        try:
            got = await self._identity.GetUser(
                identity_service_pb2.GetUserRequest(user_id=key.user_id), timeout=self._timeout, metadata=metadata
            )
        except grpc.aio.AioRpcError as err:
            return self._rejection(err, "USER_NOT_FOUND", key)
        user = got.user
        who: dict[str, Any] = {"account_id": key.account_id, "user_id": key.user_id, "api_key_id": key.key_id}
        if not hmac.compare_digest(username.encode("utf-8"), user.api_username.encode("utf-8")):
            return Rejection("INVALID_CREDENTIALS", "USERNAME_MISMATCH", **who)
        if user.user_id != key.user_id or user.account_id != key.account_id:
            return Rejection("INVALID_CREDENTIALS", "ACCOUNT_MISMATCH", **who)
        if not user.active:
            return Rejection("INVALID_CREDENTIALS", "USER_INACTIVE", **who)
        held = frozenset(user.permissions)
        permissions = held
        scopes = frozenset(key.scopes)
        if scopes and ALL_SCOPES not in scopes:
            permissions &= scopes
        return Identity(
            account_id=key.account_id,
            user_id=key.user_id,
            api_username=user.api_username,
            auth_method=principal_pb2.AUTH_METHOD_API_KEY,
            permissions=permissions,
            test_mode=user.test_mode,
            api_key_id=key.key_id,
            outside_scope=held - permissions,
            cache_for=key.valid_for_seconds if key.HasField("expire_time") else None,
            send_limits=_send_limits(key.send_limits, key.limits_key_id, user.allowed_senders),
            sms_deidentify_message=bool(user.sms_deidentify_message),
        )

    async def _bearer(self, token: str, request_id: str, client_address: str = "") -> Identity:
        raw = token.encode("utf-8", "replace")
        if (
            not token.startswith(SESSION_TOKEN_PREFIX) or len(raw) > MAX_SESSION_TOKEN_BYTES
            or not token.isascii() or not token.isprintable()
        ):
            raise AuthFailure("INVALID_CREDENTIALS", "MALFORMED_BEARER")
        result = await self.cache.get_or_load(
            credential_digest("bearer", raw, client_address.encode()),
            lambda: self._resolve_session(token, request_id, client_address), _cache_for,
        )
        if isinstance(result, Rejection):
            raise AuthFailure.of(result)
        return result

    async def _resolve_session(self, token: str, request_id: str, client_address: str = "") -> Identity | Rejection:
        assert self._sessions is not None
        metadata = ((callctx.REQUEST_ID_METADATA_KEY, request_id),) if request_id else ()
        try:
            s = await self._sessions.ResolveSession(
                auth_service_pb2.ResolveSessionRequest(session_token=token, client_address=client_address),
                timeout=self._timeout, metadata=metadata,
            )
        except grpc.aio.AioRpcError as err:
            return self._rejection(err, "SESSION_REJECTED")
        return Identity(
            account_id=s.account_id,
            user_id=s.user_id,
            api_username=s.username,
            auth_method=principal_pb2.AUTH_METHOD_SESSION,
            permissions=frozenset(s.permissions),
            test_mode=s.test_mode,
            session_id=s.session_id,
            mfa_time=s.mfa_time if s.HasField("mfa_time") else None,
            staff=s.staff,
            sms_deidentify_message=s.sms_deidentify_message,
            send_limits=_send_limits(keys_service_pb2.SendLimits(), "", s.allowed_senders),
            # Never reused past the session's end (its account's lifetime may cut it short of the platform's).
            cache_for=max(0.0, s.expire_time.ToNanoseconds() / 1e9 - time.time()) if s.HasField("expire_time")
            else None,
        )

    def _rejection(
        self, err: grpc.aio.AioRpcError, detail: str, key: keys_service_pb2.VerifyApiKeyResponse | None = None
    ) -> Rejection:
        info = error_info(err, consistent=False)
        reason = info.reason if info is not None else ""
        if reason in _GATEWAY_MISCONFIGURED:
            raise RuntimeError(f"the gateway may not call the credential services: {err.details()}")
        if err.code() not in _REJECTING_CODES:
            _LOG.warning("credential check failed upstream: %s %s", err.code().name, err.details())
            raise from_rpc_error(err) from None
        who: dict[str, Any] = {}
        if key is not None:
            who = {"account_id": key.account_id, "user_id": key.user_id, "api_key_id": key.key_id}
        if reason in _KEY_REASONS and key is None and info is not None:
            # The key is real (its secret matched) but revoked, expired or used from outside its allow-list:
            # the caller may know why, and the evidence belongs to the key's account.
            account = info.metadata.get("account_id", "")
            return Rejection(reason, f"{detail}:{reason}", http_status=_KEY_REASONS[reason],
                             api_key_id=info.metadata.get("key_id", ""),
                             account_id=int(account) if account.isdigit() else 0)
        return Rejection("INVALID_CREDENTIALS", f"{detail}:{reason}" if reason else detail, **who)


def _cache_for(result: Identity | Rejection) -> float | None:
    """How long an answer may be reused at most beyond the cache's own limit: an identity never outlives its key."""
    return result.cache_for if isinstance(result, Identity) else None


def _send_limits(
    limits: keys_service_pb2.SendLimits, bucket_key_id: str, user_senders: Sequence[str] = ()
) -> principal_pb2.SendLimits | None:
    """The principal's send limits: the key's, with the sender ids allowed by both the key and its user."""
    senders, senders_limited = intersect_senders(limits.allowed_senders, user_senders)
    if not (limits.messages_per_minute or limits.messages_per_day or limits.allowed_countries or senders_limited):
        return None
    return principal_pb2.SendLimits(
        messages_per_minute=limits.messages_per_minute,
        messages_per_day=limits.messages_per_day,
        allowed_countries=list(limits.allowed_countries),
        bucket_key_id=bucket_key_id,
        allowed_senders=list(senders),
        senders_limited=senders_limited,
    )


def second_factor_within(identity: Identity, max_age_seconds: int, now: float | None = None) -> bool:
    """RFC 9470 max_age: the session's second factor was verified within the last `max_age_seconds`."""
    mfa = None if identity.mfa_time is None else identity.mfa_time.seconds + identity.mfa_time.nanos / 1e9
    return svckit_second_factor_within(mfa, max_age_seconds, time.time() if now is None else now)


def credential_digest(scheme: str, *parts: bytes) -> bytes:
    """The cache key for a credential: SHA-256 over length-prefixed parts (never the secret itself)."""
    h = hashlib.sha256(scheme.encode("ascii") + b"\x00")
    for part in parts:
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()
