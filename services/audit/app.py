"""Composition root of the audit service."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sendsafe.audit.v1 import audit_service_pb2, audit_service_pb2_grpc, event_pb2
from sendsafe.messaging.v1 import notification_service_pb2_grpc
from services.audit.adapters import prometheus
from services.audit.adapters.messaging_client import MessagingNotifier
from services.audit.adapters.store.alerts import PgAlertStore
from services.audit.adapters.store.closures import PgAccountPurge
from services.audit.adapters.store.events import PgEventStore
from services.audit.adapters.store.roles import role_setter
from services.audit.adapters.store.security_notices import PgNoticeStore
from services.audit.adapters.webhooks import HttpsWebhooks
from services.audit.api import AuditServicer
from services.audit.config import Settings
from services.audit.domain.merkle import Signer, Verifier
from services.audit.domain.trace_links import check_template
from services.audit.service.alerts import AlertService
from services.audit.service.closure import AccountConfigPurge
from services.audit.service.formats import to_incoming
from services.audit.service.forwarding import ForwardingService
from services.audit.service.log import LogService
from services.audit.service.security_notices import SecurityNotices
from svckit import tasks
from svckit.app import App, expose_metrics, serve
from svckit.audit import denial_recorder
from svckit.config import load
from svckit.db import create_pool, migrate
from svckit.rpc import secure_channel
from svckit.server import start_server
from svckit.tls import TlsFiles

MIGRATIONS = Path(__file__).parent / "migrations"
_LOG = logging.getLogger(__name__)


def _key_bytes(text: str, what: str) -> bytes:
    text = text.strip()
    try:
        raw = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raw = b""
    if len(raw) != 32:
        raise ValueError(f"{what} must be 32 bytes, hex or base64")
    return raw


def signer_for(settings: Settings) -> Signer:
    if settings.signing_key:
        return Signer.from_seed(settings.log_origin, _key_bytes(settings.signing_key, "AUDIT_SIGNING_KEY"))
    _LOG.warning("AUDIT_SIGNING_KEY is not set: checkpoints are signed with an ephemeral key that dies with"
                 " this process (development only)")
    return Signer(settings.log_origin, Ed25519PrivateKey.generate())


def webhook_root(settings: Settings) -> bytes:
    if settings.webhook_key:
        return _key_bytes(settings.webhook_key, "AUDIT_WEBHOOK_KEY")
    _LOG.warning("AUDIT_WEBHOOK_KEY is not set: webhook secrets change when this process restarts"
                 " (development only)")
    return os.urandom(32)


def open_notifier(settings: Settings, stack: contextlib.AsyncExitStack) -> MessagingNotifier | None:
    """None when MESSAGING_ADDR is not set (SMS/email deliveries then fail as MESSAGING_NOT_CONFIGURED)."""
    if not settings.messaging_addr:
        return None
    tls = TlsFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
    channel = secure_channel(settings.messaging_addr, tls, server_name="messaging")
    stack.push_async_callback(channel.close)
    return MessagingNotifier(notification_service_pb2_grpc.NotificationServiceStub(channel))


async def build(settings: Settings) -> App:
    stack = contextlib.AsyncExitStack()
    try:
        # Migrations run as the database owner; the service itself then works as the writer role, which
        # may only INSERT and SELECT the evidence.
        owner = await create_pool(settings.database_url, min_size=1, max_size=1)
        try:
            await migrate(owner, MIGRATIONS)
        finally:
            await owner.close()
        pool = await create_pool(settings.database_url, min_size=1, max_size=settings.db_pool_size,
                                 init=role_setter(settings.db_role) if settings.db_role else None)
        stack.push_async_callback(pool.close)
        events = PgEventStore(pool)
        if n := await events.integrate_backlog():
            _LOG.info("added %d earlier events to the Merkle tree", n)
        log = LogService(
            events, signer_for(settings), trusted=[Verifier.parse(k) for k in settings.trusted_keys],
            max_batch=settings.max_batch, checkpoint_min_interval=settings.checkpoint_min_interval_seconds,
        )
        log.trace_url_template = check_template(settings.trace_url_template)  # a bad template stops the start

        async def record(evs: Sequence[event_pb2.Event]) -> None:
            # The audit service records its own events straight into its log.
            await log.append_events([to_incoming(e) for e in evs])

        async def record_one(ev: event_pb2.Event) -> None:
            await record([ev])

        webhooks = HttpsWebhooks(allow_private=settings.webhook_allow_private, ca_file=settings.webhook_ca_file,
                                 timeout=settings.webhook_timeout_seconds)
        alert_store = PgAlertStore(pool)
        root = webhook_root(settings)
        notifier = open_notifier(settings, stack)
        notice_store = PgNoticeStore(pool)
        notices = SecurityNotices(notice_store, notifier, retry_base=settings.retry_base_seconds)
        alerts = AlertService(alert_store, events, record, secret_root=root, webhooks=webhooks,
                              notifier=notifier, retry_base=settings.retry_base_seconds,
                              messages_per_hour=settings.alert_messages_per_hour, notices=notices)
        forwarding = ForwardingService(alert_store, events, record, secret_root=root, webhooks=webhooks,
                                       retry_base=settings.retry_base_seconds,
                                       trace_url_template=log.trace_url_template)

        engine_wake, delivery_wake, forward_wake = asyncio.Event(), asyncio.Event(), asyncio.Event()
        notice_wake = asyncio.Event()

        def appended() -> None:
            engine_wake.set()
            forward_wake.set()

        log.on_append(appended)

        async def evaluate() -> int:
            fired, noticed = alerts.fired, notices.recorded
            n = await alerts.evaluate()
            if alerts.fired != fired:
                delivery_wake.set()
            if notices.recorded != noticed:
                notice_wake.set()
            return n

        idle = settings.poll_seconds
        # Alerts follow their events within a quarter of a second; a backlog is taken batch after batch.
        tasks.spawn(stack, tasks.drain("alert engine", evaluate, engine_wake, idle, settle=0.25,
                                                 full=alerts.batch), "alert-engine")
        tasks.spawn(stack, tasks.drain("alert delivery", alerts.deliver_due, delivery_wake, idle),
                         "alert-delivery")
        tasks.spawn(stack, tasks.drain("security notices", notices.deliver_due, notice_wake, idle),
                    "security-notices")
        tasks.spawn(stack, tasks.drain("forwarding", forwarding.forward_due, forward_wake, idle,
                                                 settle=0.1), "forwarding")
        tasks.spawn(stack, tasks.every("checkpoint", settings.checkpoint_interval_seconds,
                                                 log.sign_checkpoint), "checkpoints")
        if settings.verify_interval_seconds > 0:
            # The first full check soon after start, so the integrity metric is there from the outset.
            tasks.spawn(stack, tasks.every("verification", settings.verify_interval_seconds,
                                                     log.verify_log, first=min(30.0, settings.verify_interval_seconds)),
                             "verification")
        await log.sign_checkpoint()  # a fresh anchor under this process's key

        server = await start_server(
            listen=settings.grpc_listen,
            tls=TlsFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file),
            register=lambda s: audit_service_pb2_grpc.add_AuditServiceServicer_to_server(
                AuditServicer(log, alerts, forwarding, notices, AccountConfigPurge(PgAccountPurge(pool), record)), s),
            service_names=[audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name],
            on_denied=denial_recorder(record_one, settings.service_name),
            health_listen=settings.health_listen,
            step_up_max_age_seconds=settings.step_up_max_age_seconds,
        )
    except BaseException:
        await stack.aclose()
        raise
    app = App(server, stack, grace=settings.shutdown_grace_seconds, extras={
        "service": log, "alerts": alerts, "forwarding": forwarding, "notices": notices, "pool": pool,
    })

    async def log_metrics() -> list[prometheus.Metric]:
        return prometheus.families(await collect(log, alerts, forwarding, events, alert_store,
                                                 (notices, notice_store)))

    app.metrics.add("audit log", log_metrics)
    try:
        await expose_metrics(app, settings)  # here too, so in-process tests get it with METRICS_LISTEN
    except BaseException:
        await app.stop()
        raise
    return app


async def collect(log: LogService, alerts: AlertService, forwarding: ForwardingService, events: PgEventStore,
                  alert_store: PgAlertStore, notices: tuple[SecurityNotices, PgNoticeStore] | None = None,
                  ) -> list[prometheus.Sample]:
    size, _, _ = await events.tree_head()
    cp = await events.latest_checkpoint()
    backlog = size - await alert_store.alert_cursor()
    st = log.stats
    S = prometheus.Sample
    out = [
        S("sendsafe_audit_events_appended_total", "counter", "Events this process stored.", st.appended),
        S("sendsafe_audit_append_batches_total", "counter", "Append batches this process stored.", st.batches),
        S("sendsafe_audit_ingest_lag_seconds", "histogram",
          "Seconds from an event's time at its emitter to its storage.", st.lag),
        S("sendsafe_audit_tree_size", "gauge", "Events in the log (its Merkle tree size).", size),
        S("sendsafe_audit_checkpoint_tree_size", "gauge", "Tree size of the latest signed checkpoint.",
          cp.tree_size if cp else 0),
        S("sendsafe_audit_checkpoint_timestamp_seconds", "gauge", "Unix time of the latest signed checkpoint.",
          cp.checkpoint_time.timestamp() if cp else 0.0),
        S("sendsafe_audit_integrity_failures_total", "counter",
          "Full verifications that found the log altered.", st.integrity_failures),
        S("sendsafe_audit_proof_violations_total", "counter",
          "Proof requests refused because the stored log no longer matches what was signed.", st.proof_violations),
        S("sendsafe_audit_last_verified_tree_size", "gauge", "Events checked by the last full verification.",
          st.last_verified_size),
        S("sendsafe_audit_last_verification_timestamp_seconds", "gauge", "Unix time of the last full verification.",
          st.last_verify_time),
        S("sendsafe_audit_alert_backlog_events", "gauge", "Events the alert engine has not evaluated yet.", backlog),
        S("sendsafe_audit_alerts_fired_total", "counter", "Alerts this process fired.", alerts.fired),
        S("sendsafe_audit_alert_deliveries_pending", "gauge", "Alert notifications not yet delivered or failed.",
          await alert_store.pending_deliveries()),
        S("sendsafe_audit_alert_delivery_failures_total", "counter", "Failed notification attempts.",
          alerts.delivery_failures),
        S("sendsafe_audit_forwarding_backlog_events", "gauge", "Events not yet forwarded to customers' SIEMs.",
          await alert_store.forwarding_backlog()),
        S("sendsafe_audit_forwarding_failures_total", "counter", "Failed forwarding attempts.", forwarding.failures),
    ]
    if notices is not None:
        out += [
            S("sendsafe_audit_security_notices_pending", "gauge", "Security notifications not yet sent or given up.",
              await notices[1].pending_notices()),
            S("sendsafe_audit_security_notice_failures_total", "counter", "Failed security notification attempts.",
              notices[0].failures),
        ]
    if st.integrity_ok is not None:
        out.append(S("sendsafe_audit_integrity_ok", "gauge",
                     "1 when the last full verification found the log intact, else 0.", int(st.integrity_ok)))
    return out


def main() -> None:
    import uvloop

    settings = load(Settings)
    uvloop.run(serve(build, settings))
