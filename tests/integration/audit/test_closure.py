"""Account closure, audit's part, with the real audit service over mTLS and real PostgreSQL (issue 15): identity
alone may purge a closed account's configuration; the purge deletes its alert rules (defaults included) and leaves
its events, their proofs and another account's rules as they were; it is idempotent and is itself an event."""

from __future__ import annotations

import grpc
import pytest

from sendsafe.audit.v1 import alert_pb2
from sendsafe.audit.v1 import audit_service_pb2 as pb
from tests.integration.audit.conftest import AuditFactory, event, eventually, principal, reason_of

MANAGE = ("audit.manage", "audit.read")


async def test_purge_deletes_the_configuration_and_keeps_the_events(make_audit: AuditFactory) -> None:
    audit = await make_audit()
    gateway, identity = audit.stub(), audit.stub("identity")
    closing, other = principal(7101, *MANAGE), principal(7102, *MANAGE)
    for who in (closing, other):
        await gateway.CreateAlertRule(pb.CreateAlertRuleRequest(rule=alert_pb2.AlertRule(
            name="denied anything", actions=["gateway.*"])), metadata=who)
    await audit.append(*(event(7101, "sms.send") for _ in range(3)))
    events_before = await eventually(lambda: _count(audit, "events", 7101), what="the account's events")
    assert await _count(audit, "alert_rules", 7101) >= 2  # its own and the defaults
    other_rules = await _count(audit, "alert_rules", 7102)

    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await gateway.PurgeAccountConfig(pb.PurgeAccountConfigRequest(account_id=7101))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await identity.PurgeAccountConfig(pb.PurgeAccountConfigRequest(account_id=0))
    assert reason_of(invalid.value) == "ACCOUNT_REQUIRED"

    purged = await identity.PurgeAccountConfig(pb.PurgeAccountConfigRequest(account_id=7101))
    assert purged.deleted_rows >= 2
    assert await _count(audit, "alert_rules", 7101) == 0
    assert await _count(audit, "alert_rules", 7102) == other_rules
    assert await _count(audit, "events", 7101) >= events_before  # append-only: every event stays
    assert (await identity.PurgeAccountConfig(pb.PurgeAccountConfigRequest(account_id=7101))).deleted_rows == 0
    listed = await gateway.ListAlertRules(pb.ListAlertRulesRequest(), metadata=closing)
    assert not listed.rules  # the defaults do not come back for a purged account
    purge_events = await gateway.ListEvents(pb.ListEventsRequest(action="audit.account.purged"),
                                            metadata=principal(7101, "audit.read"))
    assert len(purge_events.events) == 2 and purge_events.events[0].details["deleted_rows"]


async def _count(audit: object, table: str, account_id: int) -> int:
    conn = await audit.admin()  # type: ignore[attr-defined]
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table} WHERE account_id = $1", account_id))
    finally:
        await conn.close()
