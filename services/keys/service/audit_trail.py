"""How the keys use cases write evidence: privileged changes store their audit event before they commit
(fail closed), and a failure after that is recorded as a superseding failure event."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from sendsafe.audit.v1 import event_pb2
from services.keys.service.ports import Audit
from svckit.audit import new_event

T = TypeVar("T")


async def strict(
    audit: Audit, service_name: str, event: event_pb2.Event,
    action: Callable[[Callable[[], Awaitable[None]]], Awaitable[T]],
) -> T:
    """Run `action(evidence)` where `evidence()` stores `event` before the action commits (fail closed).
    When the action fails after the event may have been stored, a superseding failure event says so."""
    attempted = False

    async def evidence() -> None:
        nonlocal attempted
        attempted = True
        await audit.record_strict(event)

    try:
        return await action(evidence)
    except Exception as err:
        failed = event_pb2.Event()
        failed.CopyFrom(event)
        failed.event_id = new_event(service_name, event.action).event_id
        failed.outcome = event_pb2.OUTCOME_FAILURE
        failed.error_reason = getattr(err, "reason", "INTERNAL")
        failed.details.clear()
        if attempted:
            failed.details["supersedes_event_id"] = event.event_id
        await audit.record(failed)
        raise


def ring_event(service_name: str, action: str, account_id: int, details: Mapping[str, str]) -> event_pb2.Event:
    """An event about an account's key ring."""
    return new_event(service_name, action, resource_type="account_keys", resource_id=str(account_id),
                     account_id=account_id, details=details)
