"""SIEM forwarding: a destination's spec and state, checked and normalized."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from services.audit.domain.errors import ForwardingInvalid
from services.audit.domain.siem import FORMAT_CEF, FORMAT_JSONL

FORWARD_WEBHOOK = 1


@dataclass(frozen=True)
class ForwardingSpec:
    enabled: bool
    kind: int
    url: str
    format: int
    backfill: bool = False


@dataclass(frozen=True)
class ForwardingState:
    account_id: int
    spec: ForwardingSpec
    delivered_sequence: int
    last_error: str = ""
    consecutive_failures: int = 0
    last_delivery_time: datetime | None = None


def normalize_forwarding(spec: ForwardingSpec) -> ForwardingSpec:
    if not spec.enabled:
        return replace(spec, kind=spec.kind or FORWARD_WEBHOOK, format=spec.format or FORMAT_JSONL)
    if spec.kind not in (0, FORWARD_WEBHOOK):
        raise ForwardingInvalid("kind must be FORWARDING_KIND_WEBHOOK")
    if spec.format not in (0, FORMAT_JSONL, FORMAT_CEF):
        raise ForwardingInvalid("format must be JSONL or CEF")
    return replace(spec, kind=FORWARD_WEBHOOK, format=spec.format or FORMAT_JSONL)
