"""Run a rendered overlay without kubelet: every SendSafe workload as a local process, as its pod would run.

What a cluster would provide, and what stands in for it here (each mapping is one place below):
- the image: `IMAGE` maps deploy/docker/Dockerfile's ENTRYPOINT (`python -m`), WORKDIR (/app) and ENV onto
  this checkout (.venv's python, PYTHONPATH=<repo>:<repo>/gen/python); tests check it against the Dockerfile.
- a pod's network namespace: every containerPort gets a free 127.0.0.1 port; a listen address `0.0.0.0:P`
  in the env becomes `127.0.0.1:<P's port>`. Service DNS: an env value or a Secret's URL naming a Service
  (`dns:///keys:50051`, `keys:50051`, `redis://redis:6379/0`, `keys.sendsafe.svc:50051`) is rewritten to
  the port of the workload that Service selects, through its targetPort. Workloads that are not the
  SendSafe image stand in as `STAND_INS` say (PostgreSQL and Redis: the machine's).
- volumes: each is a temp directory filled from the rendered Secret/ConfigMap (items, defaultMode), or from
  `Cluster.operator_objects()` for what cert-manager, trust-manager, the operator or kube-controller-manager
  would create (certificates from tools.certs: tls.crt, tls.key, ca.crt); emptyDir and PVCs are empty dirs.
  A path under a mountPath, in the env or the args, is rewritten to that directory.
- the read-only root filesystem: the process's cwd is an empty directory, HOME does not exist, TMPDIR is
  the pod's /tmp mount; `Pod.unexpected_writes()` reports anything written to the cwd or to a read-only
  mount. (The tests run as root, so the kernel does not enforce it: this is checked after the fact.)
- data: a fresh PostgreSQL database per service and run (never the demo ones), and an own Redis key prefix
  (REDIS_PREFIX) on the machine's Redis.
- the Kubernetes API (for the bootstrap Job's key handover only): `FakeKubeApi`, HTTPS on loopback, which
  authorizes the pod's service-account token by the rendered Role/RoleBinding and keeps Secrets in memory.
- probes: polled every 0.1 s within their own budget (initialDelaySeconds + periodSeconds x failureThreshold).
Not emulated: kubelet itself (restarts, resource limits, the security context's uid), CNI and
NetworkPolicies (tests/deploy/test_k8s_network.py checks those statically), cert-manager's renewals.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.deploy.fake_kube_api import FakeKubeApi

Doc = dict[str, Any]
REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "sendsafe"
WORKLOAD_KINDS = ("Deployment", "Job", "CronJob")

# deploy/docker/Dockerfile's runtime stage, mapped onto this checkout (test_k8s_smoke checks the Dockerfile).
IMAGE_NAME = re.compile(r"(^|/)sendsafe([:@]|$)")
IMAGE_ENTRYPOINT = ("python", "-m")
IMAGE_WORKDIR = "/app"  # the code, i.e. this checkout
IMAGE_ENV = {"PYTHONPATH": "/app:/app/gen/python", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable

# Workloads of an overlay that are not the SendSafe image: what stands in for them (None: not run).
STAND_INS: dict[str, tuple[str, int] | None] = {
    "postgres": ("127.0.0.1", 5432),
    "redis": ("127.0.0.1", 6379),
    "otel-collector": None,  # no trace export: OTEL_EXPORTER_OTLP_ENDPOINT is dropped
    "jaeger": None,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pod_spec(doc: Doc) -> Doc:
    if doc["kind"] == "CronJob":
        return dict(doc["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return dict(doc["spec"]["template"]["spec"])


def pod_labels(doc: Doc) -> dict[str, str]:
    tpl = doc["spec"]["jobTemplate"]["spec"]["template"] if doc["kind"] == "CronJob" else doc["spec"]["template"]
    return dict(tpl["metadata"].get("labels") or {})


def is_sendsafe(doc: Doc) -> bool:
    return all(IMAGE_NAME.search(c["image"]) for c in pod_spec(doc)["containers"])


# ------------------------------------------------------------------------------------------------- pods


@dataclass
class Pod:
    """One workload's pod: its dirs, ports, env and (once started) its process."""

    name: str
    doc: Doc
    root: Path
    ports: dict[int, int] = field(default_factory=dict)  # containerPort -> local port
    mounts: dict[str, Path] = field(default_factory=dict)  # mountPath -> local dir
    read_only: dict[str, str] = field(default_factory=dict)  # mountPath -> digest of its files
    env: dict[str, str] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def spec(self) -> Doc:
        return pod_spec(self.doc)

    @property
    def container(self) -> Doc:
        (c,) = self.spec["containers"]
        return dict(c)

    @property
    def cwd(self) -> Path:
        return self.root / "rootfs"

    @property
    def log(self) -> Path:
        return self.root / "log.txt"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def local_path(self, value: str) -> str:
        for mount in sorted(self.mounts, key=len, reverse=True):
            if value == mount or value.startswith(mount.rstrip("/") + "/"):
                return str(self.mounts[mount]) + value[len(mount):]
        return value

    def start(self) -> None:
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def run_to_end(self, timeout: float) -> int:
        self.start()
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            tail = self.output()[-3000:]
            raise AssertionError(f"{self.name} did not finish within {timeout:.0f}s:\n{tail}") from None

    def stop(self) -> int | None:
        """As kubelet stops a pod: the preStop hook, then SIGTERM, all within terminationGracePeriodSeconds.
        The exit code, or None when the process outlived the grace period (then it is killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        deadline = time.monotonic() + float(self.spec.get("terminationGracePeriodSeconds", 30))
        hook = (self.container.get("lifecycle") or {}).get("preStop")
        if hook is not None:
            (handler,) = hook
            assert handler == "exec", f"{self.name}: preStop {handler} is not emulated"
            argv = [self.local_path(a) for a in hook["exec"]["command"]]
            subprocess.run(argv, cwd=self.cwd, env=self.env, timeout=max(0.1, deadline - time.monotonic()),
                           check=True, capture_output=True)
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def unexpected_writes(self) -> list[str]:
        found = [str(p.relative_to(self.cwd)) for p in self.cwd.rglob("*")]
        found += [f"{m} (read-only mount)" for m, digest in self.read_only.items()
                  if digest_dir(self.mounts[m]) != digest]
        return found


def digest_dir(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- cluster


@dataclass
class Cluster:
    docs: list[Doc]
    workdir: Path
    certs: Path  # tools.certs output
    databases: dict[str, str]  # database name in the manifests -> the fresh DSN standing in for it
    redis_prefix: str
    api: FakeKubeApi | None = None
    pods: dict[str, Pod] = field(default_factory=dict)

    # -- what the rendered overlay holds, and what the cluster's operators would add -------------------------
    def objects(self, kind: str) -> dict[str, dict[str, str]]:
        """Secrets or ConfigMaps by name -> their data (rendered first, then the operators' ones)."""
        out = dict(self.operator_objects(kind))
        for d in self.docs:
            if d["kind"] == kind and d["metadata"].get("namespace", NAMESPACE) == NAMESPACE:
                data = dict(d.get("data") or {})
                if kind == "Secret":
                    data = {k: base64.b64decode(v).decode() for k, v in data.items()}
                out[d["metadata"]["name"]] = {**data, **(d.get("stringData") or {})}
        return out

    def operator_objects(self, kind: str) -> dict[str, dict[str, str]]:
        c = self.certs
        ca = (c / "internal-ca.crt").read_text()
        if kind == "ConfigMap":
            return {
                "sendsafe-trust-bundle": {"ca.crt": ca},  # trust-manager, from the internal CA
                "kube-root-ca.crt": {"ca.crt": (c / "public-ca.crt").read_text()},  # the (fake) API's CA
            }
        out: dict[str, dict[str, str]] = {}
        for d in self.docs:  # cert-manager: one kubernetes.io/tls Secret per Certificate
            if d["kind"] == "Certificate":
                leaf = d["spec"]["uris"][0].rsplit("/", 1)[1]
                out[d["spec"]["secretName"]] = {
                    "tls.crt": (c / f"{leaf}.crt").read_text(), "tls.key": (c / f"{leaf}.key").read_text(),
                    "ca.crt": ca,
                }
        out["gateway-https-tls"] = {  # the operator: the public certificate
            "tls.crt": (c / "gateway-https.crt").read_text(), "tls.key": (c / "gateway-https.key").read_text(),
        }
        out["keys-root-key"] = {"root-key": secrets.token_hex(32)}
        out["audit-keys"] = {"signing-key": secrets.token_hex(32), "webhook-key": secrets.token_hex(32)}
        out["messaging-keys"] = {"sender-index-key": secrets.token_hex(32)}
        out["backup-key"] = {"key": secrets.token_hex(32)}
        for db, dsn in self.databases.items():  # prod: the managed database's DSNs (dev renders its own)
            out[f"{db}-db"] = {"database-url": dsn}
        out["redis-url"] = {"url": "redis://127.0.0.1:6379/0"}
        return out

    def workloads(self) -> list[Doc]:
        return [d for d in self.docs if d["kind"] in WORKLOAD_KINDS and is_sendsafe(d)]

    def stand_ins(self) -> list[str]:
        return sorted(d["metadata"]["name"] for d in self.docs if d["kind"] in WORKLOAD_KINDS and not is_sendsafe(d))

    # -- addresses -------------------------------------------------------------------------------------
    def service_target(self, host: str, port: int) -> tuple[str, int] | None:
        """Where `host:port` (a Service's DNS name) leads: (127.0.0.1, local port), or None if no Service."""
        name, _, rest = host.partition(".")
        if rest and not (rest == NAMESPACE or rest.startswith(f"{NAMESPACE}.svc")):
            return None
        for svc in self.docs:
            if svc["kind"] != "Service" or svc["metadata"]["name"] != name:
                continue
            (sp,) = [p for p in svc["spec"]["ports"] if p["port"] == port]
            selector = svc["spec"]["selector"]
            for d in self.docs:
                if d["kind"] not in WORKLOAD_KINDS or not selector.items() <= pod_labels(d).items():
                    continue
                if not is_sendsafe(d):
                    return STAND_INS[d["metadata"]["name"]]
                pod = self.pods[d["metadata"]["name"]]
                target = sp.get("targetPort", port)
                if isinstance(target, str):
                    (target,) = [p["containerPort"] for p in pod.container["ports"] if p["name"] == target]
                return "127.0.0.1", pod.ports[target]
        return None

    def rewrite(self, pod: Pod, value: str) -> str:
        """A value as this pod's process sees it here: listen addresses, Service names, URLs, mounted paths."""
        m = re.fullmatch(r"(0\.0\.0\.0|\[::\]|):(\d+)", value)  # all interfaces, incl. ":P"
        if m:
            port = int(m.group(2))
            return f"127.0.0.1:{pod.ports.setdefault(port, free_port())}"
        m = re.fullmatch(r"(dns:///)?([a-z0-9.-]+):(\d+)", value)
        if m and (target := self.service_target(m.group(2), int(m.group(3)))):
            return f"{target[0]}:{target[1]}"
        m = re.fullmatch(r"(postgresql|redis)://([^@/]*@)?([a-z0-9.-]+):(\d+)/([^?]*)(\?.*)?", value)
        if m and (target := self.service_target(m.group(3), int(m.group(4)))):
            if m.group(1) == "postgresql":
                return self.databases[m.group(5)] + (m.group(6) or "")
            return f"redis://{target[0]}:{target[1]}/{m.group(5)}"
        return pod.local_path(value)

    # -- pods ------------------------------------------------------------------------------------------
    def prepare(self, doc: Doc) -> Pod:
        name = doc["metadata"]["name"]
        pod = Pod(name, doc, self.workdir / name)
        pod.cwd.mkdir(parents=True)
        for p in pod.container.get("ports") or []:
            pod.ports[p["containerPort"]] = free_port()
        self.pods[name] = pod
        return pod

    def materialize(self, pod: Pod) -> None:
        """Volumes as directories, then the env and argv (after every pod has its ports)."""
        secrets_, maps = self.objects("Secret"), self.objects("ConfigMap")
        volumes = {v["name"]: v for v in pod.spec.get("volumes") or []}
        for mount in pod.container.get("volumeMounts") or []:
            vol = volumes[mount["name"]]
            path = pod.root / "volumes" / mount["name"]
            path.mkdir(parents=True, exist_ok=True)
            sources = vol["projected"]["sources"] if "projected" in vol else [vol]
            mode = (vol.get("projected") or vol.get("secret") or vol.get("configMap") or {}).get("defaultMode", 0o644)
            for src in sources:
                self._fill(pod, path, src, secrets_, maps, mode)
            pod.mounts[mount["mountPath"]] = path
            if mount.get("readOnly"):
                pod.read_only[mount["mountPath"]] = digest_dir(path)
        env = {k: v.replace(IMAGE_WORKDIR, str(REPO)) for k, v in IMAGE_ENV.items()}
        env.update(PATH=os.environ.get("PATH", "/usr/bin:/bin"), HOME="/nonexistent", HOSTNAME=f"{pod.name}-0")
        if self.api is not None:  # kubelet sets these in every container
            env.update(KUBERNETES_SERVICE_HOST="127.0.0.1", KUBERNETES_SERVICE_PORT=str(self.api.port))
        image = dict(env)  # the image's and kubelet's own values: already this machine's paths, never remapped
        c = pod.container
        for ref in c.get("envFrom") or []:
            if "configMapRef" in ref:
                env.update(maps[ref["configMapRef"]["name"]])
            else:
                env.update(secrets_[ref["secretRef"]["name"]])
        for var in c.get("env") or []:
            if "value" in var:
                env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), var["value"])
                continue
            src = var["valueFrom"]
            if "fieldRef" in src:
                env[var["name"]] = {"metadata.name": f"{pod.name}-0", "metadata.namespace": NAMESPACE}[
                    src["fieldRef"]["fieldPath"]]
            else:
                ref = src.get("secretKeyRef") or src["configMapKeyRef"]
                env[var["name"]] = (secrets_ if "secretKeyRef" in src else maps)[ref["name"]][ref["key"]]
        env = {k: v if image.get(k) == v else self.rewrite(pod, v) for k, v in env.items()}
        if env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None) is not None:
            env["OTEL_TRACES_EXPORTER"] = "none"
        if "/tmp" in pod.mounts:
            env["TMPDIR"] = str(pod.mounts["/tmp"])
        env["REDIS_PREFIX"] = self.redis_prefix
        pod.env = env
        args = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a) for a in c.get("args") or []]
        command = list(c.get("command") or IMAGE_ENTRYPOINT)
        command[0] = PYTHON if command[0] == "python" else command[0]
        pod.argv = command + [self.rewrite_arg(pod, a) for a in args]

    def rewrite_arg(self, pod: Pod, arg: str) -> str:
        flag, eq, value = arg.partition("=")
        return f"{flag}={self.rewrite(pod, value)}" if flag.startswith("--") and eq else self.rewrite(pod, arg)

    def _fill(self, pod: Pod, path: Path, src: Doc, secrets_: dict[str, dict[str, str]],
              maps: dict[str, dict[str, str]], mode: int) -> None:
        if "emptyDir" in src or "persistentVolumeClaim" in src:
            return
        if "serviceAccountToken" in src:
            assert self.api is not None, "a pod mounts a service-account token but no API is running"
            token = secrets.token_urlsafe(32)
            self.api.tokens[token] = pod.spec["serviceAccountName"]
            files = {src["serviceAccountToken"]["path"]: token}
        elif "downwardAPI" in src:
            values = {"metadata.namespace": NAMESPACE, "metadata.name": f"{pod.name}-0"}
            files = {i["path"]: values[i["fieldRef"]["fieldPath"]] for i in src["downwardAPI"]["items"]}
        else:
            kind = "secret" if "secret" in src else "configMap"
            ref = src[kind]
            name = ref.get("secretName") or ref["name"]
            data = (secrets_ if kind == "secret" else maps).get(name)
            assert data is not None, f"{pod.name}: {kind} {name!r} is neither rendered nor made by an operator"
            items = ref.get("items") or [{"key": k, "path": k} for k in data]
            files = {}
            for item in items:
                value = data[item["key"]]
                files[item["path"]] = self.rewrite(pod, value) if kind == "secret" else value
        for rel, value in files.items():
            target = path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(value)
            target.chmod(mode)

    # -- probes ------------------------------------------------------------------------------------------
    def probe_once(self, pod: Pod, probe: Doc) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1))
        if "grpc" in probe:
            port = pod.ports[probe["grpc"]["port"]]
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                try:
                    resp = health_pb2_grpc.HealthStub(ch).Check(
                        health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", "")), timeout=timeout)
                except grpc.RpcError:
                    return False
                return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = get["port"] if isinstance(get["port"], int) else next(
                p["containerPort"] for p in pod.container["ports"] if p["name"] == get["port"])
            scheme = get.get("scheme", "HTTP").lower()
            ctx = ssl._create_unverified_context()  # noqa: S323 - kubelet does not verify probe certificates
            url = f"{scheme}://127.0.0.1:{pod.ports[port]}{get.get('path', '/')}"
            try:
                with urllib.request.urlopen(url, timeout=timeout, context=ctx) as r:  # noqa: S310
                    return 200 <= r.status < 400
            except (urllib.error.URLError, OSError):
                return False
        if "exec" in probe:
            argv = [self.rewrite(pod, a) for a in probe["exec"]["command"]]
            argv[0] = PYTHON if argv[0] == "python" else argv[0]
            return subprocess.run(argv, cwd=pod.cwd, env=pod.env, capture_output=True, timeout=timeout,
                                  check=False).returncode == 0
        if "tcpSocket" in probe:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", pod.ports[probe["tcpSocket"]["port"]]), timeout=timeout):
                return True
            return False
        raise AssertionError(f"{pod.name}: unknown probe handler {sorted(probe)}")

    def wait_probe(self, pod: Pod, kind: str) -> float:
        """Poll the pod's own probe until it passes; seconds it took. Fails past the probe's budget."""
        probe = pod.container.get(kind)
        assert probe, f"{pod.name} declares no {kind}"
        budget = probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
        return poll(lambda: self.probe_once(pod, probe), f"{pod.name}'s {kind}", budget, pod)


def poll(check: Callable[[], bool], what: str, deadline_s: float, pod: Pod | None = None) -> float:
    """Poll `check` until true; seconds it took. Fails at the deadline or when the pod's process ended."""
    start = time.monotonic()
    while not check():
        if pod is not None and pod.proc is not None and pod.proc.poll() is not None:
            tail = pod.output()[-4000:]
            raise AssertionError(f"{pod.name} exited ({pod.proc.returncode}) waiting for {what}:\n{tail}")
        if time.monotonic() - start > deadline_s:
            tail = pod.output()[-4000:] if pod is not None else ""
            raise AssertionError(f"timed out after {deadline_s:.0f}s waiting for {what}\n{tail}")
        time.sleep(0.1)
    return time.monotonic() - start


@contextlib.contextmanager
def running(cluster: Cluster) -> Iterator[Cluster]:
    """Start every Deployment at once (as a rollout would), stop them all with SIGTERM at the end."""
    try:
        yield cluster
    finally:
        for pod in cluster.pods.values():
            if pod.proc is not None and pod.proc.poll() is None:
                pod.proc.kill()
                pod.proc.wait()
        if cluster.api is not None:
            cluster.api.close()
        shutil.rmtree(cluster.workdir, ignore_errors=True)
