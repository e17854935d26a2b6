"""The monitoring component (deploy/k8s/components/prometheus-operator, issue 16): its alert rules pass
`promtool check rules` and their unit tests (`promtool test rules`), every alert links to a section of
docs/runbook.md that exists, and an overlay rendered with the component scrapes every SendSafe process on
its plaintext metrics port and admits Prometheus to that port only. promtool is Debian's (`make sysdeps`
unpacks it into .dev/prometheus): without it these tests fail, they do not skip."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools.k8s_manifests import Doc, render_dir

REPO = Path(__file__).resolve().parents[2]
COMPONENT = REPO / "deploy" / "k8s" / "components" / "prometheus-operator"
PROMTOOL = REPO / ".dev" / "prometheus" / "usr" / "bin" / "promtool"
RUNBOOK = REPO / "docs" / "runbook.md"
UNIT_TESTS = Path(__file__).with_name("prometheus-rules.test.yaml")  # promtool test rules: the alerts' unit tests
METRICS_PORT = 9464
# The runbook's alert table (docs/runbook.md, "Alerts"): every row has a rule.
RUNBOOK_ALERTS = {
    "SendSafeDeliveryBacklog", "SendSafeDeadLetters", "SendSafeCarrierDown", "SendSafeAuditLag",
    "SendSafeAuditCheckpointStale", "SendSafeAuditIntegrity", "SendSafeCertificateExpiry",
    "SendSafeHttpErrorRatio", "SendSafeRpcErrorRatio",
}


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((COMPONENT / "prometheus-rules.yaml").read_text())
    assert doc["kind"] == "PrometheusRule" and doc["apiVersion"] == "monitoring.coreos.com/v1"
    return [rule for group in doc["spec"]["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def rule_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The PrometheusRule's groups as a plain rule file, beside a copy of its unit tests."""
    assert PROMTOOL.exists(), f"{PROMTOOL} is missing: run `make sysdeps`"
    out = tmp_path_factory.mktemp("rules")
    doc = yaml.safe_load((COMPONENT / "prometheus-rules.yaml").read_text())
    (out / "rules.yaml").write_text(yaml.safe_dump({"groups": doc["spec"]["groups"]}))
    shutil.copy(UNIT_TESTS, out / "rules.test.yaml")
    return out


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PROMTOOL), *args], capture_output=True, text=True, timeout=120, check=False)


def test_promtool_check_rules(rule_dir: Path) -> None:
    result = _promtool("check", "rules", str(rule_dir / "rules.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_promtool_unit_tests_fire_and_stay_quiet(rule_dir: Path) -> None:
    result = _promtool("test", "rules", str(rule_dir / "rules.test.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", UNIT_TESTS.read_text()))
    assert tested == {r["alert"] for r in _rules()}  # every alert has a unit test


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", title)))
    return out


def test_every_runbook_alert_has_a_rule_that_links_to_its_section(with_component: list[Doc]) -> None:
    """As rendered: every alert's runbook_url is absolute - the PrometheusRule's one base URL (annotation
    sendsafe.io/runbook-base-url, put in front by the component's kustomize replacement) and a section
    anchor that docs/runbook.md has."""
    rendered = next(d for d in with_component if d["kind"] == "PrometheusRule")
    base = rendered["metadata"]["annotations"]["sendsafe.io/runbook-base-url"]
    assert re.fullmatch(r"https://[^/#\s]+/\S*docs/runbook\.md", base), base
    rules = [rule for group in rendered["spec"]["groups"] for rule in group["rules"]]
    assert {r["alert"] for r in rules} == RUNBOOK_ALERTS
    anchors = _anchors(RUNBOOK.read_text())
    for rule in rules:
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(base + "#"), (rule["alert"], url)
        assert url.split("#", 1)[1] in anchors, f"{rule['alert']}: no section {url} in docs/runbook.md"
        assert rule["labels"]["severity"] in {"page", "ticket"}
        assert rule["annotations"]["summary"]
        # An alert names a process, a carrier or a certificate, never an account, key or number.
        assert not re.search(r"account|api_key|key_id|phone|to_hash", rule["expr"]), rule["alert"]
    names = RUNBOOK.read_text()
    for alert in RUNBOOK_ALERTS:
        assert alert in names, f"docs/runbook.md's alert table does not list {alert}"


@pytest.fixture(scope="module")
def with_component(tmp_path_factory: pytest.TempPathFactory) -> list[Doc]:
    """The dev overlay rendered with the component (kustomize wants relative paths)."""
    work = tmp_path_factory.mktemp("overlay")
    rel = Path(os.path.relpath(REPO, work))
    (work / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [str(rel / "deploy/k8s/overlays/dev")],
        "components": [str(rel / "deploy/k8s/components/prometheus-operator")],
    }))
    return render_dir(work)


