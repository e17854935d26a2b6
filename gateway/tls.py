"""The public HTTPS listener's TLS policy (stdlib `ssl` only, so `__main__` can check it cheaply).

- TLS 1.2 minimum; TLS 1.2 suites ECDHE with AES-GCM only (forward secrecy + AEAD);
- TLS 1.3 suites AES-GCM only: Python cannot set them, so the process is started with
  `OPENSSL_CONF=gateway/openssl.cnf` (`tls13_restricted` tells whether that took effect);
- no TLS compression (CRIME), no renegotiation, the server's cipher order wins; ALPN http/1.1;
- a rotated certificate is used for new connections without a restart (`ReloadingCertificate`).
"""

from __future__ import annotations

import logging
import ssl
import time
from pathlib import Path

_LOG = logging.getLogger(__name__)

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


RELOAD_CHECK_SECONDS = 5.0


class ReloadingCertificate:
    """The listener's context, following rotated certificate files without a restart.

    `context` is what the listening socket keeps. Its SNI callback runs early in every handshake (with
    or without SNI): at most every `check_seconds` it stats the two files; once they changed it builds
    a complete new context with `server_context` (so a key that does not match its certificate, a
    half-written rotation, is refused there and the current certificate stays) and from then on hands
    each new connection that context. Connections already open keep the certificate they started with.
    """

    def __init__(self, cert_file: Path, key_file: Path, *, check_seconds: float | None = None) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.check_seconds = RELOAD_CHECK_SECONDS if check_seconds is None else check_seconds
        self.context = server_context(cert_file, key_file)
        self.current = self.context
        self.generation = 0  # how many times the certificate was reloaded
        self._stamp = self._stat()
        self._bad: object = None
        self._next_check = time.monotonic() + self.check_seconds
        self.context.sni_callback = self._on_client_hello

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        out = []
        for path in (self.cert_file, self.key_file):
            st = path.stat()
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def maybe_reload(self) -> bool:
        """Look at the files now (rate-limited); True when a new certificate took effect."""
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + self.check_seconds
        try:
            stamp = self._stat()
        except OSError:
            return False
        if stamp == self._stamp or stamp == self._bad:
            return False
        try:
            fresh = server_context(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            self._bad = stamp
            _LOG.warning("https certificate files changed but cannot be used yet (%s); keeping the current one", exc)
            return False
        self._stamp, self._bad, self.current = stamp, None, fresh
        self.generation += 1
        _LOG.info("https certificate reloaded", extra={"event": "tls.https_reloaded"})
        return True

    def _on_client_hello(self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                         ctx: ssl.SSLContext) -> None:
        self.maybe_reload()
        if self.current is not self.context:
            conn.context = self.current
