"""Helpers for the interactive-login e2e tests: Bearer calls, the audit feed, waiting for a credential to stop
working at the gateway, and the check that no secret reached a log line or an audit event."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.e2e.api_client import Http, Response

PASSWORD = "violet staple orbit 7 lantern"


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def login(http: Http, username: str, password: str = PASSWORD, *, staff: bool = False, **second: str) -> Response:
    path = "/v1/staff/login" if staff else "/v1/auth/login"
    return http.call("POST", path, json_body={"username": username, "password": password, **second})


def reason(r: Response) -> str:
    return str(r.json()["error"]["reason"])


def wait_rejected(http: Http, headers: dict[str, str], path: str = "/v3/account", deadline_s: float = 10.0) -> None:
    """A revoked credential stops at the gateway within its bounded auth cache time (5 s at most)."""
    end = time.monotonic() + deadline_s
    while (status := http.call("GET", path, headers=headers).status) != 401:
        assert status == 200, status
        if time.monotonic() > end:
            pytest.fail(f"a revoked credential still works at the gateway after {deadline_s:.0f} s")
        time.sleep(0.2)


def feed(http: Http, *, auth: tuple[str, str] | None = None, headers: dict[str, str] | None = None,
         action: str = "") -> list[dict[str, Any]]:
    """Every event of the caller's audit feed (optionally one action), oldest first."""
    events: list[dict[str, Any]] = []
    token = ""
    while True:
        r = http.call(
            "GET", f"/v1/audit/events?page_size=500&action={quote(action)}&page_token={quote(token)}",
            auth=auth, headers=headers,
        )
        assert r.status == 200, r.body
        page = r.json()
        events.extend(page["events"])
        token = page.get("next_page_token", "")
        if not token:
            return events


def wait_feed(http: Http, want: Any, deadline_s: float = 15.0, **kw: Any) -> list[dict[str, Any]]:
    """The feed once `want(events)` holds (events reach the log in the services' audit batches)."""
    end = time.monotonic() + deadline_s
    while True:
        events = feed(http, **kw)
        if want(events):
            return events
        if time.monotonic() > end:
            pytest.fail(f"the audit feed never showed what was expected: {json.dumps(events)[-2000:]}")
        time.sleep(0.2)


def assert_no_secret_anywhere(workdir: Path, texts: list[str], secrets: list[str]) -> None:
    """No secret in any log file of the suite (every process writes one under its workdir) nor in `texts`."""
    assert all(len(s) >= 12 for s in secrets), "only long secrets can be searched for without chance matches"
    logs = sorted(workdir.glob("*.log"))
    assert {p.stem for p in logs} >= {"audit", "keys", "messaging", "identity", "gateway"}
    for path in logs:
        content = path.read_text(errors="replace")
        for secret in secrets:
            assert secret not in content, f"a secret appears in {path.name}"
    for text in texts:
        for secret in secrets:
            assert secret not in text, "a secret appears in the audit feed"
