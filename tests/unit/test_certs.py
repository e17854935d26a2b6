"""tools.certs and tools.pki: the dev PKI's profile, file hygiene, idempotency, real TLS accepts/rejects it."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tools import certs
from tools import pki as pkilib

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One generated PKI shared by the read-only tests (EC keygen is cheap, but 18 files add up)."""
    return certs.ensure_dev_certs(tmp_path_factory.mktemp("pki") / "certs")


def _cert(paths: dict[str, Path], name: str) -> x509.Certificate:
    return pkilib.load_cert(paths[f"{name}.crt"])


def _sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def _ekus(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Signature check with the CA's public key alone (ignores issuer-name matching on purpose)."""
    pub = ca.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    assert cert.signature_hash_algorithm is not None
    try:
        pub.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    except InvalidSignature:
        return False
    return True


def _mtimes(paths: dict[str, Path]) -> dict[str, int]:
    return {name: p.stat().st_mtime_ns for name, p in paths.items()}


# ------------------------------------------------------------------------------------------------
# Certificate profile
# ------------------------------------------------------------------------------------------------


def test_generates_every_expected_file(pki: dict[str, Path]) -> None:
    stems = ["internal-ca", "public-ca", *certs.SERVICE_NAMES, "gateway-https"]
    expected = {f"{s}.{ext}" for s in stems for ext in ("crt", "key")}
    assert set(pki) == expected
    for name, path in pki.items():
        assert path.name == name
        assert path.is_file()
    # No temp files left behind by the atomic writer.
    assert sorted(p.name for p in next(iter(pki.values())).parent.iterdir()) == sorted(expected)


def test_spiffe_id() -> None:
    assert pkilib.SPIFFE_TRUST_DOMAIN == "sendsafe.internal"
    assert pkilib.spiffe_id("identity") == "spiffe://sendsafe.internal/identity"
    for bad in ("", "Identity", "a/b", "x y", "-x", "../etc"):
        with pytest.raises(ValueError):
            pkilib.spiffe_id(bad)


@pytest.mark.parametrize("stem", ["internal-ca", "public-ca"])
def test_ca_profile(pki: dict[str, Path], stem: str) -> None:
    ca = _cert(pki, stem)
    pub = ca.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    assert isinstance(pub.curve, ec.SECP256R1)
    assert ca.issuer == ca.subject
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    assert _signed_by(ca, ca)
    assert ca.not_valid_after_utc - ca.not_valid_before_utc > datetime.timedelta(days=365 * 9)


def test_the_two_cas_are_distinct(pki: dict[str, Path]) -> None:
    internal, public = _cert(pki, "internal-ca"), _cert(pki, "public-ca")
    assert internal.subject != public.subject
    assert internal.public_key() != public.public_key()
    assert not _signed_by(internal, public)
    assert not _signed_by(public, internal)


@pytest.mark.parametrize("name", certs.SERVICE_NAMES)
def test_service_cert_profile(pki: dict[str, Path], name: str) -> None:
    cert, ca = _cert(pki, name), _cert(pki, "internal-ca")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
    pub = cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    assert isinstance(pub.curve, ec.SECP256R1)

    sans = _sans(cert)
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://sendsafe.internal/{name}"]
    assert sorted(sans.get_values_for_type(x509.DNSName)) == sorted(["localhost", name])
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert len(list(sans)) == 4

    assert _ekus(cert) == {SERVER_AUTH, CLIENT_AUTH}
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign and not ku.crl_sign
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert not bc.ca

    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=364) < lifetime <= datetime.timedelta(days=366)

    assert cert.issuer == ca.subject
    assert _signed_by(cert, ca)
    assert not _signed_by(cert, _cert(pki, "public-ca"))

    # The key on disk is the cert's key.
    assert pkilib.load_key(pki[f"{name}.key"]).public_key() == cert.public_key()


@pytest.mark.parametrize("name", certs.SERVICE_NAMES)
def test_service_cert_passes_strict_rfc5280_verifier(pki: dict[str, Path], name: str) -> None:
    """cryptography's path validator is strict (AKI/SKI, critical flags, EKU); both roles must verify."""
    cert, ca = _cert(pki, name), _cert(pki, "internal-ca")
    builder = verification.PolicyBuilder().store(verification.Store([ca]))
    builder.build_server_verifier(x509.DNSName(name)).verify(cert, [])
    verified = builder.build_client_verifier().verify(cert, [])
    assert x509.UniformResourceIdentifier(pkilib.spiffe_id(name)) in (verified.subjects or [])
    # ... and must not verify against the public CA.
    public = verification.PolicyBuilder().store(verification.Store([_cert(pki, "public-ca")]))
    with pytest.raises(verification.VerificationError):
        public.build_client_verifier().verify(cert, [])


