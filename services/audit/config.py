"""Audit service settings."""

from __future__ import annotations

from dataclasses import dataclass

from svckit.config import KitSettings, setting


@dataclass(frozen=True, kw_only=True)
class Settings(KitSettings):
    service_name: str = setting("SERVICE_NAME", default="audit")
    max_batch: int = setting("AUDIT_MAX_BATCH", default=5000)
