"""Alert rules: their spec, validation and canonical form, the defaults every account starts with, and the
owner a rule records (who its SMS/email notifications are sent as)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from datetime import datetime

from services.audit.domain.errors import RuleInvalid, SendPermissionRequired
from services.audit.domain.events import OUTCOME_DENIED, OUTCOME_FAILURE, OUTCOME_SUCCESS

MAX_RULES_PER_ACCOUNT = 100
MAX_WINDOW_SECONDS = 7 * 24 * 3600
MAX_LIST = 20
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_EMAIL = re.compile(r"[^@\s]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,63}")
_DETAIL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ACTOR_TYPES = frozenset({"user", "staff", "service", "anonymous"})
# The log's own bookkeeping never triggers alerts (an alert about an alert would loop).
UNALERTABLE_PREFIX = "audit.alert."


@dataclass(frozen=True)
class RuleSpec:
    name: str
    disabled: bool = False
    actions: tuple[str, ...] = ()
    outcomes: tuple[int, ...] = ()
    actor_ids: tuple[str, ...] = ()
    actor_types: tuple[str, ...] = ()
    client_networks: tuple[str, ...] = ()
    exclude_client_networks: tuple[str, ...] = ()
    threshold: int = 1
    window_seconds: int = 0
    cooldown_seconds: int = 0
    sum_detail: str = ""
    webhook_url: str = ""
    sms_to: str = ""
    email_to: str = ""
    # Who last set the rule (never from the request): SMS/email notifications are sends by this user,
    # through this API key (empty: a session) and within its send limits.
    owner_user_id: int = 0
    owner_api_username: str = ""
    owner_api_key_id: str = ""
    owner_per_minute: int = 0
    owner_per_day: int = 0
    owner_countries: tuple[str, ...] = ()

    @property
    def is_threshold(self) -> bool:
        return self.threshold > 1

    def targets(self) -> list[tuple[str, str]]:
        out = []
        if self.webhook_url:
            out.append(("webhook", self.webhook_url))
        if self.sms_to:
            out.append(("sms", self.sms_to))
        if self.email_to:
            out.append(("email", self.email_to))
        return out


@dataclass(frozen=True)
class Rule:
    rule_id: int
    account_id: int
    spec: RuleSpec
    is_default: bool = False
    last_fire_time: datetime | None = None
    create_time: datetime | None = None
    update_time: datetime | None = None


def normalize_rule(spec: RuleSpec) -> RuleSpec:
    """Validate a rule from a customer and return it in canonical form."""
    name = spec.name.strip()
    if not 1 <= len(name) <= 100:
        raise RuleInvalid("name must be 1-100 characters")
    lists = {
        "actions": spec.actions, "actor_ids": spec.actor_ids, "actor_types": spec.actor_types,
        "client_networks": spec.client_networks, "exclude_client_networks": spec.exclude_client_networks,
    }
    for label, values in lists.items():
        if len(values) > MAX_LIST or any(not v or len(v) > 128 for v in values):
            raise RuleInvalid(f"{label}: at most {MAX_LIST} entries of 1-128 characters")
    if any(t not in ACTOR_TYPES for t in spec.actor_types):
        raise RuleInvalid(f"actor_types are among {sorted(ACTOR_TYPES)}")
    if any(o not in (OUTCOME_SUCCESS, OUTCOME_FAILURE, OUTCOME_DENIED) for o in spec.outcomes):
        raise RuleInvalid("unknown outcome")
    networks = []
    for values in (spec.client_networks, spec.exclude_client_networks):
        try:
            networks.append(tuple(str(ipaddress.ip_network(v, strict=False)) for v in values))
        except ValueError:
            raise RuleInvalid("client networks must be IP addresses or CIDR networks") from None
    if not 0 <= spec.threshold <= 1_000_000:
        raise RuleInvalid("threshold must be 0-1000000")
    threshold = max(spec.threshold, 1)
    if threshold > 1 and not 1 <= spec.window_seconds <= MAX_WINDOW_SECONDS:
        raise RuleInvalid(f"a threshold rule needs window_seconds between 1 and {MAX_WINDOW_SECONDS}")
    if not 0 <= spec.cooldown_seconds <= MAX_WINDOW_SECONDS:
        raise RuleInvalid(f"cooldown_seconds must be 0-{MAX_WINDOW_SECONDS}")
    if spec.sum_detail and (threshold <= 1 or not _DETAIL_NAME.fullmatch(spec.sum_detail)):
        raise RuleInvalid("sum_detail names an integer detail and needs a threshold above 1")
    if spec.sms_to and not _E164.fullmatch(spec.sms_to):
        raise RuleInvalid("sms_to must be an E.164 number such as +61411111111")
    if spec.email_to and not _EMAIL.fullmatch(spec.email_to):
        raise RuleInvalid("email_to must be an email address")
    return replace(
        spec, name=name, threshold=threshold, window_seconds=spec.window_seconds if threshold > 1 else 0,
        outcomes=tuple(sorted(set(spec.outcomes))), client_networks=networks[0], exclude_client_networks=networks[1],
    )


def default_rules() -> list[RuleSpec]:
    """What every account starts with (it may change or delete them). Without targets they fill the alert
    history; adding a webhook, number or address to one makes it notify."""
    return [
        RuleSpec(
            name="Repeated failed sign-ins",
            actions=("gateway.unauthenticated", "identity.login*", "identity.auth.*"),
            outcomes=(OUTCOME_FAILURE, OUTCOME_DENIED), threshold=6, window_seconds=600, cooldown_seconds=600,
        ),
        RuleSpec(name="New API key", actions=("keys.api_key.issued",), outcomes=(OUTCOME_SUCCESS,)),
        RuleSpec(name="Staff access to the account", actor_types=("staff",)),
        RuleSpec(
            name="More than 1000 messages in an hour", actions=("messaging.sms.sent",), sum_detail="sent",
            threshold=1001, window_seconds=3600, cooldown_seconds=3600,
        ),
    ]


@dataclass(frozen=True)
class RuleOwner:
    """The principal that creates or changes a rule (from the call's principal)."""

    user_id: int
    api_username: str = ""
    api_key_id: str = ""
    per_minute: int = 0
    per_day: int = 0
    countries: tuple[str, ...] = ()
    may_send: bool = False  # holds sms.send (within its key's scopes)


def owned_spec(spec: RuleSpec, owner: RuleOwner) -> RuleSpec:
    """`spec` as set by `owner`. A rule that notifies by SMS or email sends messages as its owner, so its
    owner must hold sms.send."""
    if (spec.sms_to or spec.email_to) and not owner.may_send:
        raise SendPermissionRequired(
            "an alert rule that notifies by SMS or email sends messages as you: it needs the sms.send permission"
            " (an API key scoped to it)")
    return replace(spec, owner_user_id=owner.user_id, owner_api_username=owner.api_username,
                   owner_api_key_id=owner.api_key_id, owner_per_minute=owner.per_minute,
                   owner_per_day=owner.per_day, owner_countries=tuple(owner.countries))
