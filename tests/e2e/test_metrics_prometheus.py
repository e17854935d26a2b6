"""A real Prometheus (Debian's binary, `make sysdeps`) scrapes every process of the suite; after sends and a
malformed request through the HTTPS gateway, PromQL over its HTTP API shows the sends, their deliveries
and the error (issue 16). Without the binary this test fails: it is a test dependency, not an option."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import clicksend
import pytest

from tests.e2e.api_client import Http, sdk_client, until
from tests.e2e.conftest import Customer
from tools.suite import Suite

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / ".dev" / "prometheus" / "usr" / "bin" / "prometheus"
SEND_ROUTE = "/v3/sms/send"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PromQL:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback http
            body = json.load(resp)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def scalar(self, expr: str) -> float:
        """The single value of `expr` (0 when it has no series yet)."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture(scope="module")
def prometheus(suite: Suite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PromQL]:
    assert PROMETHEUS.exists(), f"{PROMETHEUS} is missing: run `make sysdeps`"
    work = tmp_path_factory.mktemp("prometheus")
    targets = [{"targets": [f"127.0.0.1:{port}"], "labels": {"process": label}}
               for label, port in suite.metrics_ports().items()]
    config = {"global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
              "scrape_configs": [{"job_name": "sendsafe", "static_configs": targets}]}
    (work / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = _free_port()
    log = open(work / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(PROMETHEUS), f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        prom = PromQL(port)

        def targets_up() -> float:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited: {(work / 'prometheus.log').read_text()[-2000:]}")
            try:
                return prom.scalar("count(up == 1)")
            except OSError:
                return -1.0

        until(targets_up, lambda n: n == len(targets), f"all {len(targets)} processes scraped", deadline_s=60)
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_prometheus_sees_sends_deliveries_and_an_error(prometheus: PromQL, customer: Customer,
                                                       suite: Suite) -> None:
    every = set(suite.metrics_ports())
    processes = {r["metric"]["process"] for r in prometheus.query("sendsafe_build_info == 1")}
    assert processes == every  # every process: the four services, the worker(s) and the gateway

    accepted = "sum(sendsafe_messages_accepted_total)"
    delivered = 'sum(sendsafe_delivery_results_total{outcome="sent"})'
    sends_ok = f'sum(sendsafe_http_requests_total{{route="{SEND_ROUTE}",status="200"}})'
    malformed = f'sum(sendsafe_http_requests_total{{route="{SEND_ROUTE}",status="400",reason="MALFORMED_JSON"}})'
    rpc_sends = 'sum(sendsafe_rpc_requests_total{method=~".*/SendSms",code="OK"})'
    final = 'sum(sendsafe_message_accept_to_final_seconds_count{status="DELIVERED"})'  # the carrier's receipts
    before = {q: prometheus.scalar(q) for q in (accepted, delivered, sends_ok, malformed, rpc_sends, final)}

    with sdk_client(customer.url, customer.username, customer.api_key, str(customer.ca)) as client:
        sms = clicksend.SmsApi(client)
        for i in range(2):
            sent = sms.send_sms(send_sms_request={"messages": [{"to": "+61411111111", "body": f"metrics {i}"}]})
            assert sent.data.queued_count == 1
    bad = Http(customer.url, str(customer.ca)).call(
        "POST", SEND_ROUTE, auth=(customer.username, customer.api_key), body=b'{"messages": [',
        headers={"Content-Type": "application/json"})
    assert bad.status == 400 and bad.json()["response_code"] == "BAD_REQUEST"  # ClickSend's envelope

    def grown() -> dict[str, float]:
        return {q: prometheus.scalar(q) - before[q] for q in before}

    until(grown, lambda d: d[accepted] >= 2 and d[delivered] >= 2 and d[sends_ok] >= 2 and d[malformed] >= 1
          and d[rpc_sends] >= 2 and d[final] >= 2, "the sends, their deliveries and the error in Prometheus",
          deadline_s=60)

    # Latency histograms and the backlog gauges are there, labelled by template and method, never by ids.
    assert prometheus.scalar(f'sum(sendsafe_http_request_duration_seconds_count{{route="{SEND_ROUTE}"}})') >= 2
    assert prometheus.query("sendsafe_dispatch_oldest_entry_age_seconds")
    assert prometheus.query("sendsafe_dead_letters")
    assert prometheus.scalar('min(sendsafe_tls_cert_expiry_seconds)') > 0
    # The audit log's figures come from the audit process (checkpoints are signed once a minute: the
    # series is there, 0 until the first one).
    assert prometheus.query('sendsafe_audit_checkpoint_timestamp_seconds{process="audit"}')
    assert prometheus.scalar('sendsafe_audit_tree_size{process="audit"}') > 0
    labels = {k for r in prometheus.query("sendsafe_http_requests_total") for k in r["metric"]}
    assert labels <= {"__name__", "job", "instance", "process", "route", "method", "status", "reason"}
    assert not [r for r in prometheus.query("sendsafe_http_requests_total") if customer.username in str(r)]
