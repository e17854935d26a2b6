"""Composition root of the messaging service: the API server (default) or the dispatch worker.

`python -m services.messaging`          -> API server + outbox relay + retention
`python -m services.messaging worker`   -> dispatch worker (stream consumer, carrier, receipts; the HTTP
                                           carrier's callback receiver; webhooks unless a notifier runs)
`python -m services.messaging notifier` -> customer webhooks only (its own egress policy in a cluster)
All roles share the settings and expose a health endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sendsafe.keys.v1 import keys_service_pb2_grpc
from sendsafe.messaging.v1 import (
    alpha_tag_service_pb2,
    alpha_tag_service_pb2_grpc,
    contact_service_pb2,
    contact_service_pb2_grpc,
    default_sender_service_pb2,
    default_sender_service_pb2_grpc,
    export_service_pb2,
    export_service_pb2_grpc,
    messaging_service_pb2,
    messaging_service_pb2_grpc,
    notification_service_pb2,
    notification_service_pb2_grpc,
    sender_service_pb2,
    sender_service_pb2_grpc,
)
from services.messaging.adapters.alpha_tags_api import AlphaTagServicer
from services.messaging.adapters.audit_client import discard, open_audit
from services.messaging.adapters.carriers import HttpCarrier, SimulatorCarrier
from services.messaging.adapters.contacts_api import ContactServicer
from services.messaging.adapters.default_senders_api import DefaultSenderServicer
from services.messaging.adapters.email import open_mailer
from services.messaging.adapters.export_peers import UnconfiguredPeers, open_export_peers
from services.messaging.adapters.identity_client import AlertOwners, open_owners
from services.messaging.adapters.keys_client import open_envelope, open_rewrap
from services.messaging.adapters.limits import RedisLimiter
from services.messaging.adapters.routing import RoutingCarrier
from services.messaging.adapters.senders_api import SenderServicer
from services.messaging.adapters.smpp.carrier import SmppCarrier
from services.messaging.adapters.smpp.session import SessionConfig
from services.messaging.adapters.store.alpha_tags import PgAlphaTagStore
from services.messaging.adapters.store.contacts import PgContactStore
from services.messaging.adapters.store.default_senders import PgDefaultSenderStore
from services.messaging.adapters.store.destinations import PgDestinationStore
from services.messaging.adapters.store.export_reads import PgExportIdentities
from services.messaging.adapters.store.exports import PgExportStore
from services.messaging.adapters.store.pg import PgMessageStore
from services.messaging.adapters.store.rewrap import rewrap_columns
from services.messaging.adapters.store.senders import PgSenderStore
from services.messaging.adapters.store.simulator import PgSimulatorStore
from services.messaging.adapters.stream import DispatchStream
from services.messaging.api import AccountExportServicer, MessagingServicer, NotificationServicer
from services.messaging.config import Settings, tls_of
from services.messaging.domain.limits import RateConfig
from services.messaging.domain.pricing import currency_for, parse_price_table
from services.messaging.domain.routes import RouteTableError, parse_routes
from services.messaging.entrypoints.callback_receiver import CallbackReceiver
from services.messaging.entrypoints.dispatch_worker import StreamWorker, default_consumer_name, pump_receipts
from services.messaging.service.alpha_tags import AlphaTags
from services.messaging.service.common import MessagingOptions
from services.messaging.service.contacts import IMPORT_POLL_SECONDS, ContactLists
from services.messaging.service.default_senders import DefaultSenders
from services.messaging.service.delivery import DeliveryService
from services.messaging.service.export_job import ExportWriter
from services.messaging.service.exports import ExportOptions, Exports
from services.messaging.service.index_keys import IndexKeys
from services.messaging.service.messaging import MessagingService
from services.messaging.service.notifications import Notifications
from services.messaging.service.ports import Carrier, Mailer
from services.messaging.service.replies import Replies
from services.messaging.service.sender_index import SenderIndex
from services.messaging.service.senders import Senders
from services.messaging.service.webhooks import WebhookService
from svckit.app import App, serve
from svckit.audit import denial_recorder
from svckit.config import load
from svckit.db import create_pool, migrate
from svckit.envelope import KeysStubSource
from svckit.redisconn import make_redis
from svckit.rpc import secure_channel
from svckit.server import start_server
from svckit.tasks import drain, every, spawn
from svckit.webhooks import WebhookClient

MIGRATIONS = Path(__file__).parent / "migrations"
_LOG = logging.getLogger(__name__)
SERVICE_NAME = messaging_service_pb2.DESCRIPTOR.services_by_name["MessagingService"].full_name
NOTIFICATION_SERVICE_NAME = notification_service_pb2.DESCRIPTOR.services_by_name["NotificationService"].full_name
EXPORT_SERVICE_NAME = export_service_pb2.DESCRIPTOR.services_by_name["AccountExportService"].full_name
ALPHA_TAG_SERVICE_NAME = alpha_tag_service_pb2.DESCRIPTOR.services_by_name["AlphaTagService"].full_name
SENDER_SERVICE_NAME = sender_service_pb2.DESCRIPTOR.services_by_name["SenderService"].full_name
DEFAULT_SENDER_SERVICE_NAME = default_sender_service_pb2.DESCRIPTOR.services_by_name["DefaultSenderService"].full_name
CONTACT_SERVICE_NAME = contact_service_pb2.DESCRIPTOR.services_by_name["ContactService"].full_name


async def _common(settings: Settings, stack: contextlib.AsyncExitStack) -> tuple[Any, ...]:
    pool = await create_pool(settings.database_url, max_size=settings.db_pool_size)
    stack.push_async_callback(pool.close)
    await migrate(pool, MIGRATIONS)
    redis = make_redis(settings.redis_url)
    stack.push_async_callback(redis.aclose)
    stream = DispatchStream(redis, settings.dispatch_stream, settings.dead_stream)
    envelope = await open_envelope(settings, stack)
    audit = await open_audit(settings, stack)
    record: Callable[[Any], Awaitable[None]] = audit.record if audit is not None else discard
    return pool, stream, envelope, record, redis


async def _sender_index(settings: Settings, pool: Any) -> SenderIndex:
    """Sender identities as sends and replies see them, under the platform sender index key."""
    store = PgSenderStore(pool)
    key = settings.sender_index_key_bytes
    if key is None:
        _LOG.warning("MESSAGING_SENDER_INDEX_KEY is not set: sender numbers are hashed under a key kept in the"
                     " database (development only)")
        key = await store.sender_index_key()
    return SenderIndex(store, key)


def _webhooks(settings: Settings, store: PgMessageStore, envelope: Any) -> WebhookService:
    sender = WebhookClient(allow_private=settings.webhook_allow_private, ca_file=settings.webhook_ca_file,
                           timeout=settings.webhook_timeout_seconds)
    replies = Replies(store, envelope, IndexKeys(store, envelope))
    return WebhookService(store, envelope, replies, sender, max_attempts=settings.webhook_max_attempts,
                          backoff_base_s=settings.webhook_backoff_ms / 1000,
                          lease_s=settings.webhook_timeout_seconds * 3)


async def build(settings: Settings) -> App:
    """The API server: the SMS API, settings, and the outbox relay, retention and cleanup loops."""
    stack = contextlib.AsyncExitStack()
    try:
        pool, stream, envelope, record, redis = await _common(settings, stack)
        store = PgMessageStore(pool)
        senders = await _sender_index(settings, pool)
        import_wake = asyncio.Event()
        lists = ContactLists(PgContactStore(pool), envelope, IndexKeys(store, envelope), record, wake=import_wake.set)
        rates = RateConfig(
            account_rate=settings.account_rate, account_burst=settings.account_burst,
            key_rate=settings.key_rate, key_burst=settings.key_burst, prefix_limit=settings.prefix_limit,
            prefix_window=settings.prefix_window_seconds, prefix_digits=settings.prefix_digits,
        )
        service = MessagingService(
            store, stream, envelope,
            prices=parse_price_table(settings.price_table, settings.price_per_part_amount),
            trial_credit=settings.trial_credit_amount,
            currency=currency_for(settings.currency),
            limiter=RedisLimiter(redis, settings.limits_prefix),
            options=MessagingOptions(
                outbox_grace_seconds=settings.outbox_grace_seconds, redeliver_seconds=settings.redeliver_seconds,
                relay_batch=settings.relay_batch, rates=rates, allow_private_webhooks=settings.webhook_allow_private,
            ),
            record=record,
            senders=senders,
            lists=lists,
        )
        service.defaults = defaults = DefaultSenders(PgDefaultSenderStore(pool), senders, envelope, record)
        owners = open_owners(settings, stack)
        mailer = open_mailer(settings)
        export_wake = asyncio.Event()
        exports = _exports(settings, stack, pool, store, envelope, record, export_wake.set)
        server = await start_server(
            listen=settings.grpc_listen,
            tls=tls_of(settings),
            register=lambda s: _register(s, service, pool, record, owners, mailer, exports,
                                         Senders(PgSenderStore(pool), senders, envelope, service, record), lists,
                                         defaults),
            service_names=[SERVICE_NAME, NOTIFICATION_SERVICE_NAME, EXPORT_SERVICE_NAME, ALPHA_TAG_SERVICE_NAME,
                           SENDER_SERVICE_NAME, DEFAULT_SENDER_SERVICE_NAME,
                           CONTACT_SERVICE_NAME],
            on_denied=denial_recorder(record, settings.service_name),
            health_listen=settings.health_listen,
            step_up_max_age_seconds=settings.step_up_max_age_seconds,
        )
        stack.push_async_callback(server.stop, settings.shutdown_grace_seconds)
        spawn(stack, drain("relay", service.relay_outbox, None, settings.relay_interval_seconds), "outbox-relay")
        spawn(stack, drain("outbox-cleanup", service.forget_published, None, 0.2), "outbox-cleanup")
        spawn(stack, drain("retention", service.redact_expired, None, settings.retention_interval_seconds),
                    "retention")
        spawn(stack, drain("idempotency-cleanup", service.forget_idempotency_keys, None, 3600.0),
                    "idempotency-cleanup")
        spawn(stack, drain("exports", exports.run_due, export_wake, settings.export_poll_seconds), "exports")
        spawn(stack, every("export-sweep", settings.export_sweep_seconds, exports.sweep), "export-sweep")
        spawn(stack, drain("contact-imports", lists.run_imports, import_wake, IMPORT_POLL_SECONDS), "contact-imports")
        rewrap = open_rewrap(settings, stack, envelope, rewrap_columns(pool))
        spawn(stack, every("rewrap", settings.rewrap_seconds, rewrap), "rewrap")
        stack.push_async_callback(_final_cleanup, service)
    except BaseException:
        await stack.aclose()
        raise
    return App(server, stack, grace=settings.shutdown_grace_seconds,
               extras={"service": service, "store": store, "pool": pool, "stream": stream, "envelope": envelope,
                       "mailer": mailer, "rewrap": rewrap, "exports": exports})


def _exports(settings: Settings, stack: contextlib.AsyncExitStack, pool: Any, store: PgMessageStore, envelope: Any,
             record: Any, wake: Callable[[], None]) -> Exports:
    """Account exports: the job's sources (this service's store, identity, keys, audit), a data key per export."""
    keys = secure_channel(settings.keys_addr, tls_of(settings), server_name="keys")
    stack.push_async_callback(keys.close)
    peers = open_export_peers(settings, stack) or UnconfiguredPeers()
    replies = Replies(store, envelope, IndexKeys(store, envelope))
    writer = ExportWriter(store, envelope, replies, peers, settings.export_page_size, PgExportIdentities(pool))
    return Exports(PgExportStore(pool), writer, KeysStubSource(keys_service_pb2_grpc.KeysServiceStub(keys)), record,
                   ExportOptions(download_seconds=settings.export_download_seconds,
                                 chunk_bytes=settings.export_chunk_bytes, page_size=settings.export_page_size),
                   wake=wake)


def _register(server: Any, service: MessagingService, pool: Any, record: Any, owners: AlertOwners | None,
              mailer: Mailer | None, exports: Exports, senders: Senders, lists: ContactLists,
              defaults: DefaultSenders) -> None:
    messaging_service_pb2_grpc.add_MessagingServiceServicer_to_server(MessagingServicer(service), server)
    contact_service_pb2_grpc.add_ContactServiceServicer_to_server(ContactServicer(lists), server)
    export_service_pb2_grpc.add_AccountExportServiceServicer_to_server(AccountExportServicer(exports), server)
    sender_service_pb2_grpc.add_SenderServiceServicer_to_server(SenderServicer(senders), server)
    default_sender_service_pb2_grpc.add_DefaultSenderServiceServicer_to_server(DefaultSenderServicer(defaults), server)
    alpha_tag_service_pb2_grpc.add_AlphaTagServiceServicer_to_server(
        AlphaTagServicer(AlphaTags(PgAlphaTagStore(pool), record)), server)
    notification_service_pb2_grpc.add_NotificationServiceServicer_to_server(
        NotificationServicer(Notifications(service, PgDestinationStore(pool), record, owners=owners, mailer=mailer,
                                           contacts=owners)), server)


async def _final_cleanup(service: MessagingService) -> None:
    with contextlib.suppress(Exception):
        await service.forget_published()


CARRIERS = ("simulator", "http", "smpp")  # the carrier names this build can construct (_named_carrier)


def _carrier(settings: Settings, pool: Any) -> Carrier:
    """MESSAGING_CARRIER alone (no routes, no fallback): that carrier, as before. Otherwise a RoutingCarrier
    over each carrier the routes and the fallback name, each built once; a bad table refuses start-up."""
    if not settings.carrier_routes.strip() and not settings.carrier_fallback.strip():
        if settings.carrier not in CARRIERS:
            raise ValueError(f"MESSAGING_CARRIER must be one of {', '.join(CARRIERS)}, got {settings.carrier!r}")
        return _named_carrier(settings.carrier, settings, pool)
    try:
        table = parse_routes(settings.carrier_routes or f"*={settings.carrier}", settings.carrier_fallback,
                             known=CARRIERS)
    except RouteTableError as exc:
        raise ValueError(f"MESSAGING_CARRIER_ROUTES / MESSAGING_CARRIER_FALLBACK refused: {exc}") from None
    return RoutingCarrier(table, {name: _named_carrier(name, settings, pool) for name in table.carriers})


def _named_carrier(name: str, settings: Settings, pool: Any) -> Carrier:
    if name == "http":
        return HttpCarrier(settings.carrier_url, settings.carrier_api_key, callback_url=settings.carrier_callback_url,
                           ca_file=settings.carrier_ca_file, timeout=settings.carrier_timeout_seconds)
    if name == "smpp":
        return _smpp_carrier(settings)
    if name != "simulator":
        raise ValueError(f"unknown carrier {name!r}; known: {', '.join(CARRIERS)}")
    return SimulatorCarrier(
        PgSimulatorStore(pool),
        latency_s=settings.sim_latency_ms / 1000,
        failure_rate=settings.sim_failure_rate,
        receipt_delay_s=settings.sim_receipt_delay_ms / 1000,
        seed=settings.sim_seed,
    )


def _smpp_carrier(settings: Settings) -> SmppCarrier:
    if not settings.smpp_host or not settings.smpp_system_id:
        raise ValueError("the smpp carrier needs MESSAGING_SMPP_HOST and MESSAGING_SMPP_SYSTEM_ID")
    return SmppCarrier(SessionConfig(
        host=settings.smpp_host, port=settings.smpp_port, system_id=settings.smpp_system_id,
        password=settings.smpp_password, system_type=settings.smpp_system_type, tls=settings.smpp_tls,
        ca_file=settings.smpp_ca_file, window=settings.smpp_window, throughput=settings.smpp_throughput,
        enquire_link_s=settings.smpp_enquire_link_seconds,
    ))


def _children(carrier: Carrier) -> list[Carrier]:
    """The carriers that hold connections: the one configured, or each one a router sends through."""
    return list(carrier.carriers.values()) if isinstance(carrier, RoutingCarrier) else [carrier]


async def build_worker(settings: Settings) -> App:
    """The dispatch worker: consumes the stream, submits to the carrier, applies receipts (and, on one
    machine, delivers webhooks)."""
    stack = contextlib.AsyncExitStack()
    try:
        pool, stream, envelope, record, _redis = await _common(settings, stack)
        carrier = _carrier(settings, pool)
        for child in _children(carrier):
            if isinstance(child, HttpCarrier):
                stack.push_async_callback(child.close)
        store = PgMessageStore(pool)
        delivery = DeliveryService(
            store, stream, envelope, carrier,
            max_attempts=settings.max_attempts,
            retry_base_seconds=settings.retry_base_ms / 1000,
            retry_cap_seconds=settings.retry_cap_ms / 1000,
            lease_seconds=settings.lease_seconds,
            record=record,
            senders=await _sender_index(settings, pool),
        )
        for child in _children(carrier):
            if isinstance(child, SmppCarrier):  # bind now (in the background), unbind last on shutdown
                child.attach(delivery.settle_carrier_receipts, delivery.receive_inbound)
                await child.start()  # a batch waits for the bind a few seconds, then CarrierDown
                stack.push_async_callback(child.close)
        worker = StreamWorker(
            stream, delivery,
            consumer=settings.consumer_name or default_consumer_name(),
            batch=settings.worker_batch,
            block_ms=settings.worker_block_ms,
            reclaim_idle_ms=settings.reclaim_idle_ms,
        )
        # A health endpoint only (no RPCs): probes see the worker, and mTLS is the same as the API's.
        server = await start_server(
            listen=settings.grpc_listen, tls=tls_of(settings), register=lambda s: None, service_names=[],
            health_listen=settings.health_listen,
        )
        stack.push_async_callback(server.stop, settings.shutdown_grace_seconds)
        receiver = None
        if settings.carrier_callback_listen:
            receiver = CallbackReceiver(delivery, settings.carrier_callback_secret.encode(),
                                        carrier="http" if isinstance(carrier, RoutingCarrier) else carrier.name)
            await receiver.start(settings.carrier_callback_listen, settings.carrier_callback_cert_file,
                                 settings.carrier_callback_key_file)
            stack.push_async_callback(receiver.stop)
        spawn(stack, pump_receipts(carrier, delivery), "receipts")
        webhooks = None
        if settings.notifier_in_worker:
            webhooks = _webhooks(settings, store, envelope)
            spawn(stack, drain("webhooks", webhooks.deliver_due, None, 0.5), "webhooks")
        task = spawn(stack, worker.run(), "dispatch")

        async def finish_batch() -> None:  # runs before the cancel above: let the batch in hand finish
            worker.stop()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), settings.shutdown_grace_seconds)

        stack.push_async_callback(finish_batch)
    except BaseException:
        await stack.aclose()
        raise
    return App(server, stack, grace=settings.shutdown_grace_seconds,
               extras={"worker": worker, "delivery": delivery, "carrier": carrier, "pool": pool,
                       "receiver": receiver, "webhooks": webhooks})


async def build_notifier(settings: Settings) -> App:
    """Customer webhooks only: in a cluster this runs apart from the worker, with egress to the internet
    on 443 and nothing else of the worker's (no carrier credentials, no stream)."""
    stack = contextlib.AsyncExitStack()
    try:
        pool, _stream, envelope, _record, _redis = await _common(settings, stack)
        webhooks = _webhooks(settings, PgMessageStore(pool), envelope)
        server = await start_server(
            listen=settings.grpc_listen, tls=tls_of(settings), register=lambda s: None, service_names=[],
            health_listen=settings.health_listen,
        )
        stack.push_async_callback(server.stop, settings.shutdown_grace_seconds)
        spawn(stack, drain("webhooks", webhooks.deliver_due, None, 0.5), "webhooks")
    except BaseException:
        await stack.aclose()
        raise
    return App(server, stack, grace=settings.shutdown_grace_seconds, extras={"webhooks": webhooks, "pool": pool})


def main(argv: list[str] | None = None) -> None:
    import uvloop

    args = sys.argv[1:] if argv is None else argv
    role = args[0] if args else "api"
    builders = {"api": build, "worker": build_worker, "notifier": build_notifier}
    if role not in builders:
        raise SystemExit(f"usage: python -m services.messaging [api|worker|notifier] (got {role!r})")
    settings = load(Settings)
    uvloop.run(serve(builders[role], settings))
