"""Composition root of the keys service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from sendsafe.keys.v1 import keys_service_pb2, keys_service_pb2_grpc
from services.keys.api import KeysServicer
from services.keys.config import Settings, load_settings
from services.keys.domain import LocalRootKey
from services.keys.service import Service
from services.keys.store import PgKeyStore, RedisLastUsed
from svckit.app import App, serve
from svckit.audit import AuditClient, denial_recorder
from svckit.cache import make_redis
from svckit.db import create_pool, migrate
from svckit.keyevents import Publisher
from svckit.rpc import secure_channel
from svckit.server import start_server
from svckit.tls import TlsFiles

MIGRATIONS = Path(__file__).parent / "migrations"
_LOG = logging.getLogger(__name__)


async def _flush_periodically(service: Service, period: float) -> None:
    while True:
        await asyncio.sleep(period)
        try:
            await service.flush_last_used()
        except Exception as exc:
            _LOG.warning("API-key last-used write-back failed (%s); retrying next period", type(exc).__name__)


async def build(settings: Settings) -> App:
    stack = contextlib.AsyncExitStack()
    try:
        tls = TlsFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
        root = LocalRootKey({settings.root_key_id: settings.root_key_bytes()}, settings.root_key_id)

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
            kek_cache_seconds=settings.kek_cache_seconds,
            kek_cache_entries=settings.kek_cache_entries,
            service_name=settings.service_name,
            notices=Publisher(redis, settings.redis_prefix),
        )

        flusher = asyncio.create_task(
            _flush_periodically(service, settings.last_used_flush_seconds), name="keys-last-used-flush"
        )

        async def stop_flusher() -> None:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            try:
                await service.flush_last_used()
            except Exception as exc:
                _LOG.warning("final API-key last-used write-back failed (%s)", type(exc).__name__)

        stack.push_async_callback(stop_flusher)

        server = await start_server(
            listen=settings.grpc_listen,
            tls=tls,
            register=lambda s: keys_service_pb2_grpc.add_KeysServiceServicer_to_server(KeysServicer(service), s),
            service_names=[keys_service_pb2.DESCRIPTOR.services_by_name["KeysService"].full_name],
            on_denied=denial_recorder(audit.record, settings.service_name),
            health_listen=settings.health_listen,
        )
    except BaseException:
        await stack.aclose()
        raise
    return App(
        server, stack, grace=settings.shutdown_grace_seconds, extras={"service": service, "pool": pool, "audit": audit}
    )


def main() -> None:
    import uvloop

    settings = load_settings()
    uvloop.run(serve(build, settings))
