"""Fixtures for every suite: tests.support gives certs, databases and Redis prefixes; `suite`, `customer` and
`otlp` start the whole suite once per run for tests/e2e and tests/security (HTTPS only, see tests/e2e/conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from svckit.app import App
from svckit.rpc import secure_channel
from svckit.tls import TlsFiles
from tests.e2e.conftest import Customer, OtlpReceiver
from tests.integration.messaging.smtp_server import Inbox, server_context
from tests.support import RUN_ID, CertBundle, NewDatabase
from tools.suite import Suite, SuiteConfig, drop_suite_data, ensure_databases, ensure_root_key


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

    from tools.pki import issue_leaf, make_ca, write_pem

    d = Path(str(tmp_dir))
    ca, ca_key = make_ca("foreign")
    cert, key = issue_leaf(ca, ca_key, name)
    write_pem(d / "foreign-ca.crt", ca)
    write_pem(d / f"foreign-{name}.crt", cert)
    write_pem(d / f"foreign-{name}.key", key)
    return TlsFiles(d / f"foreign-{name}.crt", d / f"foreign-{name}.key", d / "foreign-ca.crt")


@pytest.fixture(scope="session")
def otlp() -> Iterator[tuple[OtlpReceiver, int]]:
    receiver = OtlpReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield receiver, port
    server.stop(0)


@pytest.fixture(scope="session")
def smtp_inbox(certs: CertBundle) -> Iterator[Inbox]:
    """A real SMTP server (aiosmtpd in a thread, STARTTLS required, the tests' public CA) that the suite's
    messaging sends its email to (security notices, alert emails): what arrived is `received`."""
    import socket

    from aiosmtpd.controller import Controller

    inbox = Inbox()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        inbox.port = s.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=inbox.port, server_hostname="mail.test",
                            tls_context=server_context(certs.https_cert, certs.https_key), require_starttls=True)
    controller.start()
    yield inbox
    controller.stop()


@pytest.fixture(scope="session")
def suite(
    certs: CertBundle, pg_admin_dsn: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory,
    otlp: tuple[OtlpReceiver, int], smtp_inbox: Inbox,
) -> Iterator[Suite]:
    work = tmp_path_factory.mktemp("suite")
    config = SuiteConfig(
        workdir=work,
        certs=certs.dir,
        pg_admin_dsn=pg_admin_dsn,
        db_prefix=f"sst_{RUN_ID}_e2e",
        redis_url=redis_url,
        redis_prefix=f"sst:{RUN_ID}:e2e:",
        root_key_file=ensure_root_key(work / "root.key"),
        env={
            name: {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp[1]}",
                "OTEL_EXPORTER_OTLP_INSECURE": "true",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
                "MESSAGING_RECLAIM_IDLE_MS": "2000",
            }
            for name in ("audit", "keys", "messaging", "identity", "gateway", "worker")
        },
    )
    # Rewrap passes often enough for tests/e2e/test_key_retirement.py to see a retirement go through.
    config.env["messaging"]["MESSAGING_REWRAP_SECONDS"] = "2"
    config.env["identity"]["IDENTITY_REWRAP_SECONDS"] = "2"
    config.env["keys"]["KEYS_REWRAP_SECONDS"] = "2"  # keys' own sealed items (API keys' sender-limit numbers)
    # Account policy (tests/e2e/test_account_policy.py): a session lifetime of seconds, to watch one end.
    config.env["identity"]["ACCOUNT_POLICY_MIN_SESSION_LIFETIME_SECONDS"] = "2"
    # Account closure (tests/e2e/test_account_closure.py): a pending window of seconds, swept and destroyed promptly.
    config.env["identity"].update(ACCOUNT_CLOSURE_PENDING_SECONDS="8", IDENTITY_CLOSURE_SWEEP_SECONDS="1")
    config.env["keys"].update(KEYS_MIN_DESTRUCTION_PENDING_SECONDS="1", KEYS_MAINTENANCE_SECONDS="1")
    # A send to a list counts every contact against the rate buckets (tests/e2e/test_contact_lists.py sends to a
    # list of 10,000): buckets that hold one such request.
    config.env["messaging"].update(MESSAGING_ACCOUNT_BURST="20000", MESSAGING_KEY_BURST="20000")
    config.env["messaging"].update(
        MESSAGING_SMTP_HOST="127.0.0.1", MESSAGING_SMTP_PORT=str(smtp_inbox.port), MESSAGING_SMTP_TLS="starttls",
        MESSAGING_SMTP_CA_FILE=str(certs.public_ca), MESSAGING_SMTP_FROM="security@sendsafe.example")
    ensure_databases(config)
    s = Suite(config).start()
    yield s
    s.stop()
    drop_suite_data(config)


@pytest.fixture(scope="session")
def customer(suite: Suite, certs: CertBundle, tmp_path_factory: pytest.TempPathFactory) -> Customer:
    from tools.bootstrap import bootstrap

    out = tmp_path_factory.mktemp("demo") / "demo.env"
    creds = asyncio.run(
        bootstrap(identity=suite.addrs["identity"], keys=suite.addrs["keys"], certs=certs.dir, out=out,
                  gateway_url=suite.gateway_url)
    )
    return Customer(creds["SENDSAFE_URL"], creds["SENDSAFE_USERNAME"], creds["SENDSAFE_API_KEY"],
                    Path(creds["SENDSAFE_CA_CERT"]))
