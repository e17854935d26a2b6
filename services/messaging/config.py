"""Messaging service settings (API server and dispatch worker share them)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from decimal import Decimal

from svckit.config import KitSettings, setting
from svckit.tls import TlsFiles


@dataclass(frozen=True, kw_only=True)
class Settings(KitSettings):
    service_name: str = setting("SERVICE_NAME", default="messaging")
    keys_addr: str = setting("KEYS_ADDR", doc="host:port of the keys service (data keys for bodies at rest)")
    data_key_ttl_seconds: float = setting("MESSAGING_DATA_KEY_TTL_SECONDS", default=300.0)
    identity_addr: str = setting(
        "IDENTITY_ADDR", default="",
        doc="host:port of identity: alert SMS re-check their owner there (unset: alert SMS are refused)")

    sender_index_key: str = setting(
        "MESSAGING_SENDER_INDEX_KEY", default="", secret=True,
        doc="platform key (32 bytes, hex or base64) of the keyed hashes that find a sender number's account across"
            " accounts; never change it once numbers are held. Empty: a key kept in the database (development only)")
    db_pool_size: int = setting("MESSAGING_DB_POOL_SIZE", default=20, doc="PostgreSQL connections per process (max)")

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
    reclaim_idle_ms: int = setting(
        "MESSAGING_RECLAIM_IDLE_MS", default=30_000,
        doc="a dead worker's stream entries are taken over after this idle time; also the claim lease")
    redeliver_seconds: float = setting(
        "MESSAGING_REDELIVER_SECONDS", default=300.0,
        doc="a published message nobody claimed within this time is published again (the stream entry was"
            " lost), then after 2x, 4x ... 32x that")
    max_attempts: int = setting("MESSAGING_MAX_ATTEMPTS", default=5)
    retry_base_ms: int = setting("MESSAGING_RETRY_BASE_MS", default=1000)
    retry_cap_ms: int = setting("MESSAGING_RETRY_CAP_MS", default=60_000)
    consumer_name: str = setting("MESSAGING_CONSUMER_NAME", default="", doc="default <hostname>-<pid>")

    # Rate limits (0 = off) and the velocity limit per destination prefix against SMS pumping.
    account_rate: float = setting("MESSAGING_ACCOUNT_RATE", default=200.0, doc="messages/s per account (token bucket)")
    account_burst: int = setting("MESSAGING_ACCOUNT_BURST", default=5000, doc="bucket size per account (>= 1000)")
    key_rate: float = setting("MESSAGING_KEY_RATE", default=100.0, doc="messages/s per API key (token bucket)")
    key_burst: int = setting("MESSAGING_KEY_BURST", default=2000, doc="bucket size per API key (>= 1000)")
    prefix_limit: int = setting("MESSAGING_PREFIX_LIMIT", default=300,
                                doc="messages per window to one destination prefix per account (THROTTLED above)")
    prefix_window_seconds: int = setting("MESSAGING_PREFIX_WINDOW_SECONDS", default=60)
    prefix_digits: int = setting("MESSAGING_PREFIX_DIGITS", default=4,
                                 doc="national digits after the country code that form a destination prefix")

    # Privacy and webhooks.
    retention_interval_seconds: float = setting("MESSAGING_RETENTION_INTERVAL_SECONDS", default=300.0,
                                                doc="how often bodies past their account's retention are redacted")
    rewrap_seconds: float = setting(
        "MESSAGING_REWRAP_SECONDS", default=600.0,
        doc="period of the pass that moves stored bodies, numbers and secrets to their account's newest key"
            " version (and reports what is left to keys, which retires a version only when nothing is)")
    # Account exports (issue 15): written by a job in the API process, sealed in PostgreSQL, downloaded once.
    export_download_seconds: float = setting(
        "MESSAGING_EXPORT_DOWNLOAD_SECONDS", default=86_400.0,
        doc="how long a finished export can be downloaded (once) before the sweep deletes it")
    export_chunk_bytes: int = setting("MESSAGING_EXPORT_CHUNK_BYTES", default=262_144,
                                      doc="JSON Lines bytes per sealed chunk of an export")
    export_page_size: int = setting("MESSAGING_EXPORT_PAGE_SIZE", default=500,
                                    doc="rows per keyset page the export job reads")
    export_poll_seconds: float = setting("MESSAGING_EXPORT_POLL_SECONDS", default=2.0,
                                         doc="how often an idle export job looks for a requested export")
    export_sweep_seconds: float = setting("MESSAGING_EXPORT_SWEEP_SECONDS", default=60.0,
                                          doc="period of the sweep that deletes expired exports")
    webhook_allow_private: bool = setting(
        "MESSAGING_WEBHOOK_ALLOW_PRIVATE", default=False,
        doc="TESTS ONLY: allow webhook URLs on loopback/private addresses and any port")
    webhook_ca_file: str = setting("MESSAGING_WEBHOOK_CA_FILE", default="",
                                   doc="extra CA bundle for webhook TLS (default: the system's)")
    webhook_timeout_seconds: float = setting("MESSAGING_WEBHOOK_TIMEOUT_SECONDS", default=10.0)
    webhook_max_attempts: int = setting("MESSAGING_WEBHOOK_MAX_ATTEMPTS", default=8)
    webhook_backoff_ms: int = setting("MESSAGING_WEBHOOK_BACKOFF_MS", default=5000,
                                      doc="first retry delay; doubles per attempt up to an hour")
    notifier_in_worker: bool = setting(
        "MESSAGING_NOTIFIER_IN_WORKER", default=True,
        doc="the dispatch worker also delivers webhooks (one machine); false when a notifier runs separately")

    # Carrier: the built-in simulator, or a generic HTTP/JSON carrier with signed receipt callbacks.
    carrier: str = setting("MESSAGING_CARRIER", default="simulator", doc="simulator | http | smpp")
    carrier_routes: str = setting(
        "MESSAGING_CARRIER_ROUTES", default="",
        doc="carrier per destination, e.g. 'AU,NZ=smpp;1=http;*=simulator' (ISO countries or E.164 digit"
            " prefixes, most specific wins, '*' required); empty: everything through MESSAGING_CARRIER")
    carrier_fallback: str = setting(
        "MESSAGING_CARRIER_FALLBACK", default="",
        doc="carrier that takes a routed carrier's batch when that carrier is down (took none of it)")
    carrier_url: str = setting("MESSAGING_CARRIER_URL", default="", doc="HTTP carrier API base URL (https)")
    carrier_api_key: str = setting("MESSAGING_CARRIER_API_KEY", default="", secret=True)
    carrier_callback_secret: str = setting("MESSAGING_CARRIER_CALLBACK_SECRET", default="", secret=True,
                                           doc="HMAC key the carrier signs receipt callbacks with")
    carrier_ca_file: str = setting("MESSAGING_CARRIER_CA_FILE", default="")
    carrier_timeout_seconds: float = setting("MESSAGING_CARRIER_TIMEOUT_SECONDS", default=10.0)
    carrier_callback_listen: str = setting("MESSAGING_CARRIER_CALLBACK_LISTEN", default="",
                                           doc="host:port of the HTTPS receipt receiver (http carrier)")
    carrier_callback_url: str = setting("MESSAGING_CARRIER_CALLBACK_URL", default="",
                                        doc="public URL of that receiver, sent to the carrier")
    carrier_callback_cert_file: str = setting("MESSAGING_CARRIER_CALLBACK_CERT_FILE", default="")
    carrier_callback_key_file: str = setting("MESSAGING_CARRIER_CALLBACK_KEY_FILE", default="")

    # SMPP 3.4 carrier (MESSAGING_CARRIER=smpp or a route naming smpp): one transceiver bind per worker.
    smpp_host: str = setting("MESSAGING_SMPP_HOST", default="", doc="SMSC host")
    smpp_port: int = setting("MESSAGING_SMPP_PORT", default=2775)
    smpp_system_id: str = setting("MESSAGING_SMPP_SYSTEM_ID", default="")
    smpp_password: str = setting("MESSAGING_SMPP_PASSWORD", default="", secret=True)
    smpp_system_type: str = setting("MESSAGING_SMPP_SYSTEM_TYPE", default="")
    smpp_tls: bool = setting("MESSAGING_SMPP_TLS", default=False, doc="TLS to the SMSC, certificate verified")
    smpp_ca_file: str = setting("MESSAGING_SMPP_CA_FILE", default="", doc="CA bundle for the SMSC (default: system)")
    smpp_window: int = setting("MESSAGING_SMPP_WINDOW", default=10, doc="unanswered PDUs in flight per bind")
    smpp_throughput: float = setting("MESSAGING_SMPP_THROUGHPUT", default=0.0, doc="submit_sm/s per bind, 0 = no cap")
    smpp_enquire_link_seconds: float = setting("MESSAGING_SMPP_ENQUIRE_LINK_SECONDS", default=30.0,
                                               doc="keep-alive period when idle; no answer = dead link")

    # Email (SMTP): alert and security notifications, destination verification codes. Unset host: no email.
    smtp_host: str = setting("MESSAGING_SMTP_HOST", default="",
                             doc="mail server (relay) host; unset: email answers CHANNEL_NOT_AVAILABLE")
    smtp_port: int = setting("MESSAGING_SMTP_PORT", default=587, doc="587 for starttls, 465 for implicit")
    smtp_tls: str = setting("MESSAGING_SMTP_TLS", default="starttls",
                            doc="starttls | implicit | none (none: only to a relay on loopback)")
    smtp_ca_file: str = setting("MESSAGING_SMTP_CA_FILE", default="",
                                doc="CA bundle for the mail server's certificate (default: the system's)")
    smtp_username: str = setting("MESSAGING_SMTP_USERNAME", default="", doc="AUTH user (unset: no AUTH)")
    smtp_password: str = setting("MESSAGING_SMTP_PASSWORD", default="", secret=True)
    smtp_from: str = setting("MESSAGING_SMTP_FROM", default="", doc="sender address, e.g. alerts@example.com")
    smtp_timeout_seconds: float = setting("MESSAGING_SMTP_TIMEOUT_SECONDS", default=4.0,
                                          doc="per SMTP step; below audit's 5 s deadline for a notification")
    dkim_selector: str = setting("MESSAGING_DKIM_SELECTOR", default="", doc="DKIM selector (unset: no DKIM)")
    dkim_domain: str = setting("MESSAGING_DKIM_DOMAIN", default="", doc="DKIM signing domain (d=)")
    dkim_key_file: str = setting("MESSAGING_DKIM_KEY_FILE", default="", doc="PEM RSA private key for DKIM")

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
    def lease_seconds(self) -> float:
        return self.reclaim_idle_ms / 1000

    @property
    def limits_prefix(self) -> str:
        return f"{self.redis_prefix}sms:limit:"

    @property
    def dispatch_stream(self) -> str:
        return f"{self.redis_prefix}sms:dispatch"

    @property
    def dead_stream(self) -> str:
        return f"{self.redis_prefix}sms:dead"

    @property
    def sender_index_key_bytes(self) -> bytes | None:
        """MESSAGING_SENDER_INDEX_KEY as 32 bytes; None when it is not set."""
        text = self.sender_index_key.strip()
        if not text:
            return None
        try:
            raw = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
        except (ValueError, binascii.Error):
            raw = b""
        if len(raw) != 32:
            raise ValueError("MESSAGING_SENDER_INDEX_KEY must be 32 bytes, hex or base64")
        return raw


def tls_of(settings: Settings) -> TlsFiles:
    return TlsFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
