"""The API reference, generated from the gateway's routes (the protos' HTTP bindings):

    python -m tools.apidocs            # write docs/openapi.json, docs/api.md, docs/clicksend-sdk.md
    python -m tools.apidocs --check    # exit 1 naming the files that differ (tests/unit/gateway/test_openapi.py)

- docs/openapi.json: `gateway.openapi.document(routes)`, byte for byte what `GET /openapi.json` answers (modulo
  indentation);
- docs/api.md: the same document as a page: every route with its permission, step-up and summary;
- docs/clicksend-sdk.md: every method of the official ClickSend Python SDK (`clicksend`, read from its generated
  code: HTTP method and path template), matched against the routes: works, or not offered and why.

Run it after `make protos` (a proto change changes the reference) and commit the three files.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import pkgutil
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.openapi import OPENAPI_PATH, document
from gateway.routes import Route, discover_routes

ROOT = Path(__file__).resolve().parent.parent
OPENAPI_FILE = "docs/openapi.json"
API_PAGE = "docs/api.md"
SDK_PAGE = "docs/clicksend-sdk.md"

# Why a ClickSend resource is not offered, by the longest matching path prefix.
NOT_OFFERED: dict[str, str] = {
    "/v3/mms": "MMS is not offered (SMS only)",
    "/v3/mms-campaigns": "MMS is not offered (SMS only)",
    "/v3/voice": "voice is not offered (SMS only)",
    "/v3/post": "post (letters, postcards) is not offered",
    "/v3/email": "email through the API is not offered (SendSafe's email is for its own notifications)",
    "/v3/email-campaigns": "email through the API is not offered",
    "/v3/automations": "automations are not offered (use receipt and reply webhooks: /v1/messaging/settings)",
    "/v3/sms-campaigns": "campaigns are not offered (send to a contact list with `list_id` in /v3/sms/send)",
    "/v3/sms/templates": "SMS templates are not offered",
    "/v3/sms/email-sms": "email-to-SMS is not offered",
    "/v3/sms/email-sms-stripped-strings": "email-to-SMS is not offered",
    "/v3/sms/history/export": "not offered: export the whole account instead (POST /v1/account/exports)",
    "/v3/recharge": "billing and recharge are not offered",
    "/v3/reseller": "reseller accounts are not offered",
    "/v3/referral": "referrals are not offered",
    "/v3/statistics": "statistics are not offered (history and receipts have the facts)",
    "/v3/account/usage": "usage reports are not offered",
    "/v3/short-url": "URL shortening is not offered",
    "/v3/uploads": "uploads are not offered (contact imports: POST /v1/lists/{list_id}/imports)",
    "/v3/lists/{}/import": "not offered in ClickSend's form: import a CSV with POST /v1/lists/{list_id}/imports",
    "/v3/lists": "this list operation is not offered (lists and contacts: create, read, change, delete)",
    "/v3/delivery-issues": "delivery-issue reports are not offered",
    "/v3/user-countries": "country settings are not offered",
    "/v3/country-list": "reference data is not offered",
    "/v3/countries": "reference data is not offered",
    "/v3/timezones": "reference data is not offered",
    "/v3/search": "contact search is not offered",
    "/v3/forgot-password": "account recovery through the API is not offered (a security choice)",
    "/v3/forgot-username": "account recovery through the API is not offered (a security choice)",
    "/v3/numbers/registrations": "number registration is not offered",
    "/v3/own-numbers": "changing an own number is not offered (delete it and verify it again)",
    "/v3/senders": "this sender operation is not offered",
}
DEFAULT_REASON = "not offered by SendSafe"


@dataclass(frozen=True)
class SdkMethod:
    api: str  # "SmsApi"
    name: str  # "send_sms"
    http_method: str
    path: str  # "/v3/sms/send"


def shape(path: str) -> str:
    """A path template with its variables unnamed: `/v3/sms/{message_id}/cancel` -> `/v3/sms/{}/cancel`."""
    return re.sub(r"\{[^}]*\}", "{}", path).rstrip("/") or "/"


def sdk_methods() -> list[SdkMethod]:
    """Every API method of the installed `clicksend` SDK, with the HTTP method and path its generated code uses."""
    import clicksend.api

    found: list[SdkMethod] = []
    for info in sorted(pkgutil.iter_modules(clicksend.api.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"clicksend.api.{info.name}")
        for api_name, cls in inspect.getmembers(module, inspect.isclass):
            if not api_name.endswith("Api") or cls.__module__ != module.__name__:
                continue
            for name, _ in inspect.getmembers(cls, inspect.isfunction):
                if name.startswith("_") or name.endswith(("_with_http_info", "_without_preload_content")):
                    continue
                source = inspect.getsource(getattr(cls, f"_{name}_serialize"))
                method = re.search(r"method='([A-Z]+)'", source)
                path = re.search(r"resource_path='([^']+)'", source)
                if method is None or path is None:
                    raise RuntimeError(f"clicksend {api_name}.{name}: no method or path in its generated code")
                found.append(SdkMethod(api_name, name, method.group(1), path.group(1)))
    return found


def not_offered_reason(path: str) -> str:
    s = shape(path)
    best = max((p for p in NOT_OFFERED if s == p or s.startswith(p + "/")), key=len, default="")
    return NOT_OFFERED.get(best, DEFAULT_REASON)


def sdk_page(routes: Iterable[Route], methods: list[SdkMethod]) -> str:
    by_shape = {(r.http_method, shape(r.template)): r for r in routes}
    works = sum((m.http_method, shape(m.path)) in by_shape for m in methods)
    lines = [
        "# The official ClickSend Python SDK against SendSafe",
        "",
        "<!-- Generated by `python -m tools.apidocs` from the installed SDK and the gateway's routes; do not edit."
        " -->",
        "",
        "SendSafe's `/v3` routes are ClickSend-compatible: the official SDK (`pip install clicksend-client==6.0.2`,"
        " imported as `clicksend`) works unchanged for the methods marked **works** (host without `/v3`, the API"
        " username and API key as Basic credentials; see the [README](../README.md)). A method matches a route by"
        " HTTP method and path template. Any other method gets `404` with `response_code` `NOT_FOUND` and a"
        " message saying that the method is not offered. Everything SendSafe offers, including its own `/v1`"
        " routes, is in the [API reference](api.md).",
        "",
        f"{works} of {len(methods)} SDK methods work.",
        "",
        "| SDK method | HTTP | works? | why / SendSafe route |",
        "|---|---|---|---|",
    ]
    for m in sorted(methods, key=lambda m: (m.api, m.name)):
        route = by_shape.get((m.http_method, shape(m.path)))
        if route is not None:
            verdict = "works"
            step_up = " (step-up)" if route.privileged else ""
            why = f"`{route.rpc_name}`, permission `{route.permission or 'none'}`{step_up}"
        else:
            verdict = "not offered"
            why = not_offered_reason(m.path)
        lines.append(f"| `{m.api}.{m.name}` | `{m.http_method} {m.path}` | {verdict} | {why} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def api_page(doc: dict[str, Any], routes: list[Route]) -> str:
    tag_text = {t["name"]: t.get("description", "") for t in doc["tags"]}
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            by_tag.setdefault(op["tags"][0], []).append((method.upper(), path, op))
    lines = [
        "# SendSafe API reference",
        "",
        "<!-- Generated by `python -m tools.apidocs` from the gateway's routes (the protos' HTTP bindings); do not"
        " edit. -->",
        "",
        f"The machine-readable form is [openapi.json](openapi.json) (OpenAPI 3.1), also served by the gateway at"
        f" `GET {OPENAPI_PATH}`. Conventions (surfaces, envelope, errors, authentication) are in the"
        " [README](../README.md) and the [guide](guide.md); which ClickSend SDK methods work is in"
        " [clicksend-sdk.md](clicksend-sdk.md).",
        "",
        "- **permission**: what the caller must hold (`none`: public, no credentials).",
        "- **★** privileged: on a session the second factor must be recent (`STEP_UP_MAX_AGE_SECONDS`), else 401"
        " `INSUFFICIENT_USER_AUTHENTICATION` (RFC 9470): `POST /v1/auth/step-up`, then retry; its audit event is"
        " stored before the change commits.",
        "- **session**: a session only (`Authorization: Bearer`), never an API key (403 `SESSION_REQUIRED`).",
        "- **bare**: a `/v3` answer without ClickSend's envelope (the model is the body).",
        "",
        f"{len(routes)} routes.",
    ]
    for tag in sorted(by_tag):
        lines += ["", f"## {tag}", ""]
        if tag_text.get(tag):
            lines += [_cell(tag_text[tag]), ""]
        lines += ["| route | permission | summary |", "|---|---|---|"]
        for method, path, op in sorted(by_tag[tag], key=lambda t: (t[1], t[0])):
            flags = []
            if op.get("x-sendsafe-step-up"):
                flags.append("★")
            if op.get("x-sendsafe-session-only"):
                flags.append("session")
            if op.get("x-sendsafe-envelope") == "bare":
                flags.append("bare")
            perm = f"`{op['x-sendsafe-permission']}`" if op.get("x-sendsafe-permission") else "none"
            mark = (" " + " ".join(flags)) if flags else ""
            lines.append(f"| `{method} {path}`{mark} | {perm} | {_cell(op.get('summary', ''))} |")
    return "\n".join(lines) + "\n"


def render() -> dict[str, str]:
    """Every generated file's path (from the repository root) and content."""
    routes = discover_routes()
    doc = document(routes)
    return {
        OPENAPI_FILE: json.dumps(doc, indent=1, ensure_ascii=False) + "\n",
        API_PAGE: api_page(doc, routes),
        SDK_PAGE: sdk_page(routes, sdk_methods()),
    }


def stale(root: Path = ROOT) -> list[str]:
    """The generated files that are missing or differ from what the code generates now."""
    return [p for p, text in render().items()
            if not (root / p).exists() or (root / p).read_text(encoding="utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.apidocs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    if args.check:
        old = stale()
        for p in old:
            print(f"{p} is out of date: run python -m tools.apidocs and commit it", file=sys.stderr)
        return 1 if old else 0
    for p, text in render().items():
        (ROOT / p).parent.mkdir(parents=True, exist_ok=True)
        (ROOT / p).write_text(text, encoding="utf-8")
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
