"""Fired alerts and their deliveries: delivery states, the fixed SMS/email text, masking for display,
whether a pending SMS/email may still go out, and the hourly message cap."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from services.audit.domain.rules import RuleSpec

PENDING, DELIVERED, FAILED = 1, 2, 3


@dataclass(frozen=True)
class Delivery:
    channel: str
    target: str
    status: int
    attempts: int
    last_error: str
    update_time: datetime | None


@dataclass(frozen=True)
class Alert:
    alert_id: int
    rule_id: int
    rule_name: str
    fire_time: datetime
    event_id: str
    event_sequence: int
    action: str
    match_count: int
    window_seconds: int
    deliveries: list[Delivery]


@dataclass(frozen=True)
class DeliveryJob:
    delivery_id: int
    account_id: int
    channel: str
    target: str
    attempts: int
    alert: Alert
    rule: RuleSpec | None = None  # the rule as it is now (None: deleted since it fired)


MAX_DELIVERY_ATTEMPTS = 8


def mask_target(channel: str, target: str) -> str:
    if channel == "sms":
        return target[:4] + "*" * max(len(target) - 7, 0) + target[-3:] if len(target) > 7 else "***"
    if channel == "email":
        user, _, domain = target.partition("@")
        return f"{user[:1]}***@{domain}"
    parts = urlsplit(target)
    return f"{parts.scheme}://{parts.hostname}/…" if parts.path not in ("", "/") else f"{parts.scheme}://{parts.hostname}/"


ALERT_SUBJECT = "SendSafe alert"
_ACTION_TEXT = re.compile(r"[^A-Za-z0-9._-]")


def alert_text(rule_id: int, count: int, action: str, fire_time: datetime) -> str:
    """The SMS/email text, a fixed template: the rule's id, never its name (customer-written text is not
    sent to third parties under SendSafe's name), and the platform's action name, nothing else."""
    act = _ACTION_TEXT.sub("", action)[:64] or "unknown"
    when = fire_time.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
    return f"SendSafe alert: rule {rule_id} matched {count} event(s) ({act}) at {when} UTC."


def undeliverable(rule: RuleSpec | None, channel: str, target: str) -> str:
    """Why a pending SMS/email alert may no longer go out ("" if it may): its rule was deleted, or no longer
    names that destination (it goes out as the rule's current owner, who set other targets)."""
    if rule is None:
        return "ALERT_RULE_DELETED"
    if {"sms": rule.sms_to, "email": rule.email_to}.get(channel) != target:
        return "ALERT_TARGET_CHANGED"
    return ""


def alert_cap_hit(sent_this_hour: int, cap: int) -> tuple[bool, bool]:
    """(suppressed, first suppression of the window) for the `sent_this_hour`-th alert message."""
    return sent_this_hour > cap, sent_this_hour == cap + 1
