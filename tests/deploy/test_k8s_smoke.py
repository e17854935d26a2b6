"""The cluster manifests really start: each rendered overlay run without kubelet (tests/deploy/kubeletless.py).

For every overlay: every SendSafe Deployment starts at once as a local process with its pod's env, files
and ports, and passes its own startup, readiness and liveness probes; the (suspended) bootstrap Job runs as
an operator would start it, creates the first account and hands its API key over in a Secret through the
Kubernetes API (never its log); one SMS sent through the gateway with that key reaches the carrier; the
backup CronJob's job writes an encrypted backup; every process stops on SIGTERM within its grace period
with exit code 0, and nothing was written outside the writable volumes.
What it cannot show: kubelet, the container runtime, CNI (NetworkPolicies are checked statically in
test_k8s_network.py), cert-manager and trust-manager themselves, the image build (test_deploy_dockerfile.py).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from svckit.db import drop_database, ensure_database
from tests.deploy.fake_kube_api import FakeKubeApi
from tests.deploy.kubeletless import (
    IMAGE_ENTRYPOINT,
    IMAGE_ENV,
    IMAGE_WORKDIR,
    REPO,
    Cluster,
    Pod,
    running,
)
from tests.e2e.api_client import Http, until
from tests.support import CertBundle
from tools.k8s_manifests import OVERLAYS, Doc

STAND_INS = {"dev": ["jaeger", "otel-collector", "postgres", "redis"], "prod": []}
TO = "+61411111111"


def test_image_mapping_is_the_dockerfiles() -> None:
    """The harness runs `IMAGE` in place of the image: it must be what the Dockerfile's runtime stage says."""
    text = (REPO / "deploy" / "docker" / "Dockerfile").read_text()
    runtime = text[text.rindex("\nFROM "):].replace("\\\n", " ")
    entrypoint = re.search(r"^ENTRYPOINT (.+)$", runtime, re.M)
    assert entrypoint and json.loads(entrypoint.group(1)) == list(IMAGE_ENTRYPOINT)
    assert re.search(rf"^WORKDIR {IMAGE_WORKDIR}$", runtime, re.M)
    (env_line,) = [line for line in runtime.splitlines() if line.startswith("ENV ")]
    declared = dict(kv.split("=", 1) for kv in env_line.split()[1:] if not kv.startswith("PATH="))
    assert declared == IMAGE_ENV
    for part in ("services/", "gateway/", "svckit/", "gen/python/", "tools/"):
        assert f"COPY {part} {part}" in runtime, f"the image has {part}; the harness maps /app to the repo"


def _databases(pg_admin_dsn: str, run: str) -> dict[str, str]:
    parts = urlsplit(pg_admin_dsn)  # the tests' server (PG_DSN, or the private one a refusing server gets)
    return {name: urlunsplit(parts._replace(path=f"/sst_k8s_{run}_{name}"))
            for name in ("identity", "keys", "messaging", "audit")}


async def _dbs(dsns: list[str], create: bool) -> None:
    for dsn in dsns:
        await (ensure_database(dsn) if create else drop_database(dsn))


