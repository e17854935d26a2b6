"""Audit service settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from svckit.config import KitSettings, setting


@dataclass(frozen=True, kw_only=True)
class Settings(KitSettings):
    service_name: str = setting("SERVICE_NAME", default="audit")
    max_batch: int = setting("AUDIT_MAX_BATCH", default=5000)
    trace_url_template: str = setting(
        "AUDIT_TRACE_URL_TEMPLATE", default="",
        doc="trace UI link for an event's trace_id, with {trace_id} (e.g. https://tempo.example/trace/{trace_id});"
            " empty = no link")
    db_pool_size: int = setting("AUDIT_DB_POOL_SIZE", default=10, doc="most database connections per process")
    db_role: str = setting("AUDIT_DB_ROLE", default="sendsafe_audit_writer",
                           doc="role every connection switches to (INSERT/SELECT on the evidence); empty: none")
    log_origin: str = setting("AUDIT_LOG_ORIGIN", default="sendsafe.local/audit",
                              doc="the log's name in checkpoints and the signing key's name")
    signing_key: str = setting("AUDIT_SIGNING_KEY", default="", secret=True,
                               doc="Ed25519 seed (32 bytes, hex or base64); empty: an ephemeral key")
    trusted_keys: tuple[str, ...] = setting("AUDIT_TRUSTED_KEYS", default=(),
                                            doc="verifier keys of earlier signing keys, comma-separated")
    webhook_key: str = setting("AUDIT_WEBHOOK_KEY", default="", secret=True,
                               doc="root of the per-account webhook secrets (32 bytes); empty: ephemeral")
    checkpoint_interval_seconds: float = setting("AUDIT_CHECKPOINT_INTERVAL_SECONDS", default=60.0)
    checkpoint_min_interval_seconds: float = setting("AUDIT_CHECKPOINT_MIN_INTERVAL_SECONDS", default=1.0)
    verify_interval_seconds: float = setting("AUDIT_VERIFY_INTERVAL_SECONDS", default=3600.0)
    poll_seconds: float = setting("AUDIT_POLL_SECONDS", default=1.0)
    messaging_addr: str = setting("MESSAGING_ADDR", default="", doc="messaging, for alert SMS")
    alert_messages_per_hour: int = setting(
        "AUDIT_ALERT_MESSAGES_PER_HOUR", default=20,
        doc="most alert SMS/emails per account and hour from the first one (then held back)")
    webhook_allow_private: bool = setting(
        "AUDIT_WEBHOOK_ALLOW_PRIVATE", default=False,
        doc="TESTS ONLY: allow webhook URLs on loopback/private addresses and any port")
    webhook_ca_file: Path | None = setting("AUDIT_WEBHOOK_CA_FILE", default=None,
                                           doc="extra CA bundle webhook servers may chain to")
    webhook_timeout_seconds: float = setting("AUDIT_WEBHOOK_TIMEOUT_SECONDS", default=5.0)
    retry_base_seconds: float = setting("AUDIT_RETRY_BASE_SECONDS", default=5.0,
                                        doc="first retry delay of notifications and forwarding (doubling)")
