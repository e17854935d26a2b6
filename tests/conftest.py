"""Fixtures for every suite: svckit.testing gives certs, databases and Redis prefixes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from svckit.app import App
from svckit.rpc import secure_channel
from svckit.testing import CertBundle, NewDatabase
from svckit.tls import TlsFiles


@pytest.fixture(scope="session")
async def audit_app(certs: CertBundle, new_database: NewDatabase) -> AsyncIterator[App]:
    """A real audit service, in-process, over mTLS on a free port."""
    from services.audit.app import build
    from services.audit.config import Settings

    tls = certs.tls("audit")
    app = await build(
        Settings(
            tls_cert_file=tls.cert, tls_key_file=tls.key, tls_ca_file=tls.ca,
            database_url=await new_database("audit"),
        )
    )
    yield app
    await app.stop()


def channel_as(certs: CertBundle, caller: str, port: int, server: str) -> grpc.aio.Channel:
    """A channel to 127.0.0.1:`port` presenting `caller`'s certificate."""
    return secure_channel(f"127.0.0.1:{port}", certs.tls(caller), server_name=server)


def foreign_tls(tmp_dir: object, name: str) -> TlsFiles:
    """A certificate for `name` (valid SPIFFE ID) from a CA the services do not trust."""
    from pathlib import Path

    from tools.certs import issue_leaf, make_ca, write_pem

    d = Path(str(tmp_dir))
    ca, ca_key = make_ca("foreign")
    cert, key = issue_leaf(ca, ca_key, name)
    write_pem(d / "foreign-ca.crt", ca)
    write_pem(d / f"foreign-{name}.crt", cert)
    write_pem(d / f"foreign-{name}.key", key)
    return TlsFiles(d / f"foreign-{name}.crt", d / f"foreign-{name}.key", d / "foreign-ca.crt")
