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

Only the ``cryptography`` library is used (no openssl CLI). Private keys are PEM/PKCS8, unencrypted,
written with mode 0600 from the moment the file exists; the output directory is created 0700.

The run is idempotent: if every file exists, every key matches its certificate, every leaf chains to the
CA on disk and everything stays valid for more than 30 days, nothing is touched. Missing or stale leaves
are reissued from the existing CA; a CA is only replaced with ``--force``.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_VALIDITY_DAYS",
    "DEFAULT_OUT_DIR",
    "INTERNAL_CA",
    "LEAF_VALIDITY_DAYS",
    "PUBLIC_CA",
    "PUBLIC_GATEWAY",
    "RENEW_BEFORE_DAYS",
    "SERVICE_NAMES",
    "SPIFFE_TRUST_DOMAIN",
    "CertError",
    "CertReport",
    "ensure_dev_certs",
    "generate_dev_certs",
    "issue_leaf",
    "load_cert",
    "load_key",
    "main",
    "make_ca",
    "spiffe_id",
    "write_pem",
]

SPIFFE_TRUST_DOMAIN = "sendsafe.internal"
SERVICE_NAMES: tuple[str, ...] = ("identity", "keys", "messaging", "audit", "gateway", "ops")
INTERNAL_CA = "internal-ca"
PUBLIC_CA = "public-ca"
PUBLIC_GATEWAY = "gateway-https"
DEFAULT_OUT_DIR = Path(".dev/certs")

CA_VALIDITY_DAYS = 3650
LEAF_VALIDITY_DAYS = 365
RENEW_BEFORE_DAYS = 30
# Backdate notBefore slightly so a peer whose clock is a little behind still accepts a fresh cert.
_CLOCK_SKEW = datetime.timedelta(minutes=5)

_INTERNAL_CA_CN = "SendSafe Internal Dev CA"
_PUBLIC_CA_CN = "SendSafe Public Edge Dev CA"
_ORG = "SendSafe (development only)"
_CURVE = ec.SECP256R1
_HASH = hashes.SHA256

_PUBLIC_GATEWAY_DNS: tuple[str, ...] = ("localhost",)
_PUBLIC_GATEWAY_IPS: tuple[str, ...] = ("127.0.0.1", "::1")
_SERVICE_IPS: tuple[str, ...] = ("127.0.0.1",)

# A SPIFFE path segment; also usable as a DNS label and a file name.
_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class CertError(Exception):
    """The certificate directory is in a state this tool will not repair without ``--force``."""


# --------------------------------------------------------------------------------------------------
# Minting
# --------------------------------------------------------------------------------------------------


def spiffe_id(name: str) -> str:
    """The SPIFFE ID for a workload name, e.g. ``spiffe://sendsafe.internal/identity``."""
    _check_name(name)
    return f"spiffe://{SPIFFE_TRUST_DOMAIN}/{name}"


def _check_name(name: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"invalid workload name {name!r}: want lowercase letters, digits and '-'")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(_CURVE())


def make_ca(
    common_name: str, *, days: int = CA_VALIDITY_DAYS
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed EC P-256 CA: CA:TRUE pathlen 0, keyCertSign + cRLSign, ``days`` validity."""
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, _HASH())
    )
    return cert, key


def issue_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    name: str,
    *,
    spiffe: bool = True,
    server: bool = True,
    client: bool = True,
    dns: Sequence[str] | None = None,
    ips: Sequence[str] = _SERVICE_IPS,
    days: int = LEAF_VALIDITY_DAYS,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """An EC P-256 end-entity certificate signed by ``ca_cert``/``ca_key``.

    Subject is ``CN=<name>``. SANs: the SPIFFE URI (if ``spiffe``), ``dns`` (default ``localhost`` and
    ``<name>``) and ``ips``. EKU is serverAuth and/or clientAuth; key usage is digitalSignature only.
    Validity is ``days`` but never extends past the CA's own notAfter.
    """
    if not (server or client):
        raise ValueError("a leaf needs at least one of server=True / client=True")
    if _cert_spki(ca_cert) != _spki(ca_key):
        raise ValueError("ca_key does not belong to ca_cert")
    if spiffe:
        _check_name(name)
    dns_names = tuple(dns) if dns is not None else ("localhost", name)

    sans: list[x509.GeneralName] = []
    if spiffe:
        sans.append(x509.UniformResourceIdentifier(spiffe_id(name)))
    sans.extend(x509.DNSName(d) for d in dns_names)
    sans.extend(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips)
    if not sans:
        raise ValueError("a leaf needs at least one SAN")

    ekus: list[x509.ObjectIdentifier] = []
    if server:
        ekus.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        ekus.append(ExtendedKeyUsageOID.CLIENT_AUTH)

    key = _new_key()
    now = _now()
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, _HASH())
    )
    return cert, key


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def write_pem(path: Path, cert_or_key: x509.Certificate | PrivateKeyTypes) -> Path:
    """Atomically write a certificate (mode 0644) or an unencrypted PKCS8 private key (mode 0600).

    The data goes to a fresh temp file in the same directory, created with its final mode by
    ``os.open`` (so a key is never readable by anyone else, not even briefly), then renamed over
    ``path``. An existing file at ``path`` is replaced, never written through.
    """
    path = Path(path)
    if isinstance(cert_or_key, x509.Certificate):
        data = cert_or_key.public_bytes(serialization.Encoding.PEM)
        mode = 0o644
    else:
        data = cert_or_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        mode = 0o600
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed it; make it exact
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: not an EC private key")
    return key


def _spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _cert_spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _ensure_dir(out_dir: Path) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise CertError(f"{out_dir} exists and is not a directory")
        if out_dir.stat().st_mode & 0o077:
            print(
                f"warning: {out_dir} is accessible to group/other; "
                "private keys are 0600 but the directory should be 0700",
                file=sys.stderr,
            )
        return
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(mode=0o700)
    os.chmod(out_dir, 0o700)  # mkdir's mode is filtered by the umask


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
    _LeafSpec(n, spiffe=True, server=True, client=True, dns=("localhost", n), ips=_SERVICE_IPS)
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
        _cert_spki(cert) == _spki(key)
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
        if _cert_spki(cert) != _spki(key):
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
    _ensure_dir(out_dir)
    now = _now()
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
