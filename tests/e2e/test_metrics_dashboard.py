"""Every PromQL expression of the Grafana dashboard (deploy/grafana/sendsafe.json) and of the alert rules
names metrics the suite's processes really expose (issue 16): after a send has been delivered, each
process's /metrics is scraped and every metric name an expression uses must be among what they serve, so a
renamed metric breaks this test instead of a dashboard panel or an alert silently."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import clicksend
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.api_client import sdk_client, until
from tests.e2e.conftest import Customer
from tools.suite import Suite

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "sendsafe.json"
RULES = REPO / "deploy" / "k8s" / "components" / "prometheus-operator" / "prometheus-rules.yaml"
METRIC = re.compile(r"\b(sendsafe_[a-z0-9_]+)\b")


def _exposed(suite: Suite) -> set[str]:
    names: set[str] = set()
    for port in suite.metrics_ports().values():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        names |= {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
    return names


def _dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dash["panels"] for target in panel.get("targets", [])]


def test_dashboard_and_alerts_name_metrics_that_exist(customer: Customer, suite: Suite) -> None:
    with sdk_client(customer.url, customer.username, customer.api_key, str(customer.ca)) as client:
        sent = clicksend.SmsApi(client).send_sms(
            send_sms_request={"messages": [{"to": "+61411111111", "body": "dashboard"}]})
        assert sent.data.queued_count == 1
    # Some series exist once something happened: the delivery's carrier figures, and the audit log's
    # integrity once its first self-verification ran (30 s after it started).
    after_events = {"sendsafe_carrier_submit_duration_seconds_count", "sendsafe_audit_integrity_ok",
                    "sendsafe_message_accept_to_final_seconds_count"}
    exposed = until(lambda: _exposed(suite), lambda names: after_events <= names,
                    "a delivery's carrier metrics and the audit log's first verification", deadline_s=90)

    exprs = _dashboard_exprs()
    titles = {t for t, _ in exprs}
    assert len(exprs) >= 20 and {"Requests by route", "Dispatch backlog (stream entries)",
                                 "Newest signed checkpoint age"} <= titles
    rules = yaml.safe_load(RULES.read_text())
    exprs += [(r["alert"], r["expr"]) for g in rules["spec"]["groups"] for r in g["rules"]]
    missing = {}
    for where, expr in exprs:
        used = set(METRIC.findall(expr))
        assert used, f"{where}: {expr!r} names no SendSafe metric"
        if unknown := used - exposed:
            missing[where] = sorted(unknown)
    assert not missing, f"expressions name metrics no process exposes: {missing}"
