"""The SendSafe PKI's building blocks: mint a CA and SPIFFE-named leaf certificates, and read and write
them as PEM files (keys 0600 from the moment they exist, directories 0700). `tools.certs` uses them to
keep a development PKI in place; tests use them to mint their own.

Only the ``cryptography`` library is used (no openssl CLI).
"""


from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SPIFFE_TRUST_DOMAIN = "sendsafe.internal"

CA_VALIDITY_DAYS = 3650
LEAF_VALIDITY_DAYS = 365
# Backdate notBefore slightly so a peer whose clock is a little behind still accepts a fresh cert.
_CLOCK_SKEW = datetime.timedelta(minutes=5)

_ORG = "SendSafe (development only)"
_CURVE = ec.SECP256R1
_HASH = hashes.SHA256

SERVICE_IPS: tuple[str, ...] = ("127.0.0.1",)

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


def now_utc() -> datetime.datetime:
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
    now = now_utc()
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
    ips: Sequence[str] = SERVICE_IPS,
    days: int = LEAF_VALIDITY_DAYS,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """An EC P-256 end-entity certificate signed by ``ca_cert``/``ca_key``.

    Subject is ``CN=<name>``. SANs: the SPIFFE URI (if ``spiffe``), ``dns`` (default ``localhost`` and
    ``<name>``) and ``ips``. EKU is serverAuth and/or clientAuth; key usage is digitalSignature only.
    Validity is ``days`` but never extends past the CA's own notAfter.
    """
    if not (server or client):
        raise ValueError("a leaf needs at least one of server=True / client=True")
    if cert_spki(ca_cert) != spki(ca_key):
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
    now = now_utc()
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


def spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def cert_spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def ensure_dir(out_dir: Path) -> None:
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
