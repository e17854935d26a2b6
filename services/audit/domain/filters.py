"""Event filters: what a list or a staff search asks for, checked and normalized."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime

from services.audit.domain.errors import FilterInvalid
from services.audit.domain.events import OUTCOME_DENIED, OUTCOME_FAILURE, OUTCOME_SUCCESS
from services.audit.domain.paging import DEFAULT_PAGE_SIZE, page_size_of, parse_page_token


@dataclass(frozen=True)
class EventFilter:
    account_id: int | None  # None: every account (staff search)
    start_time: datetime | None = None
    end_time: datetime | None = None
    action: str = ""
    action_prefix: bool = False
    actor_id: str = ""
    actor_type: str = ""
    outcome: int = 0
    client_network: str = ""
    trace_id: str = ""
    resource_type: str = ""
    resource_id: str = ""
    request_id: str = ""
    after_sequence: int = 0
    limit: int = DEFAULT_PAGE_SIZE


def build_filter(
    account_id: int | None,
    *,
    start_time: datetime | None,
    end_time: datetime | None,
    action: str,
    actor_id: str,
    actor_type: str,
    outcome: int,
    client_address: str,
    trace_id: str,
    resource_type: str,
    resource_id: str,
    request_id: str,
    page_size: int,
    page_token: str,
) -> EventFilter:
    prefix = action.endswith("*")
    if prefix:
        action = action[:-1]
        if "*" in action:
            raise FilterInvalid("action takes one '*', at its end")
    network = ""
    if client_address:
        try:
            network = str(ipaddress.ip_network(client_address, strict=False))
        except ValueError:
            raise FilterInvalid("client_address must be an IP address or a CIDR network") from None
    if outcome not in (0, OUTCOME_SUCCESS, OUTCOME_FAILURE, OUTCOME_DENIED):
        raise FilterInvalid("unknown outcome")
    if start_time and end_time and end_time <= start_time:
        raise FilterInvalid("end_time must be after start_time")
    for name, value in (("actor_id", actor_id), ("trace_id", trace_id), ("resource_id", resource_id),
                        ("request_id", request_id), ("action", action)):
        if len(value) > 256:
            raise FilterInvalid(f"{name} is too long")
    return EventFilter(
        account_id=account_id, start_time=start_time, end_time=end_time, action=action, action_prefix=prefix,
        actor_id=actor_id, actor_type=actor_type, outcome=outcome, client_network=network, trace_id=trace_id,
        resource_type=resource_type, resource_id=resource_id, request_id=request_id,
        after_sequence=parse_page_token(page_token), limit=page_size_of(page_size),
    )
