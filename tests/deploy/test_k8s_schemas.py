"""Every manifest validates offline against the Kubernetes schemas: each rendered overlay and each raw file.

kubernetes-validate runs in strict mode (an unknown field is an error) against Kubernetes 1.30, the
oldest version the manifests support. It knows built-in kinds only, so the cert-manager custom resources
(Certificate, Issuer) and the Prometheus Operator's (PrometheusRule, PodMonitor) are checked against the
small hand-written JSON schemas below instead: they accept the fields this repository uses, with their
value rules, and reject anything else, so
a typo fails here rather than in the cluster. A new custom kind fails until a schema is added here.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tools.k8s_manifests import K8S_DIR, OVERLAYS, Doc, render_dir

K8S_VERSION = "1.30"

_STR = {"type": "string", "minLength": 1}
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_STR_LIST = {"type": "array", "items": _STR, "minItems": 1}
_DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253},
        "namespace": _STR,
        "labels": _STR_MAP,
        "annotations": _STR_MAP,
    },
}
# cert-manager.io/v1 KeyUsage values.
_USAGES = [
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
]
_SAN_KEYS = ("commonName", "dnsNames", "uris", "ipAddresses", "emailAddresses")


def _resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
    }


CERTIFICATE = _resource(
    "cert-manager.io/v1",
    "Certificate",
    {
        "type": "object",
        "required": ["secretName", "issuerRef"],
        "additionalProperties": False,
        "anyOf": [{"required": [key]} for key in _SAN_KEYS],
        "properties": {
            "secretName": _STR,
            "issuerRef": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {
                    "name": _STR,
                    "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                    "group": {"const": "cert-manager.io"},
                },
            },
            "duration": _DURATION,
            "renewBefore": _DURATION,
            "commonName": _STR,
            "dnsNames": _STR_LIST,
            "uris": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "string", "pattern": r"^[a-z][a-z0-9+.-]*://."},
            },
            "ipAddresses": _STR_LIST,
            "emailAddresses": _STR_LIST,
            "isCA": {"type": "boolean"},
            "usages": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"enum": _USAGES}},
            "privateKey": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                    "size": {"type": "integer"},
                    "encoding": {"enum": ["PKCS1", "PKCS8"]},
                    "rotationPolicy": {"enum": ["Never", "Always"]},
                },
                "if": {"required": ["algorithm"], "properties": {"algorithm": {"const": "ECDSA"}}},
                "then": {"properties": {"size": {"enum": [256, 384, 521]}}},
            },
            "secretTemplate": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"labels": _STR_MAP, "annotations": _STR_MAP},
            },
            "revisionHistoryLimit": {"type": "integer", "minimum": 1},
        },
    },
)
_ISSUER_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "oneOf": [{"required": ["ca"]}, {"required": ["selfSigned"]}],
    "properties": {
        "ca": {
            "type": "object",
            "required": ["secretName"],
            "additionalProperties": False,
            "properties": {"secretName": _STR, "crlDistributionPoints": _STR_LIST, "ocspServers": _STR_LIST},
        },
        "selfSigned": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"crlDistributionPoints": _STR_LIST},
        },
    },
}
# Prometheus Operator (monitoring.coreos.com/v1), deploy/k8s/components/prometheus-operator: the fields used.
_DURATION = {"type": "string", "pattern": r"^(0|([0-9]+(ms|s|m|h|d|w|y))+)$"}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_RULE = {
    "type": "object",
    "required": ["alert", "expr", "labels", "annotations"],
    "additionalProperties": False,
    "properties": {
        "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        "expr": _STR,
        "for": _DURATION,
        "labels": _LABELS,
        "annotations": {"type": "object", "required": ["summary", "runbook_url"],
                        "additionalProperties": {"type": "string"}},
    },
}
PROMETHEUS_RULE = _resource("monitoring.coreos.com/v1", "PrometheusRule", {
    "type": "object",
    "required": ["groups"],
    "additionalProperties": False,
    "properties": {"groups": {"type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["name", "rules"], "additionalProperties": False,
        "properties": {"name": _STR, "interval": _DURATION, "rules": {"type": "array", "minItems": 1, "items": _RULE}},
    }}},
})
POD_MONITOR = _resource("monitoring.coreos.com/v1", "PodMonitor", {
    "type": "object",
    "required": ["selector", "podMetricsEndpoints"],
    "additionalProperties": False,
    "properties": {
        "jobLabel": _STR,
        "selector": {"type": "object", "additionalProperties": False,
                     "properties": {"matchLabels": _LABELS}},
        "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["port"], "additionalProperties": False,
            "properties": {"port": _STR, "path": {"type": "string", "pattern": "^/"},
                           "scheme": {"enum": ["http", "https"]}, "interval": _DURATION},
        }},
    },
})
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
    ("monitoring.coreos.com/v1", "PodMonitor"): POD_MONITOR,
    ("cert-manager.io/v1", "Certificate"): CERTIFICATE,
    ("cert-manager.io/v1", "Issuer"): _resource("cert-manager.io/v1", "Issuer", _ISSUER_SPEC),
    ("cert-manager.io/v1", "ClusterIssuer"): _resource("cert-manager.io/v1", "ClusterIssuer", _ISSUER_SPEC),
}
for _schema in CRD_SCHEMAS.values():
    jsonschema.Draft202012Validator.check_schema(_schema)


def problems_of(doc: Doc) -> list[str]:
    """Schema problems of one document, empty when it is valid."""
    where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRD_SCHEMAS:
        validator = jsonschema.Draft202012Validator(CRD_SCHEMAS[key])
        return [
            f"{where}: {'/'.join(map(str, err.absolute_path)) or '<root>'}: {err.message}"
            for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
        ]
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [
            f"{where}: no schema for {key[0]} {key[1]} in Kubernetes {K8S_VERSION} (a custom resource? "
            f"add a schema to {Path(__file__).name})"
        ]
    except kubernetes_validate.ValidationError as err:
        return [f"{where}: {'/'.join(map(str, err.absolute_path)) or '<root>'}: {err.message}"]
    return []


def _load(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kustomization_inputs() -> dict[str, set[Path]]:
    """Files the kustomizations under deploy/k8s use, by role: resources, patches, generator inputs."""
    roles: dict[str, set[Path]] = {
        "kustomization": set(),
        "resource": set(),
        "patch": set(),
        "generated": set(),
    }
    for kfile in sorted(K8S_DIR.rglob("kustomization.yaml")):
        roles["kustomization"].add(kfile)
        spec = yaml.safe_load(kfile.read_text())
        for entry in spec.get("resources") or []:
            target = (kfile.parent / entry).resolve()
            if target.is_file():
                roles["resource"].add(target)
        for patch in spec.get("patches") or []:
            if "path" in patch:
                roles["patch"].add((kfile.parent / patch["path"]).resolve())
        for generator in (spec.get("configMapGenerator") or []) + (spec.get("secretGenerator") or []):
            for entry in generator.get("files") or []:
                roles["generated"].add((kfile.parent / entry.split("=", 1)[-1]).resolve())
    return roles


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_overlay_validates(rendered: dict[str, list[Doc]], overlay: str) -> None:
    problems = [problem for doc in rendered[overlay] for problem in problems_of(doc)]
    assert not problems, f"overlay {overlay}:\n" + "\n".join(problems)


def test_raw_manifest_files_validate() -> None:
    resources = sorted(_kustomization_inputs()["resource"])
    assert resources, "no manifest files found under deploy/k8s"
    problems = [
        f"{path.relative_to(K8S_DIR)}: {problem}"
        for path in resources
        for doc in _load(path)
        for problem in problems_of(doc)
    ]
    assert not problems, "\n".join(problems)


def test_every_file_under_deploy_k8s_is_used() -> None:
    """An orphan file (listed by no kustomization) is neither deployed nor checked: refuse it."""
    used = set().union(*_kustomization_inputs().values()) | {(K8S_DIR / "checkov-skips.yaml").resolve()}
    orphans = sorted(
        str(p.relative_to(K8S_DIR)) for p in K8S_DIR.rglob("*") if p.is_file() and p.resolve() not in used
    )
    assert not orphans, f"files under deploy/k8s that no kustomization uses: {orphans}"


def test_the_schema_checks_reject_unknown_fields() -> None:
    """The validators above can fail: strict mode for built-in kinds, additionalProperties for CRDs."""
    deployment = _load(K8S_DIR / "base" / "identity" / "deployment.yaml")[0]
    assert problems_of(deployment) == []
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    assert problems_of(broken)

    certificate = _load(K8S_DIR / "base" / "identity" / "certificate.yaml")[0]
    assert problems_of(certificate) == []
    for field, value in (("uri", ["spiffe://sendsafe.internal/identity"]), ("usages", ["server-auth"])):
        broken = copy.deepcopy(certificate)
        broken["spec"][field] = value
        assert problems_of(broken), f"a Certificate with spec.{field}={value} passed"


def test_without_cert_manager_component_drops_only_cert_manager(
    rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    """components/without-cert-manager (docs/runbook.md) leaves prod as it is, minus cert-manager's kinds."""
    rel = os.path.relpath(K8S_DIR, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {rel}/overlays/prod\ncomponents:\n  - {rel}/components/without-cert-manager\n"
    )
    without = render_dir(tmp_path)
    expected = [d for d in rendered["prod"] if not d["apiVersion"].startswith("cert-manager.io/")]
    assert len(expected) < len(rendered["prod"])
    assert without == expected
