"""mTLS material: server and channel credentials from files, reload on change, caller identity.

Service identity is the SPIFFE ID in the peer certificate's URI SAN
(`spiffe://sendsafe.internal/<name>`); `peer_service()` returns `<name>` or None.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

TRUST_DOMAIN = "sendsafe.internal"
SPIFFE_PREFIX = f"spiffe://{TRUST_DOMAIN}/"

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        return self.cert.read_bytes(), self.key.read_bytes(), self.ca.read_bytes()

    def mtimes(self) -> tuple[float, float, float]:
        return (self.cert.stat().st_mtime, self.key.stat().st_mtime, self.ca.stat().st_mtime)


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Client certificates required; rotated files are picked up on the next handshake."""
    cert, key, ca = files.read()
    state = {"mtimes": files.mtimes()}

    def initial() -> Any:
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch() -> Any:
        try:
            now = files.mtimes()
        except OSError:
            return None
        if now == state["mtimes"]:
            return None
        try:
            new_cert, new_key, new_ca = files.read()
            config = grpc.ssl_server_certificate_configuration([(new_key, new_cert)], root_certificates=new_ca)
        except (OSError, ValueError):
            _LOG.warning("tls reload failed; keeping the current certificate")
            return None
        state["mtimes"] = now
        _LOG.info("tls certificate reloaded")
        return config

    return grpc.dynamic_ssl_server_credentials(initial(), fetch, require_client_authentication=True)


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    cert, key, ca = files.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def peer_service(auth_context: dict[str, list[bytes]]) -> str | None:
    """The service name from the peer's SPIFFE ID, or None when there is no such identity."""
    candidates = list(auth_context.get("peer_spiffe_id", []))
    candidates += [v for v in auth_context.get("x509_subject_alternative_name", []) if v.startswith(b"spiffe://")]
    names = {c.decode() for c in candidates}
    if len(names) != 1:
        return None
    (uri,) = names
    if not uri.startswith(SPIFFE_PREFIX):
        return None
    name = uri[len(SPIFFE_PREFIX) :]
    return name if name and "/" not in name else None
