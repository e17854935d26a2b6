"""The OpenAPI 3.1 document of the gateway, built from the same route list it serves (`gateway.routes`).

Everything comes from the descriptors: paths and methods from `google.api.http`, path and query parameters and
request bodies from the input message (JSON names as the transcoder reads them, `wire_name` included), answers
from the output message and `(sendsafe.options.v1.envelope)` (ClickSend's envelope on `/v3`, or the bare model),
the permission, step-up, session-only and public flags from `(sendsafe.options.v1.access)` (as `x-sendsafe-*`),
summaries from the protos' comments (`gen/python/sendsafe/proto_comments.json`, written by `make protos`).

`document(routes)` builds it; `middleware(routes)` answers `GET /openapi.json` with it (public: the document
names no account and no secret), built once at start-up, so it cannot drift from the routes.
`python -m tools.apidocs` writes it to docs/openapi.json (checked by tests/unit/gateway/test_openapi.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from google.protobuf import descriptor, descriptor_pool

from gateway import compat_clicksend
from gateway.errors import JSON_CONTENT_TYPE, STEP_UP_REASON, dumps
from gateway.routes import Route
from gateway.surface import Surface
from gateway.transcode.fields import FD, SCALAR_MESSAGES, is_map, message_of, wire_name
from gateway.transcode.schema import Schema, Schemas
from sendsafe.options.v1 import options_pb2

OPENAPI_PATH = "/openapi.json"
TITLE = "SendSafe API"
VERSION = "1"
SDK_DOC = "docs/clicksend-sdk.md"
IDEMPOTENT_RPCS = frozenset({"/sendsafe.messaging.v1.MessagingService/SendSms"})  # read Idempotency-Key
_VAR_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)(?:=[^{}]*)?\}")
_DATA_OUT = {options_pb2.DATA_OUT_DESTINATION: "destination", options_pb2.DATA_OUT_SECRET: "secret"}

INFO = """\
SendSafe's HTTPS API, generated from the protos' HTTP bindings (the gateway's own route table).

Two surfaces: `/v3/...` is ClickSend-compatible (the official `clicksend-client` SDK works unchanged): answers are
ClickSend's envelope `{http_code, response_code, response_msg, data}` (a few newer resources answer their model
bare), success is always HTTP 200, times are unix seconds. `/v1/...` is SendSafe's own: plain JSON, times RFC 3339.

Requests: every field is optional unless the service says otherwise; `null` leaves a field unset; unknown keys,
wrong JSON types, duplicate keys and out-of-range integers are refused (400, reason `UNKNOWN_FIELD`,
`INVALID_FIELD_VALUE`, `MALFORMED_JSON`, `PARAMETER_OUT_OF_RANGE`). Answers always carry every key of the schema.

Errors on `/v1`: `{"error": {"code", "status", "reason", "message"}}` with a stable UPPER_SNAKE `reason`; on
`/v3`: the envelope with `data: null` and `response_code` from ClickSend's vocabulary. Every answer carries
`X-Request-Id` and `traceparent`.

`x-sendsafe-permission` is the permission the caller must hold; `x-sendsafe-step-up` (privileged) means that on a
session the second factor must be recent (else 401 `INSUFFICIENT_USER_AUTHENTICATION`: `POST /v1/auth/step-up`);
`x-sendsafe-session-only` refuses API keys (403 `SESSION_REQUIRED`)."""


@cache
def proto_comments() -> dict[str, str]:
    """The protos' comments by full name (empty when the generated file is missing)."""
    try:
        text = (resources.files("sendsafe") / "proto_comments.json").read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError):
        return {}
    data: dict[str, str] = json.loads(text)
    return data


def _method(route: Route) -> descriptor.MethodDescriptor:
    return descriptor_pool.Default().FindMethodByName(route.rpc_path.lstrip("/").replace("/", "."))


def openapi_path(template: str) -> str:
    """`/v1/things/{thing.id=*}` -> `/v1/things/{thing.id}`."""
    return _VAR_RE.sub(lambda m: "{" + m.group(1) + "}", template)


def operation_ids(routes: list[Route]) -> dict[str, str]:
    """Route key -> operationId: the RPC name, qualified by its service when two services share a name."""
    counts: dict[str, int] = {}
    for r in routes:
        counts[r.rpc_name] = counts.get(r.rpc_name, 0) + 1
    return {r.key: r.rpc_name if counts[r.rpc_name] == 1 else r.rpc_path.strip("/").split(".")[-1].replace("/", "_")
            for r in routes}


