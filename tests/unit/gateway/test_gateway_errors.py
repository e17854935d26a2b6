"""Error mapping: gRPC status (+ErrorInfo) -> HTTP via svckit's table, and both error bodies."""

from __future__ import annotations

import grpc
import pytest

from gateway import compat_clicksend
from gateway.errors import error_body, from_rpc_error, unauthenticated
from gateway.surface import Surface
from svckit.errors import HTTP_STATUS
from svckit.server import status_for


def _rpc_error(code: grpc.StatusCode, reason: str | None, message: str) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata()
    if reason is not None:
        for key, value in status_for(code, reason, message).trailing_metadata:
            trailing.add(key, value)
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=message)


@pytest.mark.parametrize("code", list(grpc.StatusCode)[1:])
def test_http_status_comes_from_svckit_table(code: grpc.StatusCode) -> None:
    err = from_rpc_error(_rpc_error(code, "SOMETHING", "msg"))
    assert err.http_status == HTTP_STATUS.get(code.name, 500)
    assert err.status == code.name


def test_clicksend_application_code_becomes_response_code() -> None:
    err = from_rpc_error(_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "TOO_MANY_RECIPIENTS", "At most 1000."))
    body = error_body(err, Surface.CLICKSEND)
    assert body == {"http_code": 400, "response_code": "TOO_MANY_RECIPIENTS", "response_msg": "At most 1000.",
                    "data": None}
    v1 = error_body(err, Surface.V1)
    assert v1 == {"error": {"code": 400, "status": "INVALID_ARGUMENT", "reason": "TOO_MANY_RECIPIENTS",
                            "message": "At most 1000."}}


def test_other_reasons_use_the_status_code_table() -> None:
    err = from_rpc_error(_rpc_error(grpc.StatusCode.PERMISSION_DENIED, "MISSING_PERMISSION", "needs sms.send"))
    assert error_body(err, Surface.CLICKSEND)["response_code"] == "FORBIDDEN"
    err = from_rpc_error(_rpc_error(grpc.StatusCode.NOT_FOUND, "MESSAGE_NOT_FOUND", "no such message"))
    assert error_body(err, Surface.CLICKSEND)["response_code"] == "NOT_FOUND"


def test_transport_failures_do_not_leak_details() -> None:
    raw = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
        details="failed to connect to all addresses; last error: ipv4:10.1.2.3:7001: Connection refused",
    )
    err = from_rpc_error(raw)
    assert err.http_status == 503 and "10.1.2.3" not in err.message
    body = error_body(err, Surface.CLICKSEND)
    assert body["response_code"] == "INTERNAL_SERVER_ERROR" and body["http_code"] == 503


def test_unauthenticated_envelope() -> None:
    err = unauthenticated("INVALID_CREDENTIALS")
    assert err.headers["WWW-Authenticate"] == 'Basic realm="SendSafe"'
    body = error_body(err, Surface.CLICKSEND)
    assert body["http_code"] == 401 and body["response_code"] == "UNAUTHORIZED"
    assert "INVALID_CREDENTIALS" in body["response_msg"] and body["data"] is None


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "BAD_REQUEST"), (401, "UNAUTHORIZED"), (403, "FORBIDDEN"), (404, "NOT_FOUND"),
     (405, "METHOD_NOT_FOUND"), (409, "BAD_REQUEST"), (413, "BAD_REQUEST"), (429, "TOO_MANY_REQUESTS"),
     (500, "INTERNAL_SERVER_ERROR"), (503, "INTERNAL_SERVER_ERROR")],
)
def test_response_code_table(status: int, code: str) -> None:
    assert compat_clicksend.response_code(status) == code


def test_deidentified_user_refusal_names_the_rule() -> None:
    from gateway.errors import deidentified_user

    err = deidentified_user()
    assert (err.http_status, err.status, err.reason) == (403, "PERMISSION_DENIED", "DEIDENTIFIED_USER")
    assert err.message == ("A de-identified user cannot send data to a destination outside the platform;"
                           " ask an unrestricted user.")
