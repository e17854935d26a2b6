"""Gateway errors and their rendering on both surfaces.

One exception type, `GatewayError`, carries everything a response needs: the HTTP status, the gRPC
status name, a stable UPPER_SNAKE reason and a human message. Errors from services come from their
gRPC status: the code maps to HTTP through `svckit.errors.HTTP_STATUS` (the only mapping) and the
reason is the ErrorInfo inside `grpc-status-details-bin`. Transport-level failures (no rich status
from a SendSafe service) get a generic message, so internal addresses never reach a client.

Rendering:
- `/v3/...`: the ClickSend envelope (`gateway.compat_clicksend`);
- everything else: `{"error": {"code": <http>, "status": <grpc code name>, "reason": ..., "message": ...}}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
import orjson

from gateway import compat_clicksend
from gateway.surface import Surface
from svckit.access import DEIDENTIFIED_MESSAGE, DEIDENTIFIED_USER, STEP_UP_REQUIRED
from svckit.errors import ERROR_DOMAIN, http_status
from svckit.rpcstatus import error_info, rich_status

JSON_CONTENT_TYPE = "application/json"  # every body the gateway answers with (`dumps`)

_GENERIC_MESSAGES: dict[str, str] = {
    "UNAVAILABLE": "The service is temporarily unavailable; try again shortly.",
    "DEADLINE_EXCEEDED": "The service did not answer in time.",
    "CANCELLED": "The request was cancelled.",
    "RESOURCE_EXHAUSTED": "Too many requests; slow down.",
    "UNIMPLEMENTED": "This operation is not available.",
}
INTERNAL_MESSAGE = "Internal error."
WWW_AUTHENTICATE = 'Basic realm="SendSafe"'
# A service's reason for "a second factor is needed, verified within max_age seconds" (RFC 9470 step-up).
STEP_UP_REASON = "INSUFFICIENT_USER_AUTHENTICATION"


@dataclass
class GatewayError(Exception):
    http_status: int
    status: str  # gRPC status code name ("INVALID_ARGUMENT"), shown on /v1
    reason: str  # UPPER_SNAKE, stable
    message: str  # for humans; never secrets
    clicksend_code: str | None = None  # forces the /v3 response_code (else derived)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.http_status} {self.reason}: {self.message}"


def bad_request(message: str, reason: str = "INVALID_ARGUMENT") -> GatewayError:
    return GatewayError(400, "INVALID_ARGUMENT", reason, message)


# Said only to someone whose key's secret matched (the keys service gives these reasons after that).
_KEY_MESSAGES: dict[str, str] = {
    "API_KEY_REVOKED": "This API key has been revoked.",
    "API_KEY_EXPIRED": "This API key has expired; create or roll a new one.",
    "API_KEY_ADDRESS_NOT_ALLOWED": "This API key may not be used from your address (its IP allow-list).",
}


def unauthenticated(reason: str = "INVALID_CREDENTIALS") -> GatewayError:
    return GatewayError(
        401,
        "UNAUTHENTICATED",
        reason,
        _KEY_MESSAGES.get(reason)
        or f"Invalid or missing credentials ({reason}). Use HTTP Basic with your API username and API key.",
        clicksend_code="UNAUTHORIZED",
        headers={"WWW-Authenticate": WWW_AUTHENTICATE},
    )


def forbidden(permission: str, *, outside_scope: bool = False) -> GatewayError:
    if outside_scope:
        return GatewayError(
            403, "PERMISSION_DENIED", "API_KEY_SCOPE",
            f"This API key's scopes leave out the '{permission}' permission.", clicksend_code="FORBIDDEN",
        )
    return GatewayError(
        403, "PERMISSION_DENIED", "MISSING_PERMISSION", f"This call needs the '{permission}' permission.",
        clicksend_code="FORBIDDEN",
    )


def key_forbidden(reason: str) -> GatewayError:
    """A real API key used where it may not be (outside its IP allow-list)."""
    return GatewayError(403, "PERMISSION_DENIED", reason, _KEY_MESSAGES.get(reason, "Forbidden."),
                        clicksend_code="FORBIDDEN")


# No route has this method and path: on /v3 most often a ClickSend SDK method SendSafe does not offer.
ROUTE_NOT_FOUND_MESSAGE = (
    "Resource not found: SendSafe has no route for this method and path. A ClickSend API method SendSafe does not"
    " offer answers this (which work: docs/clicksend-sdk.md); every route is in GET /openapi.json."
)


def not_found() -> GatewayError:
    return GatewayError(404, "NOT_FOUND", "ROUTE_NOT_FOUND", ROUTE_NOT_FOUND_MESSAGE, clicksend_code="NOT_FOUND")


def method_not_allowed(allowed: set[str]) -> GatewayError:
    return GatewayError(
        405, "UNIMPLEMENTED", "METHOD_NOT_ALLOWED", "Method not allowed for this resource.",
        clicksend_code="METHOD_NOT_FOUND", headers={"Allow": ", ".join(sorted(allowed))},
    )


def body_too_large(limit: int) -> GatewayError:
    return GatewayError(
        413, "INVALID_ARGUMENT", "BODY_TOO_LARGE", f"The request body exceeds {limit} bytes.",
        clicksend_code="BAD_REQUEST",
    )


def unauthenticated_rate_limited(retry_after: int) -> GatewayError:
    """Too many requests without valid credentials from the caller's network (gateway.unauth)."""
    return GatewayError(
        429, "RESOURCE_EXHAUSTED", "UNAUTHENTICATED_RATE_LIMITED",
        f"Too many requests without valid credentials from your network; retry in {retry_after} seconds.",
        clicksend_code="TOO_MANY_REQUESTS", headers={"Retry-After": str(retry_after)},
    )