def test_gateway_https_profile_and_chain(pki: dict[str, Path]) -> None:
    cert = _cert(pki, "gateway-https")
    public, internal = _cert(pki, "public-ca"), _cert(pki, "internal-ca")

    sans = _sans(cert)
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == []  # no internal identity
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    assert _ekus(cert) == {SERVER_AUTH}

    assert _signed_by(cert, public)
    assert not _signed_by(cert, internal)
    assert cert.issuer == public.subject != internal.subject

    builder = verification.PolicyBuilder().store(verification.Store([public]))
    builder.build_server_verifier(x509.DNSName("localhost")).verify(cert, [])
    builder.build_server_verifier(x509.IPAddress(ipaddress.ip_address("::1"))).verify(cert, [])
    with pytest.raises(verification.VerificationError):  # serverAuth only
        builder.build_client_verifier().verify(cert, [])
    internal_only = verification.PolicyBuilder().store(verification.Store([internal]))
    with pytest.raises(verification.VerificationError):
        internal_only.build_server_verifier(x509.DNSName("localhost")).verify(cert, [])


def test_issue_leaf_options() -> None:
    ca_cert, ca_key = pkilib.make_ca("test CA")
    cert, key = pkilib.issue_leaf(
        ca_cert, ca_key, "worker", spiffe=False, server=False, client=True, dns=(), ips=("::1",), days=7
    )
    assert key.public_key() == cert.public_key()
    assert _ekus(cert) == {CLIENT_AUTH}
    assert list(_sans(cert)) == [x509.IPAddress(ipaddress.ip_address("::1"))]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= datetime.timedelta(days=7, minutes=10)
    with pytest.raises(ValueError):
        pkilib.issue_leaf(ca_cert, ca_key, "worker", server=False, client=False)
    _, other_key = pkilib.make_ca("other CA")
    with pytest.raises(ValueError, match="does not belong"):
        pkilib.issue_leaf(ca_cert, other_key, "worker")


def test_leaf_never_outlives_its_ca() -> None:
    ca_cert, ca_key = pkilib.make_ca("short CA", days=40)
    cert, _ = pkilib.issue_leaf(ca_cert, ca_key, "identity")
    assert cert.not_valid_after_utc == ca_cert.not_valid_after_utc


# ------------------------------------------------------------------------------------------------
# Files: modes, idempotency, --force, partial repair
# ------------------------------------------------------------------------------------------------


