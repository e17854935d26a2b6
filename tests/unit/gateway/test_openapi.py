"""The OpenAPI document (gateway.openapi) against the routes it describes: the checked-in reference is what the code
generates, it is valid OpenAPI 3.1, it has every route and nothing else, its flags are the protos', and what the
transcoder really writes validates against its schemas."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import descriptor, message
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator

from gateway.compat_clicksend import success_envelope
from gateway.openapi import OPENAPI_PATH, document, openapi_path
from gateway.routes import Route, discover_routes
from gateway.surface import Surface
from gateway.transcode.fields import FD, INT_RANGES, SCALAR_MESSAGES, int_bounds, is_map, message_class, message_of
from gateway.transcode.response import message_to_json
from tools import apidocs

ROUTES = discover_routes()
DOC = document(ROUTES)


def test_checked_in_reference_is_what_the_code_generates() -> None:
    stale = apidocs.stale()
    assert not stale, f"{stale} out of date with the routes: run `python -m tools.apidocs` and commit them"


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOC["openapi"] == "3.1.0"
    errors = [e.message for e in OpenAPIV31SpecValidator(DOC).iter_errors()]
    assert errors == []


def test_every_route_is_in_the_document_and_nothing_else() -> None:
    in_doc = {(m.upper(), p) for p, ops in DOC["paths"].items() for m in ops}
    routes = {(r.http_method, openapi_path(r.template)) for r in ROUTES} | {("GET", OPENAPI_PATH)}
    assert in_doc == routes
    ids = [op["operationId"] for ops in DOC["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


def test_each_operation_carries_the_protos_access_rules() -> None:
    for r in ROUTES:
        op = DOC["paths"][openapi_path(r.template)][r.http_method.lower()]
        assert op["x-sendsafe-permission"] == (r.permission or None), r.key
        assert op["x-sendsafe-step-up"] is r.privileged, r.key
        assert op["x-sendsafe-rpc"] == r.rpc_path
        assert (op["security"] == []) is r.public, r.key
        if r.privileged:
            assert "INSUFFICIENT_USER_AUTHENTICATION" in op["x-sendsafe-error-reasons"]["401"], r.key
    send = DOC["paths"]["/v3/sms/send"]["post"]
    assert send["x-sendsafe-permission"] == "sms.send" and send["summary"].startswith("Send 1-1000 messages")
    assert {"apiKey": []} in send["security"] and {"session": []} in send["security"]
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in send["parameters"])
    login = DOC["paths"]["/v1/auth/login"]["post"]
    assert login["security"] == [] and login["x-sendsafe-permission"] is None
    history = {p["name"]: p for p in DOC["paths"]["/v3/sms/history"]["get"]["parameters"]}
    assert history["limit"]["schema"]["maximum"] == 100 and history["date_from"]["schema"]["type"] == "integer"
    assert DOC["components"]["securitySchemes"]["apiKey"]["scheme"] == "basic"


def _fill(msg: message.Message, depth: int = 0) -> message.Message:
    """Every field of `msg` set to a value of its type (nested messages a few levels deep)."""
    for f in msg.DESCRIPTOR.fields:
        if f.containing_oneof is not None and len(f.containing_oneof.fields) > 1 and f.index != \
                f.containing_oneof.fields[0].index:
            continue  # one member per oneof
        if is_map(f):
            entry = message_of(f)
            key = entry.fields_by_name["key"]
            k: Any = "k" if key.type == FD.TYPE_STRING else (True if key.type == FD.TYPE_BOOL else 1)
            target = getattr(msg, f.name)
            value_field = entry.fields_by_name["value"]
            if value_field.type == FD.TYPE_MESSAGE:
                if depth < 3:
                    _fill(target[k], depth + 1)
            else:
                target[k] = _scalar(value_field)
        elif f.type == FD.TYPE_MESSAGE:
            if message_of(f).full_name in SCALAR_MESSAGES or depth >= 3:
                continue
            if f.is_repeated:
                _fill(getattr(msg, f.name).add(), depth + 1)
            else:
                _fill(getattr(msg, f.name), depth + 1)
                if not getattr(msg, f.name).ListFields():
                    getattr(msg, f.name).SetInParent()
        elif f.is_repeated:
            getattr(msg, f.name).append(_scalar(f))
        else:
            setattr(msg, f.name, _scalar(f))
    return msg


def _scalar(f: descriptor.FieldDescriptor) -> Any:
    if f.type in INT_RANGES:
        lo, hi = int_bounds(f)
        return max(lo, min(hi, 7))
    if f.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return 0.5
    if f.type == FD.TYPE_BOOL:
        return True
    if f.type == FD.TYPE_BYTES:
        return b"\x01\x02"
    if f.type == FD.TYPE_ENUM:
        assert f.enum_type is not None
        return f.enum_type.values[-1].number
    return "x"


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator({**schema, "components": DOC["components"]})


@pytest.mark.parametrize("route", [r for r in ROUTES if not r.streaming], ids=lambda r: r.key)
def test_what_the_gateway_writes_validates_against_the_documented_answer(route: Route) -> None:
    schema = DOC["paths"][openapi_path(route.template)][route.http_method.lower()]["responses"]["200"]
    validator = _validator(schema["content"]["application/json"]["schema"])
    cls = message_class(route.output_desc)
    for reply in (cls(), _fill(cls())):
        if route.surface is Surface.CLICKSEND:
            out = success_envelope(route, reply)
        else:
            out = message_to_json(reply, route.surface)
        problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(out)]
        assert problems == [], route.key


@pytest.mark.parametrize("route", [r for r in ROUTES if r.body == "*"], ids=lambda r: r.key)
def test_a_full_request_body_validates_against_the_documented_body(route: Route) -> None:
    body = DOC["paths"][openapi_path(route.template)][route.http_method.lower()]["requestBody"]
    validator = _validator(body["content"]["application/json"]["schema"])
    sample = message_to_json(_fill(message_class(route.input_desc)()), route.surface)
    assert [e.message for e in validator.iter_errors(sample)] == []
    assert not validator.is_valid({**sample, "no_such_field": 1})  # unknown keys are refused, as the gateway does


def test_unknown_route_message_names_the_sdk_table() -> None:
    from gateway.errors import error_body, not_found

    body = error_body(not_found(), Surface.CLICKSEND)
    assert body["http_code"] == 404 and body["response_code"] == "NOT_FOUND" and body["data"] is None
    assert "does not offer" in body["response_msg"] and apidocs.SDK_PAGE in body["response_msg"]
    assert error_body(not_found(), Surface.V1)["error"]["reason"] == "ROUTE_NOT_FOUND"


def test_sdk_table_marks_the_methods_the_routes_serve() -> None:
    methods = {f"{m.api}.{m.name}": m for m in apidocs.sdk_methods()}
    assert len(methods) > 100  # the SDK's whole surface, read from its generated code
    page = apidocs.sdk_page(ROUTES, list(methods.values()))
    assert "| `SmsApi.send_sms` | `POST /v3/sms/send` | works |" in page
    assert "`VoiceMessagingApi.calculate_voice_price` | `POST /v3/voice/price` | not offered | voice is not" in page
    routes = {(r.http_method, apidocs.shape(r.template)) for r in ROUTES}
    for name, m in methods.items():
        line = next(li for li in page.splitlines() if li.startswith(f"| `{name}` |"))
        assert ("| works |" in line) == ((m.http_method, apidocs.shape(m.path)) in routes), name