def _platform_deployments(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] == "Deployment"
            and d["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "sendsafe"
            and d["metadata"].get("namespace") == "sendsafe"]


def test_every_sendsafe_process_is_scraped_on_its_plaintext_metrics_port(with_component: list[Doc]) -> None:
    deployments = _platform_deployments(with_component)
    names = {d["metadata"]["name"] for d in deployments}
    assert {"gateway", "identity", "keys", "messaging", "messaging-worker", "messaging-notifier", "audit"} <= names
    env = next(d for d in with_component if d["kind"] == "ConfigMap"
               and d["metadata"]["name"].startswith("sendsafe-env"))
    assert env["data"]["METRICS_LISTEN"] == f"0.0.0.0:{METRICS_PORT}"
    assert env["data"]["GRPC_LISTEN"].rsplit(":", 1)[1] != str(METRICS_PORT)  # never the mTLS port
    for dep in deployments:
        pod = dep["spec"]["template"]
        container = pod["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports.get("metrics") == METRICS_PORT, dep["metadata"]["name"]
        assert any(ref.get("configMapRef", {}).get("name") == env["metadata"]["name"]
                   for ref in container.get("envFrom", [])), f"{dep['metadata']['name']} lacks METRICS_LISTEN"
        assert pod["metadata"]["labels"]["app.kubernetes.io/part-of"] == "sendsafe"
    monitor = next(d for d in with_component if d["kind"] == "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/part-of": "sendsafe"}
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]


def test_prometheus_is_admitted_to_the_metrics_port_only(with_component: list[Doc]) -> None:
    policy = next(d for d in with_component if d["kind"] == "NetworkPolicy"
                  and d["metadata"]["name"] == "allow-prometheus-scrape")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    for rule in policy["spec"]["ingress"]:
        assert [p["port"] for p in rule["ports"]] == [METRICS_PORT]
        for peer in rule["from"]:
            assert "ipBlock" not in peer and peer["namespaceSelector"] and peer["podSelector"]


def test_a_plain_prometheus_scrapes_every_process_without_the_operator(rendered: dict[str, list[Doc]]) -> None:
    """The component is opt-in (it needs the Operator's CRDs), so every overlay without it still serves
    /metrics on 9464 from every SendSafe pod, announces it with prometheus.io/* annotations on each pod
    template (the NetworkPolicy admitting Prometheus comes with the component, or the deployer lists it)."""
    for overlay, docs in rendered.items():
        assert not any(d["kind"] in {"PodMonitor", "PrometheusRule"} for d in docs), overlay
        env = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("sendsafe-env"))
        assert env["data"]["METRICS_LISTEN"] == f"0.0.0.0:{METRICS_PORT}", overlay
        deployments = _platform_deployments(docs)
        assert len(deployments) >= 7, overlay
        for dep in deployments:
            notes = dep["spec"]["template"]["metadata"].get("annotations", {})
            assert (notes.get("prometheus.io/scrape"), notes.get("prometheus.io/port"),
                    notes.get("prometheus.io/path")) == ("true", str(METRICS_PORT), "/metrics"), \
                (overlay, dep["metadata"]["name"])
            container = dep["spec"]["template"]["spec"]["containers"][0]
            assert any(ref.get("configMapRef", {}).get("name") == env["metadata"]["name"]
                       for ref in container.get("envFrom", [])), (overlay, dep["metadata"]["name"])
            assert {p["name"]: p["containerPort"] for p in container["ports"]}.get("metrics") == METRICS_PORT
