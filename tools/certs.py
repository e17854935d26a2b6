"""Development PKI for SendSafe: an internal mTLS CA, per-service leaf certs, and a separate edge CA.

Usage::

    python -m tools.certs [--out DIR] [--force]

Two trust roots are created on purpose:

* ``internal-ca``: signs the service certificates used for mTLS between identity, keys, messaging,
  audit, gateway and ops. Every leaf carries a SPIFFE ID (``spiffe://sendsafe.internal/<name>``) as its
  URI SAN; services authorise peers by that ID, never by CN.
* ``public-ca``: signs only ``gateway-https``, the gateway's customer-facing HTTPS certificate. Customers
  (and test clients) trust this CA, so it must never be able to vouch for an internal service identity,
  and the internal CA must never be something a customer is told to trust.

Minting and PEM files live in ``tools.pki``. Private keys are PEM/PKCS8, unencrypted,
written with mode 0600 from the moment the file exists; the output directory is created 0700.

The run is idempotent: if every file exists, every key matches its certificate, every leaf chains to the
CA on disk and everything stays valid for more than 30 days, nothing is touched. Missing or stale leaves
are reissued from the existing CA; a CA is only replaced with ``--force``.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from tools.pki import (
    SERVICE_IPS,
    CertError,
    cert_spki,
    ensure_dir,
    issue_leaf,
    load_cert,
    load_key,
    make_ca,
    now_utc,
    spiffe_id,
    spki,
    write_pem,
)

SERVICE_NAMES: tuple[str, ...] = ("identity", "keys", "messaging", "audit", "gateway", "ops")
INTERNAL_CA = "internal-ca"
PUBLIC_CA = "public-ca"
PUBLIC_GATEWAY = "gateway-https"
DEFAULT_OUT_DIR = Path(".dev/certs")
RENEW_BEFORE_DAYS = 30
_INTERNAL_CA_CN = "SendSafe Internal Dev CA"
_PUBLIC_CA_CN = "SendSafe Public Edge Dev CA"
_PUBLIC_GATEWAY_DNS: tuple[str, ...] = ("localhost",)
_PUBLIC_GATEWAY_IPS: tuple[str, ...] = ("127.0.0.1", "::1")


# --------------------------------------------------------------------------------------------------
# Idempotent generation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LeafSpec:
    name: str
    spiffe: bool
    server: bool
    client: bool
    dns: tuple[str, ...]
    ips: tuple[str, ...]

    def sans(self) -> set[x509.GeneralName]:
        out: set[x509.GeneralName] = set()
        if self.spiffe:
            out.add(x509.UniformResourceIdentifier(spiffe_id(self.name)))
        out.update(x509.DNSName(d) for d in self.dns)
        out.update(x509.IPAddress(ipaddress.ip_address(ip)) for ip in self.ips)
        return out

    def ekus(self) -> set[x509.ObjectIdentifier]:
        out: set[x509.ObjectIdentifier] = set()
        if self.server:
            out.add(ExtendedKeyUsageOID.SERVER_AUTH)
        if self.client:
            out.add(ExtendedKeyUsageOID.CLIENT_AUTH)
        return out


_INTERNAL_LEAVES: tuple[_LeafSpec, ...] = tuple(
    _LeafSpec(n, spiffe=True, server=True, client=True, dns=("localhost", n), ips=SERVICE_IPS)
    for n in SERVICE_NAMES
)
_PUBLIC_LEAVES: tuple[_LeafSpec, ...] = (
    _LeafSpec(
        PUBLIC_GATEWAY,
        spiffe=False,
        server=True,
        client=False,
        dns=_PUBLIC_GATEWAY_DNS,
        ips=_PUBLIC_GATEWAY_IPS,
    ),
)


@dataclass
class CertReport:
    """What :func:`generate_dev_certs` found and did. ``paths`` maps file name -> path for every file."""

    out_dir: Path
    paths: dict[str, Path] = field(default_factory=dict)
    written: list[Path] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.written)


def _fresh(cert: x509.Certificate, now: datetime.datetime) -> bool:
    remaining = cert.not_valid_after_utc - now
    return cert.not_valid_before_utc <= now and remaining > datetime.timedelta(days=RENEW_BEFORE_DAYS)


def _ca_ok(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bc.ca


def _issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _leaf_ok(
    crt_path: Path,
    key_path: Path,
    spec: _LeafSpec,
    ca_cert: x509.Certificate,
    now: datetime.datetime,
) -> bool:
    """True if the leaf on disk is complete, matches its key, chains to ``ca_cert``, is fresh and
    still has the SANs/EKUs this version of the tool would issue."""
    if not (crt_path.is_file() and key_path.is_file()):
        return False
    try:
        cert = load_cert(crt_path)
        key = load_key(key_path)
        sans = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        ekus = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except (ValueError, TypeError, x509.ExtensionNotFound):
        return False
    return (
        cert_spki(cert) == spki(key)
        and _issued_by(cert, ca_cert)
        and _fresh(cert, now)
        and sans == spec.sans()
        and ekus == spec.ekus()
    )


def _ensure_ca(
    out_dir: Path, stem: str, common_name: str, force: bool, now: datetime.datetime, report: CertReport
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    crt_path, key_path = out_dir / f"{stem}.crt", out_dir / f"{stem}.key"
    report.paths[crt_path.name], report.paths[key_path.name] = crt_path, key_path
    have_crt, have_key = crt_path.exists(), key_path.exists()
    if not force and (have_crt or have_key):
        if not (have_crt and have_key):
            missing = key_path if have_crt else crt_path
            raise CertError(f"{missing} is missing but its pair exists; rerun with --force to replace the CA")
        try:
            cert, key = load_cert(crt_path), load_key(key_path)
        except ValueError as e:
            raise CertError(f"cannot load {stem}: {e}; rerun with --force to replace the CA") from e
        if cert_spki(cert) != spki(key):
            raise CertError(f"{key_path} does not match {crt_path}; rerun with --force to replace the CA")
        if not _ca_ok(cert):
            raise CertError(f"{crt_path} is not a CA certificate; rerun with --force to replace it")
        if not _fresh(cert, now):
            raise CertError(
                f"{crt_path} expires {cert.not_valid_after_utc:%Y-%m-%d} (or is not yet valid); "
                "rerun with --force to replace the CA (every peer must then reload it)"
            )
        return cert, key
    cert, key = make_ca(common_name)
    # Key first: an interrupted run leaves a mismatched pair, which is detected above, never a cert
    # whose key is lost.
    report.written.append(write_pem(key_path, key))
    report.written.append(write_pem(crt_path, cert))
    return cert, key


def _ensure_leaves(
    out_dir: Path,
    specs: Sequence[_LeafSpec],
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    force: bool,
    now: datetime.datetime,
    report: CertReport,
) -> None:
    for spec in specs:
        crt_path, key_path = out_dir / f"{spec.name}.crt", out_dir / f"{spec.name}.key"
        report.paths[crt_path.name], report.paths[key_path.name] = crt_path, key_path
        if not force and _leaf_ok(crt_path, key_path, spec, ca_cert, now):
            continue
        cert, key = issue_leaf(
            ca_cert,
            ca_key,
            spec.name,
            spiffe=spec.spiffe,
            server=spec.server,
            client=spec.client,
            dns=spec.dns,
            ips=spec.ips,
        )
        report.written.append(write_pem(key_path, key))
        report.written.append(write_pem(crt_path, cert))


def generate_dev_certs(out_dir: Path = DEFAULT_OUT_DIR, force: bool = False) -> CertReport:
    """Create or refresh the dev PKI in ``out_dir``; report every path and which ones were written."""
    out_dir = Path(out_dir)
    ensure_dir(out_dir)
    now = now_utc()
    report = CertReport(out_dir=out_dir)
    internal_cert, internal_key = _ensure_ca(out_dir, INTERNAL_CA, _INTERNAL_CA_CN, force, now, report)
    public_cert, public_key = _ensure_ca(out_dir, PUBLIC_CA, _PUBLIC_CA_CN, force, now, report)
    _ensure_leaves(out_dir, _INTERNAL_LEAVES, internal_cert, internal_key, force, now, report)
    _ensure_leaves(out_dir, _PUBLIC_LEAVES, public_cert, public_key, force, now, report)
    return report


def ensure_dev_certs(out_dir: Path = DEFAULT_OUT_DIR, force: bool = False) -> dict[str, Path]:
    """Like :func:`generate_dev_certs` but returns just ``{file name: path}`` for every file,
    e.g. ``{"internal-ca.crt": ..., "identity.key": ..., "gateway-https.crt": ...}``."""
    return generate_dev_certs(out_dir, force).paths


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.certs",
        description="Create the SendSafe development CAs and service certificates (mTLS + edge HTTPS).",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT_DIR, help=f"output directory (default {DEFAULT_OUT_DIR})"
    )
    parser.add_argument("--force", action="store_true", help="regenerate everything, including both CAs")
    args = parser.parse_args(argv)
    try:
        report = generate_dev_certs(args.out, force=args.force)
    except CertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not report.changed:
        print(
            f"dev certs in {report.out_dir} exist and are valid for >{RENEW_BEFORE_DAYS} days; "
            "nothing to do (use --force to regenerate)"
        )
        return 0
    print(f"wrote {len(report.written)} files in {report.out_dir}:")
    for p in report.written:
        print(f"  {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
