"""Composition root of the keys service."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import pkgutil
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path

from sendsafe.keys.v1 import keys_service_pb2, keys_service_pb2_grpc
from sendsafe.options.v1 import options_pb2
from services.keys.api import KeysServicer
from services.keys.config import Settings, load_settings
from services.keys.domain.api_keys import KeyRules
from services.keys.domain.root_key import LocalRootKey
from services.keys.service import Service, utcnow
from services.keys.store import PgKeyStore, RedisLastUsed
from svckit.app import App, serve
from svckit.audit import AuditClient, denial_recorder
from svckit.cache import make_redis
from svckit.db import create_pool, migrate
from svckit.keyevents import Publisher, Subscriber
from svckit.rpc import secure_channel
from svckit.server import start_server
from svckit.tls import TlsFiles

MIGRATIONS = Path(__file__).parent / "migrations"
_LOG = logging.getLogger(__name__)


def declared_permissions() -> frozenset[str]:
    """Every permission an RPC of any SendSafe service declares: the names API-key scopes may use."""
    import sendsafe

    found: set[str] = set()
    for info in pkgutil.walk_packages(sendsafe.__path__, "sendsafe."):
        if not info.name.endswith("_service_pb2"):
            continue
        for service in importlib.import_module(info.name).DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                opts = method.GetOptions()
                if opts.HasExtension(options_pb2.access) and opts.Extensions[options_pb2.access].permission:
                    found.add(opts.Extensions[options_pb2.access].permission)
    return frozenset(found)


async def _every(period: float, what: str, job: Callable[[], Awaitable[object]]) -> None:
    while True:
        await asyncio.sleep(period)
        try:
            await job()
        except Exception as exc:
            _LOG.warning("%s failed (%s); retrying next period", what, type(exc).__name__)


async def build(settings: Settings, *, now: Callable[[], datetime] | None = None) -> App:
    """Wire and start the service. `now` replaces the clock (tests: expiry and destruction to the second)."""
    stack = contextlib.AsyncExitStack()
    try:
        tls = TlsFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
        root = LocalRootKey(settings.root_keys(), settings.root_key_id)

        pool = await create_pool(settings.database_url)
        stack.push_async_callback(pool.close)
        await migrate(pool, MIGRATIONS)

        redis = make_redis(settings.redis_url)
        stack.push_async_callback(redis.aclose)

        audit_channel = secure_channel(settings.audit_addr, tls, server_name="audit")
        stack.push_async_callback(audit_channel.close)
        audit = AuditClient(audit_channel)
        audit.start()
        stack.push_async_callback(audit.close)

        service = Service(
            PgKeyStore(pool),
            RedisLastUsed(redis, settings.redis_prefix),
            root,
            audit,
            rules=KeyRules(
                declared_permissions=declared_permissions(),
                max_lifetime=timedelta(days=settings.api_key_max_lifetime_days),
                default_lifetime=timedelta(days=settings.api_key_default_lifetime_days),
            ),
            kek_cache_seconds=settings.kek_cache_seconds,
            kek_cache_entries=settings.kek_cache_entries,
            rotation_period=timedelta(days=settings.kek_rotation_days),
            min_pending_window=timedelta(seconds=settings.min_destruction_pending_seconds),
            service_name=settings.service_name,
            notices=Publisher(redis, settings.redis_prefix),
            now=now or utcnow,
        )
        await service.prepare()

        # Other replicas' ring changes (rotation, retirement, destruction) clear this one's KEK cache.
        notices = Subscriber(redis, settings.redis_prefix, on_notice=service.on_notice, on_resync=service.forget_all)
        notices.start()
        stack.push_async_callback(notices.close)

        flusher = asyncio.create_task(
            _every(settings.last_used_flush_seconds, "API-key last-used write-back", service.flush_last_used),
            name="keys-last-used-flush",
        )
        maintenance = asyncio.create_task(
            _every(settings.maintenance_seconds, "key maintenance", service.run_maintenance), name="keys-maintenance"
        )

        async def stop_jobs() -> None:
            for task in (flusher, maintenance):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            try:
                await service.flush_last_used()
            except Exception as exc:
                _LOG.warning("final API-key last-used write-back failed (%s)", type(exc).__name__)

        stack.push_async_callback(stop_jobs)

        server = await start_server(
            listen=settings.grpc_listen,
            tls=tls,
            register=lambda s: keys_service_pb2_grpc.add_KeysServiceServicer_to_server(KeysServicer(service), s),
            service_names=[keys_service_pb2.DESCRIPTOR.services_by_name["KeysService"].full_name],
            on_denied=denial_recorder(audit.record, settings.service_name),
            health_listen=settings.health_listen,
            step_up_max_age_seconds=settings.step_up_max_age_seconds,
        )
    except BaseException:
        await stack.aclose()
        raise
    return App(
        server, stack, grace=settings.shutdown_grace_seconds,
        extras={"service": service, "pool": pool, "audit": audit, "notices": notices},
    )


def main() -> None:
    import uvloop

    settings = load_settings()
    uvloop.run(serve(build, settings))
