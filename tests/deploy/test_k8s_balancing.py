"""Calls between services spread over every replica: the gRPC Services are headless and callers name them
as `dns:///` targets, so each caller's channel (round_robin, svckit.rpc) connects to every ready pod. A
ClusterIP Service would pin a caller's long-lived HTTP/2 connection, and so all its calls, to one pod."""

from __future__ import annotations

import pytest

from tools.k8s_manifests import GRPC_PORT, OVERLAYS, Doc, of_kind, workloads


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grpc_services_are_headless(rendered: dict[str, list[Doc]], overlay: str) -> None:
    grpc = [s for s in of_kind(rendered[overlay], "Service")
            if any(p.get("port") == GRPC_PORT for p in s["spec"].get("ports") or [])]
    assert grpc, f"{overlay}: no gRPC Service"
    for svc in grpc:
        assert svc["spec"].get("clusterIP") == "None", f"{overlay}: Service {svc['metadata']['name']} is not headless"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_callers_resolve_every_replica(rendered: dict[str, list[Doc]], overlay: str) -> None:
    addrs = {}
    for w in workloads(rendered[overlay]):
        for c in w.containers():
            for env in c.get("env") or []:
                if env["name"].endswith("_ADDR") and "value" in env:
                    addrs[f"{w}/{env['name']}"] = env["value"]
    docs = rendered[overlay]
    for cm in of_kind(docs, "ConfigMap"):
        for key, value in (cm.get("data") or {}).items():
            if key.endswith("_ADDR"):
                addrs[f"ConfigMap {cm['metadata']['name']}/{key}"] = value
    assert addrs, f"{overlay}: no *_ADDR settings found"
    wrong = {k: v for k, v in addrs.items() if not v.startswith("dns:///")}
    assert not wrong, f"{overlay}: peers named without dns:/// (one pod per connection): {wrong}"
