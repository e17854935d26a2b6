"""The gateway's per-call audit events survive the audit service being killed (SIGKILL, mid-burst) and
started again: once it is back, every call made during the burst is in the log exactly once."""

from __future__ import annotations

import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from tests.e2e.api_client import Http
from tests.e2e.conftest import Customer
from tools.suite import Suite

WORKERS = 8


def test_killing_audit_during_a_burst_of_gateway_calls_loses_no_event(customer: Customer, suite: Suite) -> None:
    http = Http(customer.url, str(customer.ca))
    auth = (customer.username, customer.api_key)
    since = (datetime.now(UTC) - timedelta(seconds=5)).isoformat().replace("+00:00", "Z")
    request_ids: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def caller() -> None:
        while not stop.is_set():
            r = http.call("GET", "/v3/account", auth=auth)
            with lock:
                request_ids.append(r.headers["x-request-id"])

    def calls() -> int:
        with lock:
            return len(request_ids)

    def wait_for(n: int, what: str) -> None:
        end = time.monotonic() + 60
        while calls() < n:
            assert time.monotonic() < end, f"timed out waiting for {what}"
            time.sleep(0.01)

    # The audit service comes back on the port the other processes know.
    audit = suite.procs["audit"]
    suite.config.ports["audit"] = audit.port or 0
    with ThreadPoolExecutor(WORKERS) as pool:
        for _ in range(WORKERS):
            pool.submit(caller)
        wait_for(100, "the burst to start")
        audit.popen.kill()  # SIGKILL: no graceful shutdown, batches in flight are cut off
        audit.popen.wait()
        killed_at = calls()
        restarted = suite.restart("audit")
        assert restarted.port == audit.port
        restarted_at = calls()
        wait_for(restarted_at + 100, "calls after the restart")
        stop.set()
    assert restarted_at > killed_at, "no gateway call happened while the audit service was down"

    # Every call is in the log once it is back (the gateway's client retried what it buffered).
    wanted = set(request_ids)

    def logged() -> list[str]:
        found: list[str] = []
        token = ""
        while True:
            query = urllib.parse.urlencode({"action": "gateway.GetAccount", "start_time": since, "page_size": 500,
                                            "page_token": token})
            r = http.call("GET", f"/v1/audit/events?{query}", auth=auth)
            if r.status == 503:  # the gateway's channel may still be backing off from the outage
                return []
            assert r.status == 200, r.body
            page = r.json()
            found += [e["request_id"] for e in page["events"] if e["request_id"] in wanted]
            token = page["next_page_token"]
            if not token:
                return found

    end = time.monotonic() + 60
    found = logged()
    while set(found) != wanted and time.monotonic() < end:
        time.sleep(0.2)
        found = logged()
    missing = wanted - set(found)
    assert not missing, f"{len(missing)} of {len(wanted)} calls have no audit event"
    assert len(found) == len(wanted), "some calls were recorded twice"
