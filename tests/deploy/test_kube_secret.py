"""tools.kube_secret against the stand-in API, authorized by the rendered Role: the bootstrap Job's token may
create its handover Secret and read or replace that one only; another workload's token may do nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.fake_kube_api import FakeKubeApi
from tests.support import CertBundle
from tools.k8s_manifests import OVERLAYS, Doc
from tools.kube_secret import InCluster, KubeApiError

HANDOVER = "sendsafe-first-api-key"


def _client(api: FakeKubeApi, certs: CertBundle, tmp: Path, account: str) -> InCluster:
    token = f"token-of-{account}"
    api.tokens[token] = account
    (tmp / "token").write_text(token)
    (tmp / "namespace").write_text("sendsafe")
    (tmp / "ca.crt").write_bytes(certs.public_ca.read_bytes())
    return InCluster.load(tmp, {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api.port)})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_bootstrap_role_allows_its_handover_secret_only(
    rendered: dict[str, list[Doc]], overlay: str, certs: CertBundle, tmp_path: Path,
) -> None:
    api = FakeKubeApi(rendered[overlay], certs.https_cert, certs.https_key)
    try:
        (tmp_path / "ops").mkdir()
        (tmp_path / "backup").mkdir()
        ops = _client(api, certs, tmp_path / "ops", "ops-bootstrap")
        assert ops.get_secret(HANDOVER) is None
        ops.put_secret(HANDOVER, {"SENDSAFE_API_KEY": "first"}, {"a": "b"})
        ops.put_secret(HANDOVER, {"SENDSAFE_API_KEY": "second"}, {"a": "b"})  # exists: replaced
        assert ops.get_secret(HANDOVER) == {"SENDSAFE_API_KEY": "second"}
        assert [(m, s) for m, _, s in api.requests] == [("GET", 404), ("POST", 201), ("POST", 409), ("PUT", 200),
                                                        ("GET", 200)]
        with pytest.raises(KubeApiError, match="HTTP 403") as other:
            ops.get_secret("keys-root-key")  # no other Secret is readable
        assert "second" not in str(other.value)

        backup = _client(api, certs, tmp_path / "backup", "ops-backup")
        with pytest.raises(KubeApiError, match="HTTP 403"):
            backup.get_secret(HANDOVER)
        with pytest.raises(KubeApiError, match="HTTP 403"):
            backup.put_secret(HANDOVER, {"SENDSAFE_API_KEY": "stolen"}, {})
        assert ops.get_secret(HANDOVER) == {"SENDSAFE_API_KEY": "second"}
    finally:
        api.close()


def test_outside_a_pod_the_handover_says_so(tmp_path: Path) -> None:
    with pytest.raises(KubeApiError, match="not running in a pod"):
        InCluster.load(tmp_path, {})
    with pytest.raises(KubeApiError, match="cannot read the API credentials"):
        InCluster.load(tmp_path, {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "1"})
