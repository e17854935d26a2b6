"""The NetworkPolicies admit exactly the gRPC call graph the protos declare, and only the gateway is public.

The expected edges come from the generated descriptors at test time (`allowed_callers` of every RPC), so
a proto change that adds a caller fails here until the policies follow. An edge counts only when both
ends allow it: the callee's ingress and the caller's egress are compared with the protos separately.
See `python -m tools.k8s_manifests edges` for the table.
"""

from __future__ import annotations

import ipaddress

import pytest

from tools.k8s_manifests import (
    GATEWAY_HTTPS_PORT,
    GRPC_PORT,
    HEALTH_PORT,
    NAME_LABEL,
    NAMESPACE,
    OVERLAYS,
    Doc,
    Edge,
    Workload,
    admits_other_namespaces,
    grpc_callees,
    ipblocks,
    network_edges,
    of_kind,
    policy_types,
    proto_edges,
    selects,
    workloads,
)

SPIFFE_PREFIX = "spiffe://sendsafe.internal/"


def _fmt(edges: set[Edge]) -> str:
    return ", ".join(f"{a}->{b}" for a, b in sorted(edges)) or "(none)"


@pytest.fixture(scope="module")
def wanted() -> set[Edge]:
    edges = set(proto_edges())
    assert edges, "no allowed_callers found in gen/python: are the protos generated?"
    return edges


