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
class TlsMaterial:
    """The contents of a `TlsFiles` set, checked to belong together."""

    cert: bytes
    key: bytes
    ca: bytes


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        return self.cert.read_bytes(), self.key.read_bytes(), self.ca.read_bytes()

    def mtimes(self) -> tuple[float, float, float]:
        return (self.cert.stat().st_mtime, self.key.stat().st_mtime, self.ca.stat().st_mtime)

    def stamp(self) -> tuple[tuple[int, int, int], ...]:
        """A cheap change detector (mtime, size, inode of each file, following symlinks): a rewrite in
        place and the kubelet's atomic swap of a mounted Secret's `..data` link both change it."""
        out = []
        for path in (self.cert, self.key, self.ca):
            st = path.stat()
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def load(self) -> TlsMaterial:
        """Read the three files; ValueError unless the key belongs to the certificate and the CA file
        holds at least one certificate (a rotation caught half-written is never used)."""
        cert, key, ca = self.read()
        check_material(TlsMaterial(cert, key, ca))
        return TlsMaterial(cert, key, ca)


def check_material(m: TlsMaterial) -> None:
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        chain = x509.load_pem_x509_certificates(m.cert)
        private = serialization.load_pem_private_key(m.key, password=None)
        x509.load_pem_x509_certificates(m.ca)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"unreadable PEM ({exc})") from None
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if chain[0].public_key().public_bytes(der, spki) != private.public_key().public_bytes(der, spki):
        raise ValueError("the private key does not belong to the certificate")


class TlsWatcher:
    """Follows a `TlsFiles` set: `poll()` returns the new material once the files changed to a
    consistent set, else None. An inconsistent set (key and certificate from different rotations, an
    empty CA file) is reported once and retried when the files change again; the old material stays."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._stamp = files.stamp()
        self.material = files.load()
        self._bad: tuple[tuple[int, int, int], ...] | None = None

    def poll(self) -> TlsMaterial | None:
        try:
            stamp = self.files.stamp()
        except OSError:
            return None
        if stamp == self._stamp or stamp == self._bad:
            return None
        try:
            material = self.files.load()
        except (OSError, ValueError) as exc:
            self._bad = stamp
            _LOG.warning("tls files changed but cannot be used yet (%s); keeping the current certificate", exc)
            return None
        self._stamp, self._bad = stamp, None
        if material == self.material:
            return None
        self.material = material
        return material


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Client certificates required; rotated files are picked up on the next handshake (grpc asks
    `fetch` before every handshake; a stat of three files when nothing changed)."""
    watcher = TlsWatcher(files)

    def config(m: TlsMaterial) -> Any:
        return grpc.ssl_server_certificate_configuration([(m.key, m.cert)], root_certificates=m.ca)

    def fetch() -> Any:
        material = watcher.poll()
        if material is None:
            return None
        _LOG.info("tls certificate reloaded")
        return config(material)

    return grpc.dynamic_ssl_server_credentials(config(watcher.material), fetch, require_client_authentication=True)


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """Credentials fixed at the files' current contents (`svckit.rpc.secure_channel` follows rotations)."""
    return material_channel_credentials(files.load())


def material_channel_credentials(m: TlsMaterial) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=m.ca, private_key=m.key, certificate_chain=m.cert)


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
