"""The running gateway serves its OpenAPI document at GET /openapi.json without credentials, built from the routes it
mounted (so the document and the router cannot disagree), and answers an SDK method it does not offer with a 404
that says so."""

from __future__ import annotations

import json

from aiohttp import web

from gateway.edge import SECURITY_HEADERS
from gateway.openapi import OPENAPI_PATH, document, openapi_path
from tests.integration.gateway.gw_support import ALICE, RunningGateway
from tools.apidocs import OPENAPI_FILE, ROOT, SDK_PAGE


async def test_openapi_json_is_public_and_is_the_checked_in_document(http, gw: RunningGateway) -> None:
    async with http.get(gw.url + OPENAPI_PATH) as resp:  # no Authorization header
        assert resp.status == 200 and resp.content_type == "application/json"
        served = json.loads(await resp.read())
        for name, value in SECURITY_HEADERS.items():
            assert resp.headers[name] == value
    assert served == document(gw.gateway.routes)
    assert served == json.loads((ROOT / OPENAPI_FILE).read_text())
    async with http.post(gw.url + OPENAPI_PATH) as resp:  # only GET/HEAD: anything else is the router's
        assert resp.status == 404


async def test_the_router_and_the_document_name_the_same_routes(gw: RunningGateway) -> None:
    app: web.Application = gw.gateway.app
    mounted = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None
               and r.method != "HEAD"}
    by_aiohttp = {r.aiohttp_path: openapi_path(r.template) for r in gw.gateway.routes}
    served = {(m, by_aiohttp[p]) for m, p in mounted}
    doc = document(gw.gateway.routes)
    in_doc = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops if p != OPENAPI_PATH}
    assert served == in_doc and len(served) == len(gw.gateway.routes)


async def test_an_sdk_method_not_offered_gets_a_404_that_says_so(http, gw: RunningGateway) -> None:
    # SmsApi.view_sms_templates: GET /v3/sms/templates, not offered (docs/clicksend-sdk.md)
    async with http.get(gw.url + "/v3/sms/templates", headers=ALICE) as resp:
        body = json.loads(await resp.read())
    assert resp.status == 404 and body["response_code"] == "NOT_FOUND" and body["data"] is None
    assert "does not offer" in body["response_msg"] and SDK_PAGE in body["response_msg"]
    async with http.get(gw.url + "/v1/no-such-thing") as resp:
        body = json.loads(await resp.read())
    assert resp.status == 404 and body["error"]["reason"] == "ROUTE_NOT_FOUND"
    assert OPENAPI_PATH in body["error"]["message"]