def document(routes: list[Route], comments: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes` (deterministic: same routes, same document)."""
    schemas = Schemas(proto_comments() if comments is None else comments)
    ids = operation_ids(routes)
    paths: dict[str, dict[str, Any]] = {}
    tags: dict[str, str] = {}
    for route in sorted(routes, key=lambda r: (r.template, r.http_method)):
        method = _method(route)
        service = method.containing_service
        tags.setdefault(service.name, schemas.comment(service.full_name))
        op = _operation(route, method, ids[route.key], schemas)
        paths.setdefault(openapi_path(route.template), {})[route.http_method.lower()] = op
    paths[OPENAPI_PATH] = {"get": {
        "operationId": "GetOpenApiDocument", "summary": "This document.", "tags": ["Gateway"], "security": [],
        "x-sendsafe-permission": None, "x-sendsafe-public": True,
        "responses": {"200": {"description": "The OpenAPI 3.1 document.", "content": {
            JSON_CONTENT_TYPE: {"schema": {"type": "object"}}}}},
    }}
    tags["Gateway"] = "The gateway itself."
    components: dict[str, Any] = {
        "securitySchemes": {
            "apiKey": {"type": "http", "scheme": "basic", "description":
                       "ClickSend's scheme: HTTP Basic with the API username and an API key (never a password)."},
            "session": {"type": "http", "scheme": "bearer", "description":
                        "A session token from `POST /v1/auth/login` (or `/v1/staff/login`)."},
        },
        "headers": {
            "X-Request-Id": {"description": "The request's id (quote it when asking for help).",
                             "schema": {"type": "string"}},
            "traceparent": {"description": "W3C trace context of the gateway's span.", "schema": {"type": "string"}},
            "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}},
            "WWW-Authenticate": {"description": "The challenge (Basic, or RFC 9470 step-up on a session).",
                                 "schema": {"type": "string"}},
        },
        "responses": _error_responses(),
        "schemas": {**_error_schemas(), **dict(sorted(schemas.components.items()))},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": TITLE, "version": VERSION, "description": INFO},
        "tags": [{"name": n, "description": d} if d else {"name": n} for n, d in sorted(tags.items())],
        "paths": dict(sorted(paths.items())),
        "components": components,
    }


def _operation(route: Route, method: descriptor.MethodDescriptor, op_id: str, schemas: Schemas) -> dict[str, Any]:
    access = method.GetOptions().Extensions[options_pb2.access]
    text = schemas.comment(method.full_name)
    op: dict[str, Any] = {"operationId": op_id, "tags": [method.containing_service.name]}
    if text:
        op["summary"] = summary(text)
        op["description"] = text
    params = _path_params(route, schemas) + _query_params(route, schemas)
    if route.rpc_path in IDEMPOTENT_RPCS:
        params.append({"name": "Idempotency-Key", "in": "header", "required": False, "schema": {
            "type": "string", "minLength": 1, "maxLength": 255}, "description":
            "A retried request with the same key returns the first answer (24 h); nothing is done twice."})
    if params:
        op["parameters"] = params
    body = _request_body(route, schemas)
    if body is not None:
        op["requestBody"] = body
    op["responses"], op["x-sendsafe-error-reasons"] = _responses(route, access, schemas)
    if access.public:
        op["security"] = []
    elif access.session_only:
        op["security"] = [{"session": []}]
    else:
        op["security"] = [{"apiKey": []}, {"session": []}]
    op["x-sendsafe-permission"] = access.permission or None
    op["x-sendsafe-step-up"] = access.privileged
    op["x-sendsafe-session-only"] = access.session_only
    op["x-sendsafe-public"] = access.public
    if access.data_out:
        op["x-sendsafe-data-out"] = _DATA_OUT.get(access.data_out, str(access.data_out))
    op["x-sendsafe-rpc"] = route.rpc_path
    op["x-sendsafe-envelope"] = "none" if route.surface is Surface.V1 else ("bare" if route.bare else "clicksend")
    return op


def summary(text: str) -> str:
    """The first sentence of a comment, on one line."""
    flat = " ".join(text.split())
    m = re.match(r"(.+?[.!?])(\s|$)", flat)
    return (m.group(1) if m else flat)[:200]


def _field_at(desc: descriptor.Descriptor, dotted: str) -> descriptor.FieldDescriptor:
    current, field = desc, None
    for part in dotted.split("."):
        field = current.fields_by_name[part]
        if field.type == FD.TYPE_MESSAGE:
            current = message_of(field)
    assert field is not None
    return field


def _path_params(route: Route, schemas: Schemas) -> list[dict[str, Any]]:
    out = []
    for dotted in route.path_vars.values():
        field = _field_at(route.input_desc, dotted)
        p: dict[str, Any] = {"name": dotted, "in": "path", "required": True,
                             "schema": schemas.value(field, route.surface)}
        if schemas.comment(field.full_name):
            p["description"] = schemas.comment(field.full_name)
        out.append(p)
    return out


def _query_params(route: Route, schemas: Schemas) -> list[dict[str, Any]]:
    """Every field the query may set (`gateway.transcode.request`): with a body other than `*`, the fields outside
    the body field and the path, by their wire names, nested messages by dotted names."""
    if route.body == "*":
        return []
    bound = set(route.path_vars.values())
    out: list[dict[str, Any]] = []

    def walk(desc: descriptor.Descriptor, wire_prefix: str, proto_prefix: str, seen: frozenset[str]) -> None:
        for f in desc.fields:
            proto = proto_prefix + f.name
            if proto in bound or (not proto_prefix and f.name == route.body) or is_map(f):
                continue
            name = wire_prefix + wire_name(f)
            if f.type == FD.TYPE_MESSAGE and message_of(f).full_name not in SCALAR_MESSAGES:
                sub = message_of(f)
                if not f.is_repeated and sub.full_name not in seen:
                    walk(sub, name + ".", proto + ".", seen | {sub.full_name})
                continue
            schema = schemas.value(f, route.surface)
            p: dict[str, Any] = {"name": name, "in": "query", "required": False}
            if f.is_repeated:
                p.update(schema={"type": "array", "items": schema}, style="form", explode=True)
            else:
                p["schema"] = schema
            if schemas.comment(f.full_name):
                p["description"] = schemas.comment(f.full_name)
            out.append(p)

    walk(route.input_desc, "", "", frozenset({route.input_desc.full_name}))
    return out


def _request_body(route: Route, schemas: Schemas) -> dict[str, Any] | None:
    if not route.body:
        return None
    if route.upload:
        return {"required": True, "description": "The raw body, with its Content-Type (e.g. text/csv).",
                "content": {"*/*": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}}}
    if route.body == "*":
        schema = schemas.ref(route.input_desc, route.surface)
    else:
        schema = schemas.value(route.input_desc.fields_by_name[route.body], route.surface)
    return {"required": False, "content": {JSON_CONTENT_TYPE: {"schema": schema}}}


def _success_schema(route: Route, schemas: Schemas) -> Schema:
    if route.surface is Surface.V1:
        return schemas.ref(route.output_desc, route.surface)
    if route.data_field == "-":
        data: Schema = {"type": "null"}
    elif route.data_field:
        data = schemas.field(route.output_desc.fields_by_name[route.data_field], route.surface)
    else:
        data = schemas.ref(route.output_desc, route.surface)
    if route.bare:
        return data
    return {"type": "object", "required": ["http_code", "response_code", "response_msg", "data"], "properties": {
        "http_code": {"const": 200}, "response_code": {"const": "SUCCESS"},
        "response_msg": {"const": route.response_msg}, "data": data}}


_HEADERS = {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"},
            "traceparent": {"$ref": "#/components/headers/traceparent"}}


def _responses(route: Route, access: Any, schemas: Schemas) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The operation's responses, and the reasons the gateway and the guard may give per error status."""
    if route.streaming:
        ok: dict[str, Any] = {"description": "A download, streamed as the service sends it, in the service's content"
                              " type (e.g. application/x-ndjson).", "headers": _HEADERS,
                              "content": {"application/octet-stream": {"schema": {"type": "string"}}}}
    else:
        ok = {"description": "Success.", "headers": _HEADERS,
              "content": {JSON_CONTENT_TYPE: {"schema": _success_schema(route, schemas)}}}
    reasons: dict[str, list[str]] = {}
    takes_input = bool(route.body or route.path_vars or _query_params(route, schemas))
    if takes_input:
        reasons["400"] = ["INVALID_ARGUMENT", "INVALID_FIELD_VALUE", "PARAMETER_OUT_OF_RANGE", "UNKNOWN_FIELD"]
        if route.body and not route.upload:
            reasons["400"] += ["MALFORMED_JSON"]
    if not access.public:
        reasons["401"] = ["INVALID_CREDENTIALS", "API_KEY_REVOKED", "API_KEY_EXPIRED"]
        if access.privileged:
            reasons["401"].append(STEP_UP_REASON)
        reasons["403"] = ["MISSING_PERMISSION", "API_KEY_SCOPE", "API_KEY_ADDRESS_NOT_ALLOWED"]
        if access.session_only:
            reasons["403"].append("SESSION_REQUIRED")
        if access.data_out == options_pb2.DATA_OUT_DESTINATION:
            reasons["403"].append("DEIDENTIFIED_USER")
    if route.path_vars:
        reasons["404"] = ["NOT_FOUND"]
    if route.body:
        reasons["413"] = ["BODY_TOO_LARGE"]
        if not route.upload:
            reasons["415"] = ["UNSUPPORTED_MEDIA_TYPE"]
    reasons["429"] = ["TOO_MANY_REQUESTS", "UNAUTHENTICATED_RATE_LIMITED"]
    reasons["503"] = ["BACKEND_UNAVAILABLE"] + (["AUDIT_UNAVAILABLE"] if access.privileged else [])
    prefix = "ClickSend" if route.surface is Surface.CLICKSEND else "V1"
    out: dict[str, Any] = {"200": ok}
    for status in sorted(reasons):
        out[status] = {"$ref": f"#/components/responses/{prefix}{status}"}
    out["default"] = {"$ref": f"#/components/responses/{prefix}Error"}
    return out, reasons


_STATUS_TEXT = {"400": "Bad request.", "401": "Not authenticated.", "403": "Not allowed.", "404": "Not found.",
                "413": "Body too large.", "415": "Not JSON.", "429": "Too many requests.",
                "503": "Unavailable; retry after Retry-After.", "Error": "Any other error; the reason names it."}


def _error_responses() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for prefix, schema in (("ClickSend", "ClickSendError"), ("V1", "Error")):
        for status, text in _STATUS_TEXT.items():
            headers = dict(_HEADERS)
            if status == "401":
                headers["WWW-Authenticate"] = {"$ref": "#/components/headers/WWW-Authenticate"}
            if status in ("429", "503"):
                headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
            out[prefix + status] = {"description": text, "headers": headers, "content": {
                JSON_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/" + schema}}}}
    return out


def _error_schemas() -> dict[str, Schema]:
    codes = sorted(set(compat_clicksend.STATUS_CODES.values()) | compat_clicksend.APPLICATION_CODES)
    return {
        "Error": {"type": "object", "required": ["error"], "additionalProperties": False, "description":
                  "An error on /v1 (and every path outside /v3).", "properties": {"error": {
                      "type": "object", "required": ["code", "status", "reason", "message"], "properties": {
                          "code": {"type": "integer", "description": "the HTTP status"},
                          "status": {"type": "string", "description": "the gRPC status code name"},
                          "reason": {"type": "string", "pattern": "^[A-Z][A-Z0-9_]*$",
                                     "description": "stable UPPER_SNAKE reason, e.g. MISSING_PERMISSION"},
                          "message": {"type": "string", "description": "for people; never secrets"}}}}},
        "ClickSendError": {"type": "object", "required": ["http_code", "response_code", "response_msg", "data"],
                           "description": "An error on /v3: ClickSend's envelope with data null; response_code is"
                           " the reason when ClickSend has it, else ClickSend's code for the HTTP status.",
                           "properties": {
                               "http_code": {"type": "integer"},
                               "response_code": {"type": "string", "enum": codes},
                               "response_msg": {"type": "string"},
                               "data": {"type": "null"}}},
    }


def middleware(routes: list[Route]) -> Middleware:
    """Answers GET/HEAD /openapi.json with the document of `routes` (built now, once); passes anything else on."""
    body = dumps(document(routes))

    @web.middleware
    async def serve(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == OPENAPI_PATH and request.method in ("GET", "HEAD"):
            return web.Response(body=body, content_type=JSON_CONTENT_TYPE)
        return await handler(request)

    return serve


__all__ = ["OPENAPI_PATH", "document", "middleware", "openapi_path", "proto_comments", "summary"]