def internal(request_id: str) -> GatewayError:
    return GatewayError(
        500, "INTERNAL", "INTERNAL", f"{INTERNAL_MESSAGE} Quote request id {request_id} when asking for help.",
        clicksend_code="INTERNAL_SERVER_ERROR",
    )


def from_rpc_error(err: grpc.aio.AioRpcError) -> GatewayError:
    """The HTTP-side error for a failed upstream call."""
    code = err.code().name
    # A SendSafe service's status is trusted by its ErrorInfo's domain (not by the call echoing its message).
    status, info = rich_status(err, consistent=False), error_info(err, consistent=False)
    http = http_status(code)
    trusted = info is not None and info.domain == ERROR_DOMAIN
    if trusted and info is not None:
        reason = info.reason or code
        message = (status.message if status is not None else "") or err.details() or code
        headers = {}
        retry = info.metadata.get("retry_after_seconds")
        if retry and retry.isdigit():
            headers["Retry-After"] = retry
        if reason == STEP_UP_REQUIRED and http == 401:  # a service's guard: the challenge the gateway gives
            return step_up_required(info.metadata.get("max_age", ""))
        return GatewayError(http, code, reason, message, headers=headers)
    # No SendSafe status: a transport failure or a foreign server. Keep the details in the log only.
    message = INTERNAL_MESSAGE if http >= 500 else "The request could not be completed."
    return GatewayError(http, code, code, _GENERIC_MESSAGES.get(code, message))


def step_up_required(max_age: int | str) -> GatewayError:
    """RFC 9470: a privileged call on a session whose last second factor is older than `max_age` seconds."""
    return GatewayError(
        401, "UNAUTHENTICATED", STEP_UP_REASON,
        f"This action needs a second factor verified within the last {max_age} seconds:"
        " POST /v1/auth/step-up, then retry.",
        clicksend_code="UNAUTHORIZED", headers={"WWW-Authenticate": step_up_challenge(str(max_age))},
    )


def deidentified_user() -> GatewayError:
    """A de-identified user called a route that sets a standing destination (svckit.access)."""
    return GatewayError(403, "PERMISSION_DENIED", DEIDENTIFIED_USER, f"{DEIDENTIFIED_MESSAGE.capitalize()}.",
                        clicksend_code="FORBIDDEN")


def step_up_challenge(max_age: str) -> str:
    """RFC 9470 §3: the client re-authenticates (POST /v1/auth/step-up) and retries."""
    challenge = 'Bearer error="insufficient_user_authentication", error_description="A second factor is required"'
    return f"{challenge}, max_age={max_age}" if max_age.isdigit() else challenge


def error_body(err: GatewayError, surface: Surface) -> dict[str, Any]:
    if surface is Surface.CLICKSEND:
        code = err.clicksend_code or compat_clicksend.response_code(err.http_status, err.reason)
        return compat_clicksend.error_envelope(err.http_status, code, err.message)
    return {"error": {"code": err.http_status, "status": err.status, "reason": err.reason, "message": err.message}}


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON (orjson: a 100-message answer serialises several times faster than with json).
    Non-finite numbers never get here: the transcoder maps them to null, as proto3 JSON has no NaN."""
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)