def test_file_and_directory_modes(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "certs"
    old_umask = os.umask(0o000)  # a permissive umask must not widen anything
    try:
        paths = certs.ensure_dev_certs(out)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for name, path in paths.items():
        mode = stat.S_IMODE(path.stat().st_mode)
        if name.endswith(".key"):
            assert mode == 0o600, name
            text = path.read_text()
            assert text.startswith("-----BEGIN PRIVATE KEY-----"), name  # PKCS8, unencrypted
            assert "ENCRYPTED" not in text
        else:
            assert mode == 0o644, name
            assert path.read_text().startswith("-----BEGIN CERTIFICATE-----")


def test_write_pem_replaces_a_wide_open_key_file_with_a_0600_one(tmp_path: Path) -> None:
    _, key = pkilib.make_ca("x")
    target = tmp_path / "k.key"
    target.write_text("old")
    target.chmod(0o666)
    pkilib.write_pem(target, key)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert pkilib.load_key(target).public_key() == key.public_key()


def test_second_run_is_a_noop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "certs"
    assert certs.main(["--out", str(out)]) == 0
    first = capsys.readouterr().out
    assert "wrote 18 files" in first
    assert "PRIVATE KEY" not in first
    paths = certs.ensure_dev_certs(out)
    before = _mtimes(paths)
    serial = _cert(paths, "internal-ca").serial_number

    assert certs.main(["--out", str(out)]) == 0
    second = capsys.readouterr().out
    assert "nothing to do" in second
    assert _mtimes(paths) == before
    assert _cert(paths, "internal-ca").serial_number == serial
    assert certs.generate_dev_certs(out).written == []


def test_force_regenerates_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "certs"
    paths = certs.ensure_dev_certs(out)
    old = {n: p.read_bytes() for n, p in paths.items()}
    internal_serial = _cert(paths, "internal-ca").serial_number
    public_serial = _cert(paths, "public-ca").serial_number

    assert certs.main(["--out", str(out), "--force"]) == 0
    assert "wrote 18 files" in capsys.readouterr().out
    assert _cert(paths, "internal-ca").serial_number != internal_serial
    assert _cert(paths, "public-ca").serial_number != public_serial
    assert all(paths[n].read_bytes() != old[n] for n in paths)
    # The new leaves chain to the new CA.
    assert _signed_by(_cert(paths, "identity"), _cert(paths, "internal-ca"))


def test_missing_leaf_is_reissued_from_the_existing_ca(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    paths = certs.ensure_dev_certs(out)
    ca_bytes = paths["internal-ca.crt"].read_bytes()
    before = _mtimes(paths)
    paths["messaging.crt"].unlink()
    paths["audit.key"].unlink()

    report = certs.generate_dev_certs(out)
    assert sorted(p.name for p in report.written) == sorted(
        ["messaging.crt", "messaging.key", "audit.crt", "audit.key"]
    )
    assert paths["internal-ca.crt"].read_bytes() == ca_bytes
    after = _mtimes(paths)
    for name in paths:
        if not name.startswith(("messaging.", "audit.")):
            assert after[name] == before[name], name
    ca = _cert(paths, "internal-ca")
    for name in ("messaging", "audit"):
        assert _signed_by(_cert(paths, name), ca)
        assert pkilib.load_key(paths[f"{name}.key"]).public_key() == _cert(paths, name).public_key()


def test_leaf_close_to_expiry_is_reissued(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    paths = certs.ensure_dev_certs(out)
    ca_cert, ca_key = _cert(paths, "internal-ca"), pkilib.load_key(paths["internal-ca.key"])
    short, short_key = pkilib.issue_leaf(ca_cert, ca_key, "keys", days=10)
    pkilib.write_pem(paths["keys.key"], short_key)
    pkilib.write_pem(paths["keys.crt"], short)

    report = certs.generate_dev_certs(out)
    assert {p.name for p in report.written} == {"keys.crt", "keys.key"}
    assert _cert(paths, "keys").not_valid_after_utc > short.not_valid_after_utc


def test_missing_ca_key_is_not_silently_replaced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "certs"
    paths = certs.ensure_dev_certs(out)
    ca_bytes = paths["internal-ca.crt"].read_bytes()
    paths["internal-ca.key"].unlink()
    assert certs.main(["--out", str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert paths["internal-ca.crt"].read_bytes() == ca_bytes
    assert certs.main(["--out", str(out), "--force"]) == 0
    assert paths["internal-ca.key"].is_file()


def test_fully_missing_ca_is_created_and_its_leaves_reissued(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    paths = certs.ensure_dev_certs(out)
    public_before = paths["public-ca.crt"].read_bytes()
    paths["internal-ca.crt"].unlink()
    paths["internal-ca.key"].unlink()
    report = certs.generate_dev_certs(out)
    written = {p.name for p in report.written}
    assert {"internal-ca.crt", "internal-ca.key", "identity.crt", "ops.key"} <= written
    assert not written & {"public-ca.crt", "public-ca.key", "gateway-https.crt", "gateway-https.key"}
    assert paths["public-ca.crt"].read_bytes() == public_before
    ca = _cert(paths, "internal-ca")
    assert all(_signed_by(_cert(paths, n), ca) for n in certs.SERVICE_NAMES)


def test_module_entry_point(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.certs", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert str(out / "identity.key") in proc.stdout
    assert "BEGIN" not in proc.stdout + proc.stderr
    assert (out / "gateway-https.crt").is_file()


# ------------------------------------------------------------------------------------------------
# Real TLS handshakes (in-memory BIOs: no sockets, no threads)
# ------------------------------------------------------------------------------------------------


def _server_ctx(paths: dict[str, Path], name: str, trust: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=trust)
    ctx.load_cert_chain(paths[f"{name}.crt"], paths[f"{name}.key"])
    return ctx


def _client_ctx(certfile: Path | None, keyfile: Path | None, trust: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname + CERT_REQUIRED by default
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_verify_locations(cafile=trust)
    if certfile is not None:
        ctx.load_cert_chain(certfile, keyfile)
    return ctx


def _handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Drive both ends to completion, then push one byte client->server so a TLS 1.3 server gets to
    verify the client certificate (and raise) before we declare success."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for label, end in (("client", client), ("server", server)):
            if not done[label]:
                try:
                    end.do_handshake()
                    done[label] = True
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
                except ssl.SSLError as e:
                    e.add_note(f"raised by {label}")
                    raise
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        if all(done.values()):
            break
    assert all(done.values()), done
    client.write(b"!")
    s_in.write(c_out.read())
    try:
        assert server.read(1) == b"!"
    except ssl.SSLError as e:
        e.add_note("raised by server")
        raise
    return client, server


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_mtls_handshake_between_services(pki: dict[str, Path], version: ssl.TLSVersion) -> None:
    trust = pki["internal-ca.crt"]
    server_ctx = _server_ctx(pki, "identity", trust)
    server_ctx.maximum_version = version
    client_ctx = _client_ctx(pki["gateway.crt"], pki["gateway.key"], trust)
    client, server = _handshake(server_ctx, client_ctx, server_hostname="identity")

    assert server.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]
    peer = server.getpeercert()
    assert peer
    assert ("URI", "spiffe://sendsafe.internal/gateway") in peer["subjectAltName"]
    assert peer["subject"] == ((("commonName", "gateway"),),)
    server_seen_by_client = client.getpeercert()
    assert server_seen_by_client
    assert ("URI", "spiffe://sendsafe.internal/identity") in server_seen_by_client["subjectAltName"]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_client_cert_from_foreign_ca_is_rejected(
    pki: dict[str, Path], tmp_path: Path, version: ssl.TLSVersion
) -> None:
    foreign_ca, foreign_key = pkilib.make_ca("Mallory CA")
    # Same CN and SPIFFE ID as a real service: only the issuer differs.
    cert, key = pkilib.issue_leaf(foreign_ca, foreign_key, "gateway")
    crt_path = pkilib.write_pem(tmp_path / "evil.crt", cert)
    key_path = pkilib.write_pem(tmp_path / "evil.key", key)

    trust = pki["internal-ca.crt"]
    server_ctx = _server_ctx(pki, "identity", trust)
    server_ctx.maximum_version = version
    client_ctx = _client_ctx(crt_path, key_path, trust)
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer") as excinfo:
        _handshake(server_ctx, client_ctx, server_hostname="identity")
    assert "raised by server" in excinfo.value.__notes__


def test_server_requires_a_client_cert(pki: dict[str, Path]) -> None:
    trust = pki["internal-ca.crt"]
    with pytest.raises(ssl.SSLError, match="PEER_DID_NOT_RETURN_A_CERTIFICATE") as excinfo:
        _handshake(_server_ctx(pki, "identity", trust), _client_ctx(None, None, trust), "identity")
    assert "raised by server" in excinfo.value.__notes__


def test_public_gateway_cert_is_not_trusted_internally(pki: dict[str, Path]) -> None:
    """A customer-facing client trusting only the public CA accepts gateway-https, and an internal
    peer trusting only the internal CA rejects it (and vice versa)."""
    public_trust, internal_trust = pki["public-ca.crt"], pki["internal-ca.crt"]

    def https_server(trust: Path) -> ssl.SSLContext:
        ctx = _server_ctx(pki, "gateway-https", trust)
        ctx.verify_mode = ssl.CERT_NONE  # ordinary HTTPS: no client cert
        return ctx

    for host in ("localhost", "127.0.0.1", "::1"):
        _handshake(https_server(public_trust), _client_ctx(None, None, public_trust), host)
    with pytest.raises(ssl.SSLCertVerificationError) as excinfo:
        _handshake(https_server(public_trust), _client_ctx(None, None, internal_trust), "localhost")
    assert "raised by client" in excinfo.value.__notes__
    # An internal service cert is not trusted by a customer-facing client either.
    internal_server = _server_ctx(pki, "gateway", internal_trust)
    with pytest.raises(ssl.SSLCertVerificationError) as excinfo:
        _handshake(internal_server, _client_ctx(None, None, public_trust), "localhost")
    assert "raised by client" in excinfo.value.__notes__