def _handover_secret(job: Pod) -> str:
    (arg,) = [a for a in job.container["args"] if a.startswith("--to-secret=")]
    return arg.split("=", 1)[1]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_starts_bootstraps_and_sends_one_sms(
    rendered: dict[str, list[Doc]], overlay: str, certs: CertBundle, tmp_path_factory: pytest.TempPathFactory,
    pg_admin_dsn: str,
) -> None:
    docs = rendered[overlay]
    run = uuid.uuid4().hex[:10]
    databases = _databases(pg_admin_dsn, run)
    prefix = f"sst:k8s:{run}:"
    asyncio.run(_dbs(list(databases.values()), create=True))
    api = FakeKubeApi(docs, certs.https_cert, certs.https_key)  # any server certificate its CA vouches for
    cluster = Cluster(docs, tmp_path_factory.mktemp(f"k8s-{overlay}"), certs.dir, databases, prefix, api)
    timings: dict[str, float] = {}
    try:
        with running(cluster):
            assert cluster.stand_ins() == STAND_INS[overlay]
            for doc in cluster.workloads():
                cluster.prepare(doc)
            for pod in cluster.pods.values():
                cluster.materialize(pod)
            deployments = [p for p in cluster.pods.values() if p.doc["kind"] == "Deployment"]
            assert {p.name for p in deployments} == {
                "gateway", "identity", "keys", "messaging", "messaging-worker", "messaging-notifier", "audit"}
            t0 = time.monotonic()
            for pod in deployments:  # all at once, in no order: nothing may depend on start order
                pod.start()
            for pod in deployments:
                cluster.wait_probe(pod, "startupProbe")
                cluster.wait_probe(pod, "readinessProbe")
                cluster.wait_probe(pod, "livenessProbe")
            timings["all ready"] = time.monotonic() - t0

            job = cluster.pods["ops-bootstrap"]
            assert job.doc["spec"]["suspend"] is True, "the bootstrap Job must wait for an operator"
            secret = _handover_secret(job)
            assert job.run_to_end(job.doc["spec"]["activeDeadlineSeconds"]) == 0, job.output()
            handed = api.secret_data(secret)
            assert handed is not None and set(handed) == {"SENDSAFE_URL", "SENDSAFE_USERNAME", "SENDSAFE_API_KEY"}
            key, username = handed["SENDSAFE_API_KEY"], handed["SENDSAFE_USERNAME"]
            assert len(key) >= 20 and f"Secret sendsafe/{secret}" in job.output()
            # A re-run (backoff, a second start) keeps the key it handed over.
            assert job.run_to_end(job.doc["spec"]["activeDeadlineSeconds"]) == 0, job.output()
            assert api.secret_data(secret) == handed and "already had" in job.output()
            assert {(m, s) for m, _, s in api.requests} == {("GET", 404), ("POST", 201), ("GET", 200)}

            gateway = cluster.pods["gateway"]
            http = Http(f"https://localhost:{gateway.ports[8443]}", str(certs.public_ca))
            sent = http.call("POST", "/v3/sms/send", auth=(username, key),
                             json_body={"messages": [{"to": TO, "body": f"k8s smoke {run}"}]})
            assert sent.status == 200, sent.body
            (msg,) = sent.json()["data"]["messages"]
            assert msg["status"] == "SUCCESS"
            until(lambda: http.call("GET", f"/v3/sms/history?q=message_id:{msg['message_id']}", auth=(username, key))
                  .json()["data"]["data"][0]["status"], lambda s: s == "Sent", "the worker to send the SMS")
            timings["sms sent"] = time.monotonic() - t0

            backup = cluster.pods["ops-backup"]
            assert backup.run_to_end(backup.doc["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"]) == 0, (
                backup.output())
            assert any(backup.mounts["/backups"].iterdir()), "the backup CronJob wrote nothing to its volume"

            with ThreadPoolExecutor(len(deployments)) as pool:  # a rollout's pods stop side by side
                codes = dict(zip([p.name for p in deployments], pool.map(Pod.stop, deployments), strict=True))
            for pod in deployments:
                grace = pod.spec["terminationGracePeriodSeconds"]
                assert codes[pod.name] == 0, f"{pod.name} did not stop cleanly in {grace}s:\n{pod.output()[-3000:]}"
            timings["stopped"] = time.monotonic() - t0
            for pod in cluster.pods.values():
                assert key not in pod.output(), f"{pod.name}'s log holds the API key"
                assert pod.unexpected_writes() == [], f"{pod.name} wrote outside its writable volumes"
    finally:
        asyncio.run(_dbs(list(databases.values()), create=False))
        client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        try:
            keys = list(client.scan_iter(match=prefix + "*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()
    print(f"\n{overlay}: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))

