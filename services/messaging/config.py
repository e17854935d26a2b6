"""Messaging service settings (API server and dispatch worker share them)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from svckit.config import KitSettings, setting


@dataclass(frozen=True, kw_only=True)
class Settings(KitSettings):
    service_name: str = setting("SERVICE_NAME", default="messaging")
    keys_addr: str = setting("KEYS_ADDR", doc="host:port of the keys service (data keys for bodies at rest)")
    data_key_ttl_seconds: float = setting("MESSAGING_DATA_KEY_TTL_SECONDS", default=300.0)

    # Credit and prices.
    trial_credit: str = setting("MESSAGING_TRIAL_CREDIT", default="10.000000",
                                doc="credit a new account starts with (decimal)")
    price_per_part: str = setting("MESSAGING_PRICE_PER_PART", default="0.0770",
                                  doc="default price of one SMS part (decimal)")
    price_table: str = setting("MESSAGING_PRICE_TABLE", default="",
                               doc="per-country prices per part, e.g. 'AU=0.0770,US=0.0500'")
    currency: str = setting("MESSAGING_CURRENCY", default="AUD")

    # Outbox relay (API process).
    relay_interval_seconds: float = setting("MESSAGING_RELAY_INTERVAL_SECONDS", default=1.0)
    outbox_grace_seconds: float = setting("MESSAGING_OUTBOX_GRACE_SECONDS", default=5.0,
                                          doc="age after which the relay republishes an unpublished message")
    relay_batch: int = setting("MESSAGING_RELAY_BATCH", default=500)

    # Dispatch worker.
    worker_batch: int = setting("MESSAGING_WORKER_BATCH", default=500)
    worker_block_ms: int = setting("MESSAGING_WORKER_BLOCK_MS", default=1000)
    reclaim_idle_ms: int = setting("MESSAGING_RECLAIM_IDLE_MS", default=30_000,
                                   doc="stream entries idle this long are taken over from their (dead) consumer")
    max_attempts: int = setting("MESSAGING_MAX_ATTEMPTS", default=5)
    retry_base_ms: int = setting("MESSAGING_RETRY_BASE_MS", default=1000)
    retry_cap_ms: int = setting("MESSAGING_RETRY_CAP_MS", default=60_000)
    consumer_name: str = setting("MESSAGING_CONSUMER_NAME", default="", doc="default <hostname>-<pid>")

    # Carrier simulator.
    sim_latency_ms: int = setting("MESSAGING_SIM_LATENCY_MS", default=0)
    sim_failure_rate: float = setting("MESSAGING_SIM_FAILURE_RATE", default=0.0)
    sim_receipt_delay_ms: int = setting("MESSAGING_SIM_RECEIPT_DELAY_MS", default=200)
    sim_seed: int = setting("MESSAGING_SIM_SEED", default=0)

    @property
    def trial_credit_amount(self) -> Decimal:
        return Decimal(self.trial_credit)

    @property
    def price_per_part_amount(self) -> Decimal:
        return Decimal(self.price_per_part)

    @property
    def dispatch_stream(self) -> str:
        return f"{self.redis_prefix}sms:dispatch"

    @property
    def dead_stream(self) -> str:
        return f"{self.redis_prefix}sms:dead"
