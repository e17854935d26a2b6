"""A stand-in for the Kubernetes API, only as much as the bootstrap Job's key handover uses (Secrets)."""

from __future__ import annotations

import base64
import json
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

Doc = dict[str, Any]
NAMESPACE = "sendsafe"


class FakeKubeApi:
    """/api/v1/namespaces/<ns>/secrets[/<name>]: GET, POST, PUT, authorized like RBAC would by the rendered
    Roles bound to the token's ServiceAccount (verbs, resources, resourceNames)."""

    def __init__(self, docs: list[Doc], cert: Path, key: Path) -> None:
        self.docs = docs
        self.secrets: dict[tuple[str, str], Doc] = {}
        self.tokens: dict[str, str] = {}  # token -> service account
        self.requests: list[tuple[str, str, int]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int, body: Doc | None = None) -> None:
                data = json.dumps(body or {"kind": "Status", "code": status}).encode()
                api.requests.append((self.command, self.path, status))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/secrets(?:/([^/]+))?", self.path)
                sa = api.tokens.get(self.headers.get("Authorization", "").removeprefix("Bearer "))
                if sa is None:
                    return self._answer(401)
                if m is None:
                    return self._answer(404)
                ns, name = m.group(1), m.group(2)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                verb = {"GET": "get", "POST": "create", "PUT": "update"}[self.command]
                if verb != "create" and not name:
                    return self._answer(405)
                target = name or body.get("metadata", {}).get("name", "")
                if not api.allowed(sa, ns, verb, target):
                    return self._answer(403)
                if verb == "get":
                    found = api.secrets.get((ns, name))
                    return self._answer(200, found) if found else self._answer(404)
                if verb == "create" and (ns, target) in api.secrets:
                    return self._answer(409)
                if verb == "update" and (ns, target) not in api.secrets:
                    return self._answer(404)
                api.secrets[(ns, target)] = body
                return self._answer(201 if verb == "create" else 200, body)

            do_GET = do_POST = do_PUT = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def allowed(self, sa: str, ns: str, verb: str, name: str) -> bool:
        roles = {
            b["roleRef"]["name"] for b in self.docs
            if b["kind"] == "RoleBinding" and b["metadata"].get("namespace") == ns
            and any(s.get("kind") == "ServiceAccount" and s["name"] == sa for s in b.get("subjects") or [])
        }
        for role in self.docs:
            if role["kind"] != "Role" or role["metadata"]["name"] not in roles:
                continue
            for rule in role.get("rules") or []:
                names = rule.get("resourceNames") or []
                if ("" in rule.get("apiGroups", []) and "secrets" in rule.get("resources", [])
                        and verb in rule.get("verbs", []) and (not names or name in names)):
                    return True
        return False

    def secret_data(self, name: str) -> dict[str, str] | None:
        found = self.secrets.get((NAMESPACE, name))
        if found is None:
            return None
        return {k: base64.b64decode(v).decode() for k, v in (found.get("data") or {}).items()}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
