"""One throwaway PKI for tests that run svckit servers and channels directly (no suite)."""

from __future__ import annotations

from pathlib import Path

from svckit.tls import TlsFiles
from tools.pki import issue_leaf, write_pem


def workload_files(root: Path, who: str, ca: tuple[object, object], name: str) -> TlsFiles:
    """Certificate, key and trust bundle of workload `who` with SPIFFE name `name`, issued by `ca`."""
    cert, key = issue_leaf(ca[0], ca[1], name)  # type: ignore[arg-type]
    files = TlsFiles(root / f"{who}.crt", root / f"{who}.key", root / "ca.crt")
    write_pem(files.key, key)
    write_pem(files.cert, cert)
    write_pem(files.ca, ca[0])  # type: ignore[arg-type]
    return files
