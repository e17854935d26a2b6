"""The public HTTPS listener's TLS policy (stdlib `ssl` only, so `__main__` can check it cheaply).

- TLS 1.2 minimum; TLS 1.2 suites ECDHE with AES-GCM only (forward secrecy + AEAD);
- TLS 1.3 suites AES-GCM only: Python cannot set them, so the process is started with
  `OPENSSL_CONF=gateway/openssl.cnf` (`tls13_restricted` tells whether that took effect);
- no TLS compression (CRIME), no renegotiation, the server's cipher order wins; ALPN http/1.1.
"""

from __future__ import annotations

import ssl
from pathlib import Path

TLS12_CIPHERS = "ECDHE+AESGCM"
TLS13_SUITES = frozenset({"TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256"})
OPENSSL_CNF = Path(__file__).with_name("openssl.cnf")


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= (
        ssl.OP_NO_COMPRESSION
        | ssl.OP_NO_RENEGOTIATION
        | ssl.OP_CIPHER_SERVER_PREFERENCE
        | ssl.OP_SINGLE_ECDH_USE
    )
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


def tls13_suites(ctx: ssl.SSLContext | None = None) -> set[str]:
    """The TLS 1.3 suites a server context of this process would offer."""
    ctx = ctx or ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    return {c["name"] for c in ctx.get_ciphers() if c.get("protocol") == "TLSv1.3"}


def tls13_restricted(ctx: ssl.SSLContext | None = None) -> bool:
    """True when TLS 1.3 is limited to the AES-GCM suites (OPENSSL_CONF applied at start)."""
    suites = tls13_suites(ctx)
    return bool(suites) and suites <= TLS13_SUITES
