"""The ClickSend v3 surface: its envelope and its response codes (research/clicksend-api.md §2).

Success is always HTTP 200 (the SDK returns None for 201/204) with
`{"http_code": 200, "response_code": "SUCCESS", "response_msg": ..., "data": ...}`. Errors use the
same four keys with `data: null`. `response_code` is the ClickSend application code carried by the
service's ErrorInfo reason when there is one (MISSING_REQUIRED_FIELDS, TOO_MANY_RECIPIENTS, ...),
else the code ClickSend documents for the HTTP status. HTTP statuses ClickSend does not document
(409, 413, 499, 501, 503, 504) stay inside ClickSend's vocabulary: 4xx -> BAD_REQUEST, 5xx ->
INTERNAL_SERVER_ERROR; `http_code` still carries the exact status.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import message

from gateway.routes import Route
from gateway.surface import Surface
from gateway.transcode.response import field_to_json, message_to_json

# HTTP status -> response_code (ClickSend docs). 413 has no ClickSend code: BAD_REQUEST (documented choice).
STATUS_CODES: dict[int, str] = {
    200: "SUCCESS",
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_FOUND",
    413: "BAD_REQUEST",
    429: "TOO_MANY_REQUESTS",
    500: "INTERNAL_SERVER_ERROR",
}

# ClickSend application status codes: when a service's ErrorInfo reason is one of these, it is the
# envelope's response_code as is.
APPLICATION_CODES: frozenset[str] = frozenset(
    {
        "MISSING_CREDENTIALS",
        "ACCOUNT_NOT_ACTIVATED",
        "INVALID_RECIPIENT",
        "THROTTLED",
        "INVALID_SENDER_ID",
        "INSUFFICIENT_CREDIT",
        "INVALID_CREDENTIALS",
        "ALREADY_EXISTS",
        "EMPTY_MESSAGE",
        "TOO_MANY_RECIPIENTS",
        "MISSING_REQUIRED_FIELDS",
        "INVALID_SCHEDULE",
        "NOT_ENOUGH_PERMISSION_TO_LIST_ID",
        "INTERNAL_ERROR",
        "SOMETHING_IS_WRONG",
        "INVALID_LANG",
        "INVALID_VOICE",
        "SUBJECT_REQUIRED",
        "INVALID_MEDIA_FILE",
        "INVALID_RETURN_ADDRESS",
    }
)


def response_code(http_status: int, reason: str = "") -> str:
    if reason in APPLICATION_CODES:
        return reason
    if http_status in STATUS_CODES:
        return STATUS_CODES[http_status]
    return "INTERNAL_SERVER_ERROR" if http_status >= 500 else "BAD_REQUEST"


def success_envelope(route: Route, response: message.Message) -> Any:
    data: Any
    if route.data_field == "-":
        data = None
    elif route.data_field:
        data = field_to_json(response, route.data_field, Surface.CLICKSEND)
    else:
        data = message_to_json(response, Surface.CLICKSEND)
    if route.bare:  # ClickSend's newer resources: the model is the whole body
        return data
    return {"http_code": 200, "response_code": "SUCCESS", "response_msg": route.response_msg, "data": data}


def error_envelope(http_status: int, code: str, message_text: str) -> dict[str, Any]:
    return {"http_code": http_status, "response_code": code, "response_msg": message_text, "data": None}
