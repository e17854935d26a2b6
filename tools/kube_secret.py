"""Read and write one Secret through the Kubernetes API from inside a pod: the bootstrap Job's key handover.

The bootstrap Job must hand the first account's API key to the operator without it ever reaching a log
(pod logs are kept by the cluster's log pipeline, readable by more people than the key should be). It
writes the key into a Secret instead; the operator reads it with kubectl and deletes it (docs/runbook.md,
"Bootstrap").

Credentials come from a projected volume the Job mounts (`--kube-api DIR`): `token` (a short-lived
service-account token, audience the API server), `ca.crt` (ConfigMap kube-root-ca.crt) and `namespace`
(downward API). The API server is `$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`, which kubelet sets in
every container. The Role `ops-bootstrap` lets the token create Secrets and get/update this one only.
Only the standard library: the Job needs four requests, not a client library.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class KubeApiError(RuntimeError):
    pass


@dataclass(frozen=True)
class InCluster:
    base_url: str
    token: str
    namespace: str
    ssl_context: ssl.SSLContext
    timeout: float = 10.0

    @classmethod
    def load(cls, creds: Path, env: Mapping[str, str] | None = None) -> InCluster:
        source = os.environ if env is None else env
        host, port = source.get("KUBERNETES_SERVICE_HOST"), source.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise KubeApiError("KUBERNETES_SERVICE_HOST/PORT are not set: not running in a pod")
        try:
            token = (creds / "token").read_text().strip()
            namespace = (creds / "namespace").read_text().strip()
            context = ssl.create_default_context(cafile=str(creds / "ca.crt"))
        except OSError as exc:
            raise KubeApiError(f"cannot read the API credentials under {creds}: {exc.strerror}") from None
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}", token, namespace, context)

    def _call(self, method: str, path: str, body: dict[str, object] | None = None) -> tuple[int, dict[str, object]]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(  # noqa: S310 (base_url is https, built in load())
            f"{self.base_url}{path}", data=data, method=method,
            headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json",
                     "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.ssl_context) as resp:  # noqa: S310
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            if err.code in (404, 409):
                return err.code, {}
            # The API's Status message names the object and the verb, never a Secret's data.
            raise KubeApiError(f"{method} {path}: HTTP {err.code} {err.reason}") from None
        except (urllib.error.URLError, OSError) as err:
            raise KubeApiError(f"{method} {path}: {err}") from None

    def _path(self, name: str = "") -> str:
        return f"/api/v1/namespaces/{self.namespace}/secrets" + (f"/{name}" if name else "")

    def get_secret(self, name: str) -> dict[str, str] | None:
        """The Secret's data, decoded; None when there is no such Secret."""
        status, obj = self._call("GET", self._path(name))
        if status == 404:
            return None
        data = obj.get("data") or {}
        assert isinstance(data, dict)
        return {k: base64.b64decode(v).decode() for k, v in data.items()}

    def put_secret(self, name: str, data: Mapping[str, str], labels: Mapping[str, str]) -> None:
        """Create the Secret, or replace it when it exists."""
        obj: dict[str, object] = {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": self.namespace, "labels": dict(labels)},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }
        status, _ = self._call("POST", self._path(), obj)
        if status == 409:
            status, _ = self._call("PUT", self._path(name), obj)
        if status not in (200, 201):
            raise KubeApiError(f"Secret {self.namespace}/{name} was not written (HTTP {status})")
