"""Composition root of the keys service."""

from __future__ import annotations

import contextlib
import importlib
import logging
import pkgutil
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, Metric

from sendsafe.keys.v1 import keys_service_pb2, keys_service_pb2_grpc
from sendsafe.options.v1 import options_pb2
from services.keys.adapters.last_used import RedisLastUsed
from services.keys.adapters.root_key import LocalRootKey
from services.keys.adapters.store import PgKeyStore
from services.keys.api import KeysServicer
from services.keys.config import Settings, load_settings
from services.keys.domain.api_keys import KeyRules
from services.keys.service.api_keys import ApiKeyService, sender_limit_context
from services.keys.service.key_rings import KeyRingService
from services.keys.service.key_usage import KeyUsage
from services.keys.service.own_rewrap import OwnRewrap, SealedColumn
from services.keys.service.ports import utcnow
from svckit import metrics
from svckit.app import App, serve
from svckit.audit import AuditClient, denial_recorder
from svckit.db import create_pool, migrate
from svckit.envelope_rewrap import pg_column
from svckit.keyevents import Publisher, Subscriber
from svckit.redisconn import make_redis
from svckit.rpc import secure_channel
from svckit.server import start_server
from svckit.tasks import every, spawn
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

        store = PgKeyStore(pool)
        notices_out = Publisher(redis, settings.redis_prefix)
        api_keys = ApiKeyService(
            store,
            RedisLastUsed(redis, settings.redis_prefix),
            root,
            audit,
            rules=KeyRules(
                declared_permissions=declared_permissions(),
                max_lifetime=timedelta(days=settings.api_key_max_lifetime_days),
                default_lifetime=timedelta(days=settings.api_key_default_lifetime_days),
            ),
            service_name=settings.service_name,
            notices=notices_out,
            now=now or utcnow,
        )
        # Keys' own sealed items (API keys' sender-limit numbers) count like any data owner's whenever
        # retirement is checked: retiring a version they are under would break those keys' verification.
        owners = [s.strip() for s in settings.rewrap_services.split(",") if s.strip()]
        owners += [settings.service_name] if owners else []
        usage = KeyUsage(store, owners, now=now or utcnow)
        rings = KeyRingService(
            store,
            root,
            audit,
            kek_cache_seconds=settings.kek_cache_seconds,
            kek_cache_entries=settings.kek_cache_entries,
            rotation_period=timedelta(days=settings.kek_rotation_days),
            min_pending_window=timedelta(seconds=settings.min_destruction_pending_seconds),
            service_name=settings.service_name,
            notices=notices_out,
            now=now or utcnow,
            usage=usage,
        )
        await rings.prepare()
        api_keys.use_sealer(rings)  # the numbers of keys' sender limits are sealed under the account's key

        # Other replicas' ring changes (rotation, retirement, destruction) clear this one's KEK cache.
        notices = Subscriber(redis, settings.redis_prefix, on_notice=rings.on_notice, on_resync=rings.forget_all)
        notices.start()
        stack.push_async_callback(notices.close)

        async def final_flush() -> None:
            try:
                await api_keys.flush_last_used()
            except Exception as exc:
                _LOG.warning("final API-key last-used write-back failed (%s)", type(exc).__name__)

        stack.push_async_callback(final_flush)  # runs after the two loops below are cancelled (last in, first out)
        spawn(stack, every("API-key last-used write-back", settings.last_used_flush_seconds, api_keys.flush_last_used),
              "keys-last-used-flush")
        spawn(stack, every("key maintenance", settings.maintenance_seconds, rings.run_maintenance), "keys-maintenance")
        own_rewrap = OwnRewrap(rings, usage, [SealedColumn(
            pg_column(pool, "api_keys", "send_sender_numbers_ct", ("key_id",)),
            lambda unique: sender_limit_context(unique[0]),
        )], service_name=settings.service_name, now=now or utcnow)
        spawn(stack, every("keys' own rewrap", settings.rewrap_seconds, own_rewrap.run_pass), "keys-rewrap")

        servicer = KeysServicer(api_keys, rings, usage)
        server = await start_server(
            listen=settings.grpc_listen,
            tls=tls,
            register=lambda s: keys_service_pb2_grpc.add_KeysServiceServicer_to_server(servicer, s),
            service_names=[keys_service_pb2.DESCRIPTOR.services_by_name["KeysService"].full_name],
            on_denied=denial_recorder(audit.record, settings.service_name),
            health_listen=settings.health_listen,
            step_up_max_age_seconds=settings.step_up_max_age_seconds,
        )
    except BaseException:
        await stack.aclose()
        raise
    app = App(
        server, stack, grace=settings.shutdown_grace_seconds,
        extras={"api_keys": api_keys, "rings": rings, "usage": usage, "pool": pool, "audit": audit,
                "notices": notices, "rewrap": own_rewrap.run_pass},
    )
    add_metrics(app, rings, usage)
    return app


def add_metrics(app: App, rings: KeyRingService, usage: KeyUsage) -> None:
    """Keys' own figures on its /metrics, read when scraped: the ring/KEK cache's lookups (its hit ratio)
    and the rewrap backlog per data owner (what must move before an old key version can be retired)."""

    async def kek_cache() -> list[Metric]:
        hits, misses = rings.cache_lookups()
        fam = CounterMetricFamily("sendsafe_cache_lookups", "Cache lookups by cache and result.",
                                          labels=["cache", "result"])
        fam.add_metric(["keys_kek", "hit"], hits)
        fam.add_metric(["keys_kek", "miss"], misses)
        return [fam]

    async def rewrap_backlog() -> list[Metric]:
        return [metrics.gauge("sendsafe_keys_rewrap_backlog_items", "Items a data owner's last rewrap pass "
                              "counted under an older key version than their account's current one.", n,
                              {"service": service})
                for service, n in sorted((await usage.backlog()).items())]

    app.metrics.add("keys kek cache", kek_cache)
    app.metrics.add("keys rewrap backlog", rewrap_backlog)


def main() -> None:
    import uvloop

    settings = load_settings()
    uvloop.run(serve(build, settings))
