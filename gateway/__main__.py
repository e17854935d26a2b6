"""`python -m gateway`: the HTTPS gateway process.

TLS 1.3 cipher suites can only be restricted through OpenSSL's configuration, which OpenSSL reads
once, when the process starts. So before anything else this checks what a server context of this
process would offer; if TLS 1.3 is not limited to the AES-GCM suites and OPENSSL_CONF is unset, the
process re-executes itself (same interpreter, arguments, environment and working directory) with
OPENSSL_CONF pointing at gateway/openssl.cnf. If OPENSSL_CONF is already set (by the launcher, or by
that re-exec) and the suites are still not restricted, the gateway refuses to start rather than
serve weaker TLS than declared.
"""

from __future__ import annotations

import os
import sys

from gateway import tls


def _ensure_tls13_policy() -> None:
    if tls.tls13_restricted():
        return
    if os.environ.get("OPENSSL_CONF"):
        sys.stderr.write(
            f"gateway: OPENSSL_CONF={os.environ['OPENSSL_CONF']} does not restrict TLS 1.3 to "
            f"{sorted(tls.TLS13_SUITES)} (offered: {sorted(tls.tls13_suites())}); refusing to start. "
            f"Unset it or use {tls.OPENSSL_CNF}.\n"
        )
        raise SystemExit(78)  # EX_CONFIG
    env = dict(os.environ, OPENSSL_CONF=str(tls.OPENSSL_CNF))
    argv = list(sys.orig_argv) or [sys.executable, "-m", "gateway"]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)  # noqa: S606 - the same interpreter, same arguments


if __name__ == "__main__":
    _ensure_tls13_policy()
    from gateway.app import main

    raise SystemExit(main(sys.argv[1:]))