def test_every_proto_caller_and_callee_exists(rendered: dict[str, list[Doc]], wanted: set[Edge]) -> None:
    """A caller the protos name must be a workload and a callee a Service, or the edge test means nothing."""
    for overlay, docs in rendered.items():
        apps = {w.app for w in workloads(docs) if w.namespace == NAMESPACE}
        callees = {callee for callee, *_ in grpc_callees(docs)}
        assert {caller for caller, _ in wanted} <= apps, f"{overlay}: callers without a workload"
        assert {callee for _, callee in wanted} <= callees, (
            f"{overlay}: callees without a Service on {GRPC_PORT}"
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_policies_admit_exactly_the_proto_edges(
    rendered: dict[str, list[Doc]], overlay: str, wanted: set[Edge]
) -> None:
    ingress, egress = network_edges(rendered[overlay])
    assert ingress == wanted, (
        f"{overlay}: callee ingress rules differ from the protos' allowed_callers\n"
        f"  allowed but not in the protos: {_fmt(ingress - wanted)}\n"
        f"  in the protos but denied:      {_fmt(wanted - ingress)}"
    )
    assert egress == wanted, (
        f"{overlay}: caller egress rules differ from the protos' allowed_callers\n"
        f"  allowed but not in the protos: {_fmt(egress - wanted)}\n"
        f"  in the protos but denied:      {_fmt(wanted - egress)}"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_namespace_denies_by_default(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    for ns in {w.namespace for w in workloads(docs)}:
        deny_all = [
            p
            for p in of_kind(docs, "NetworkPolicy")
            if p["metadata"].get("namespace") == ns
            and p["spec"].get("podSelector") == {}
            and policy_types(p) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress")
            and not p["spec"].get("egress")
        ]
        assert deny_all, f"{overlay}: namespace {ns} has no default-deny policy for ingress and egress"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_is_reachable_from_outside(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    pods = [w for w in workloads(docs) if w.namespace == NAMESPACE]
    public_rules = 0
    for policy in of_kind(docs, "NetworkPolicy"):
        ns = policy["metadata"].get("namespace")
        if "Ingress" not in policy_types(policy):
            continue
        for rule in policy["spec"].get("ingress") or []:
            peers = rule.get("from")
            if ns != NAMESPACE:
                assert not ipblocks(peers) and peers, (
                    f"{overlay}: {ns}/{policy['metadata']['name']} admits traffic from outside the cluster"
                )
                continue
            if not admits_other_namespaces(peers, ns):
                continue
            public_rules += 1
            selected = {w.app for w in pods if selects(policy["spec"].get("podSelector"), w.labels)}
            assert selected == {"gateway"}, (
                f"{overlay}: policy {policy['metadata']['name']} admits outside traffic to {sorted(selected)}"
            )
            assert rule.get("ports") == [{"protocol": "TCP", "port": GATEWAY_HTTPS_PORT}], (
                f"{overlay}: outside traffic to the gateway must be TCP {GATEWAY_HTTPS_PORT} only,"
                f" got {rule.get('ports')}"
            )
    assert public_rules, f"{overlay}: nothing admits outside traffic to the gateway"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_service_is_exposed(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    assert not list(of_kind(docs, "Ingress")), "the gateway terminates TLS itself: no HTTP Ingress"
    exposed = [s for s in of_kind(docs, "Service") if s["spec"].get("type") in ("LoadBalancer", "NodePort")]
    assert [s["metadata"]["name"] for s in exposed] == ["gateway"], f"{overlay}: exposed Services"
    (gateway,) = exposed
    assert gateway["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}
    ]
    for w in workloads(docs):
        for container in w.pod_spec.get("containers") or []:
            for port in container.get("ports") or []:
                assert "hostPort" not in port, f"{overlay}: {w} uses a hostPort"
        assert not w.pod_spec.get("hostNetwork"), f"{overlay}: {w} uses the host network"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_rules_are_narrow(rendered: dict[str, list[Doc]], overlay: str) -> None:
    """Every ingress rule names its peers and ports, and none opens the plaintext health port."""
    for policy in of_kind(rendered[overlay], "NetworkPolicy"):
        name = f"{policy['metadata'].get('namespace')}/{policy['metadata']['name']}"
        for rule in policy["spec"].get("ingress") or []:
            assert rule.get("from"), f"{overlay}: {name} has an ingress rule from anywhere"
            assert rule.get("ports"), f"{overlay}: {name} has an ingress rule on every port"
            assert all(p.get("port") not in (HEALTH_PORT, "health") for p in rule["ports"]), (
                f"{overlay}: {name} opens the health port {HEALTH_PORT}; it is for the kubelet only"
            )
        for rule in policy["spec"].get("egress") or []:
            assert rule.get("to") and rule.get("ports"), f"{overlay}: {name} has an egress rule to anywhere"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_public_egress_never_reaches_private_or_metadata_ranges(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    """An egress ipBlock of /8 or wider (the carrier rule) carves out the private and link-local ranges."""
    private: list[ipaddress.IPv4Network] = [
        ipaddress.IPv4Network(n)
        for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16")
    ]
    for policy in of_kind(rendered[overlay], "NetworkPolicy"):
        for rule in policy["spec"].get("egress") or []:
            for peer in rule.get("to") or []:
                if "ipBlock" not in peer:
                    continue
                if ":" in peer["ipBlock"]["cidr"]:
                    continue  # IPv6: no private ranges of this kind in these clusters
                cidr = ipaddress.IPv4Network(peer["ipBlock"]["cidr"])
                if cidr.prefixlen > 8:
                    continue
                excepted = [ipaddress.IPv4Network(e) for e in peer["ipBlock"].get("except") or []]
                for net in private:
                    if cidr.overlaps(net):
                        assert any(net.subnet_of(e) for e in excepted), (
                            f"{overlay}: {policy['metadata']['name']} egress {cidr} reaches {net}"
                        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_identity_is_the_certificate_identity(rendered: dict[str, list[Doc]], overlay: str) -> None:
    """A pod's app.kubernetes.io/name (what the policies select) is the SPIFFE name of its certificate."""
    docs = rendered[overlay]
    certificates = {c["spec"]["secretName"]: c for c in of_kind(docs, "Certificate")}
    checked = 0
    for w in workloads(docs):
        if w.namespace != NAMESPACE or NAME_LABEL not in w.labels:
            continue
        for volume in w.pod_spec.get("volumes") or []:
            for source in (volume.get("projected") or {}).get("sources") or []:
                secret = (source.get("secret") or {}).get("name", "")
                if not secret.endswith("-tls") or secret == "gateway-https-tls":
                    continue
                checked += 1
                certificate = certificates.get(secret)
                assert certificate, f"{overlay}: {w} mounts {secret}, which no Certificate issues"
                assert certificate["spec"]["uris"] == [SPIFFE_PREFIX + w.app], (
                    f"{overlay}: {w} is selected as {w.app!r}; its certificate: {certificate['spec']['uris']}"
                )
    assert checked, "no workload mounts a service certificate"


def _egress_open(policies: list[Doc], w: Workload, port: int) -> bool:
    """Whether some egress rule of a policy that selects pod `w` allows TCP `port` (to any peer)."""
    for policy in policies:
        if policy["metadata"].get("namespace") != w.namespace or "Egress" not in policy_types(policy):
            continue
        if not selects(policy["spec"].get("podSelector"), w.labels):
            continue
        for rule in policy["spec"].get("egress") or []:
            for entry in rule.get("ports") or []:
                if entry.get("protocol", "TCP") == "TCP" and entry.get("port") == port:
                    return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize(("port", "settings"), [(5432, "DATABASE_URL"), (6379, "REDIS_URL")])
def test_data_store_egress_only_for_workloads_that_hold_its_url(
    rendered: dict[str, list[Doc]], overlay: str, port: int, settings: str
) -> None:
    """PostgreSQL (5432) and Redis (6379) are reachable from exactly the pods configured with their URL
    (`DATABASE_URL_FILE`, the backup's `<SERVICE>_DATABASE_URL_FILE`; `REDIS_URL_FILE`)."""
    docs = rendered[overlay]
    policies = list(of_kind(docs, "NetworkPolicy"))
    holders, reaching = set(), set()
    for w in workloads(docs):
        if w.namespace != NAMESPACE or w.labels.get("app.kubernetes.io/part-of") != "sendsafe":
            continue
        names = {v["name"] for c in w.containers() for v in c.get("env") or []}
        if any(n.removesuffix("_FILE").endswith(settings) for n in names):
            holders.add(w.app)
        if _egress_open(policies, w, port):
            reaching.add(w.app)
    assert len(holders) >= 4, f"{overlay}: only {sorted(holders)} hold a {settings}"
    assert reaching == holders, f"{overlay}: TCP {port} egress for {sorted(reaching)}, URLs in {sorted(holders)}"
