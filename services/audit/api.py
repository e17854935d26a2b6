"""gRPC edge of the audit service: protobuf <-> domain, nothing else."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from sendsafe.audit.v1 import (
    alert_pb2,
    audit_service_pb2,
    audit_service_pb2_grpc,
    evidence_pb2,
    security_notification_pb2,
)
from services.audit.domain.alerts import Alert, mask_target
from services.audit.domain.checkpoints import StoredCheckpoint
from services.audit.domain.errors import AccountRequired
from services.audit.domain.filters import build_filter
from services.audit.domain.forwarding import ForwardingSpec, ForwardingState
from services.audit.domain.integrity import Verification
from services.audit.domain.paging import next_token
from services.audit.domain.rules import Rule, RuleOwner, RuleSpec
from services.audit.domain.security_notices import StoredNotice
from services.audit.domain.siem import FORMAT_JSONL, ExportCursor
from services.audit.service.alerts import AlertService
from services.audit.service.closure import AccountConfigPurge
from services.audit.service.formats import to_incoming, to_proto
from services.audit.service.forwarding import ForwardingService
from services.audit.service.log import LogService
from services.audit.service.security_notices import SecurityNotices
from svckit import context as callctx
from svckit.times import to_datetime


def _account() -> int:
    principal = callctx.principal()
    if principal is None or principal.account_id <= 0:
        raise AccountRequired("this call needs an account principal")
    return principal.account_id


def _time(msg: Any, field: str) -> datetime | None:
    return to_datetime(getattr(msg, field), field) if msg.HasField(field) else None


def _ts(when: datetime | None) -> timestamp_pb2.Timestamp | None:
    if when is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when.astimezone(UTC))
    return ts


def _filter(request: Any, account_id: int | None) -> Any:
    return build_filter(
        account_id,
        start_time=_time(request, "start_time"), end_time=_time(request, "end_time"), action=request.action,
        actor_id=request.actor_id, actor_type=request.actor_type, outcome=int(request.outcome),
        client_address=request.client_address, trace_id=request.trace_id, resource_type=request.resource_type,
        resource_id=request.resource_id, request_id=request.request_id, page_size=request.page_size,
        page_token=request.page_token,
    )


def checkpoint_proto(cp: StoredCheckpoint) -> evidence_pb2.Checkpoint:
    return evidence_pb2.Checkpoint(
        origin=cp.note.split("\n", 1)[0], tree_size=cp.tree_size, root_hash=cp.root_hash,
        checkpoint_time=_ts(cp.checkpoint_time), signed_note=cp.note, key_id=cp.key_id,
    )


def _owner() -> RuleOwner:
    """The calling principal as a rule's owner (its permissions are already narrowed to its key's scopes)."""
    p = callctx.principal()
    if p is None:
        return RuleOwner(0)
    limits = p.send_limits
    return RuleOwner(
        user_id=p.user_id, api_username=p.api_username, api_key_id=p.api_key_id,
        per_minute=limits.messages_per_minute, per_day=limits.messages_per_day,
        countries=tuple(limits.allowed_countries), may_send="sms.send" in p.permissions and not p.staff,
    )


def rule_spec(r: alert_pb2.AlertRule) -> RuleSpec:
    return RuleSpec(
        name=r.name, disabled=r.disabled, actions=tuple(r.actions), outcomes=tuple(int(o) for o in r.outcomes),
        actor_ids=tuple(r.actor_ids), actor_types=tuple(r.actor_types), client_networks=tuple(r.client_networks),
        exclude_client_networks=tuple(r.exclude_client_networks), threshold=r.threshold,
        window_seconds=r.window_seconds, cooldown_seconds=r.cooldown_seconds, sum_detail=r.sum_detail,
        webhook_url=r.webhook_url, sms_to=r.sms_to, email_to=r.email_to,
    )


def rule_proto(rule: Rule) -> alert_pb2.AlertRule:
    s = rule.spec
    return alert_pb2.AlertRule(
        rule_id=rule.rule_id, name=s.name, disabled=s.disabled, actions=s.actions,
        outcomes=s.outcomes,  # type: ignore[arg-type]
        actor_ids=s.actor_ids, actor_types=s.actor_types, client_networks=s.client_networks,
        exclude_client_networks=s.exclude_client_networks, threshold=s.threshold, window_seconds=s.window_seconds,
        cooldown_seconds=s.cooldown_seconds, sum_detail=s.sum_detail, webhook_url=s.webhook_url, sms_to=s.sms_to,
        email_to=s.email_to, is_default=rule.is_default, create_time=_ts(rule.create_time),
        update_time=_ts(rule.update_time),
    )


def alert_proto(a: Alert) -> alert_pb2.Alert:
    return alert_pb2.Alert(
        alert_id=a.alert_id, rule_id=a.rule_id, rule_name=a.rule_name, fire_time=_ts(a.fire_time),
        event_id=a.event_id, event_sequence=a.event_sequence, action=a.action, match_count=a.match_count,
        window_seconds=a.window_seconds,
        deliveries=[
            alert_pb2.AlertDelivery(
                channel=d.channel, target=mask_target(d.channel, d.target),
                status=d.status,  # type: ignore[arg-type]
                attempts=d.attempts, last_error=d.last_error, update_time=_ts(d.update_time),
            )
            for d in a.deliveries
        ],
    )


def forwarding_proto(state: ForwardingState | None) -> alert_pb2.Forwarding:
    if state is None:
        return alert_pb2.Forwarding()
    s = state.spec
    return alert_pb2.Forwarding(
        enabled=s.enabled, kind=s.kind, url=s.url, format=s.format,  # type: ignore[arg-type]
        delivered_sequence=state.delivered_sequence, last_error=state.last_error,
        consecutive_failures=state.consecutive_failures, last_delivery_time=_ts(state.last_delivery_time),
    )


def notice_proto(n: StoredNotice) -> security_notification_pb2.SecurityNotification:
    return security_notification_pb2.SecurityNotification(
        notification_id=n.notice_id, kind=n.kind, event_id=n.event_id, event_time=_ts(n.event_time),
        subject=n.subject, body=n.body, status=n.status,  # type: ignore[arg-type]
        attempts=n.attempts, last_error=n.last_error, create_time=_ts(n.create_time), update_time=_ts(n.update_time),
    )


def verification_proto(v: Verification) -> audit_service_pb2.VerifyLogResponse:
    out = audit_service_pb2.VerifyLogResponse(ok=v.ok, tree_size=v.tree_size, checkpoints_checked=v.checkpoints_checked)
    if v.finding is not None:
        f = v.finding
        out.problem.CopyFrom(evidence_pb2.IntegrityProblem(
            kind=int(f.kind),  # type: ignore[arg-type]
            sequence=f.sequence, event_id=f.event_id, detail=f.detail,
        ))
    return out


class AuditServicer(audit_service_pb2_grpc.AuditServiceServicer):
    def __init__(self, log: LogService, alerts: AlertService, forwarding: ForwardingService,
                 notices: SecurityNotices, purge: AccountConfigPurge | None = None) -> None:
        self.log = log
        self.alerts = alerts
        self.forwarding = forwarding
        self.notices = notices
        self.purge = purge

    async def PurgeAccountConfig(
        self, request: audit_service_pb2.PurgeAccountConfigRequest, context: grpc.aio.ServicerContext
    ) -> audit_service_pb2.PurgeAccountConfigResponse:
        if self.purge is None:
            raise NotImplementedError("account purge is not wired")
        return audit_service_pb2.PurgeAccountConfigResponse(deleted_rows=await self.purge.purge(request.account_id))

    # -- the log -------------------------------------------------------------------------------------------

    async def AppendEvents(
        self, request: audit_service_pb2.AppendEventsRequest, context: grpc.aio.ServicerContext
    ) -> audit_service_pb2.AppendEventsResponse:
        first, last = await self.log.append_events([to_incoming(e) for e in request.events])
        return audit_service_pb2.AppendEventsResponse(first_sequence=first, last_sequence=last)

    async def ListEvents(
        self, request: audit_service_pb2.ListEventsRequest, context: grpc.aio.ServicerContext
    ) -> audit_service_pb2.ListEventsResponse:
        f = _filter(request, _account())
        rows = await self.log.list_events(f)
        return audit_service_pb2.ListEventsResponse(
            events=[to_proto(s, b, self.log.trace_url_template) for s, b in rows],
            next_page_token=next_token(rows[-1][0] if rows else None, len(rows), f.limit),
        )

    async def SearchEvents(
        self, request: audit_service_pb2.SearchEventsRequest, context: grpc.aio.ServicerContext
    ) -> audit_service_pb2.SearchEventsResponse:
        f = _filter(request, request.account_id or None)
        rows = await self.log.search_events(f, request.justification)
        return audit_service_pb2.SearchEventsResponse(
            events=[to_proto(s, b, self.log.trace_url_template) for s, b in rows],
            next_page_token=next_token(rows[-1][0] if rows else None, len(rows), f.limit),
        )

    async def GetEventProof(
        self, request: audit_service_pb2.GetEventProofRequest, context: grpc.aio.ServicerContext
    ) -> audit_service_pb2.GetEventProofResponse:
        proof = await self.log.event_proof(_account(), request.event_id, request.tree_size)
        return audit_service_pb2.GetEventProofResponse(
            event=to_proto(proof.sequence, proof.leaf, self.log.trace_url_template),
            leaf_index=proof.sequence - 1, leaf_data=proof.leaf,
            leaf_hash=bytes.fromhex(to_proto(proof.sequence, proof.leaf).hash), inclusion_path=proof.path,
            checkpoint=checkpoint_proto(proof.checkpoint),
        )

    async def GetCheckpoint(
        self, request: audit_service_pb2.GetCheckpointRequest, context: grpc.aio.ServicerContext
    ) -> audit_service_pb2.GetCheckpointResponse:
        cp = await self.log.checkpoint(request.tree_size, fresh=request.fresh)
        return audit_service_pb2.GetCheckpointResponse(checkpoint=checkpoint_proto(cp),
                                                       verifier_key=self.log.verifier_key)

    async def GetConsistencyProof(
        self, request: audit_service_pb2.GetConsistencyProofRequest, context: grpc.aio.ServicerContext
    ) -> audit_service_pb2.GetConsistencyProofResponse:
        first, second, proof, cp = await self.log.consistency(request.first_tree_size, request.second_tree_size)
        out = audit_service_pb2.GetConsistencyProofResponse(first_tree_size=first, second_tree_size=second,
                                                            proof=proof)
        if cp is not None:
            out.second.CopyFrom(checkpoint_proto(cp))
        return out

    async def VerifyLog(
        self, request: audit_service_pb2.VerifyLogRequest, context: grpc.aio.ServicerContext
    ) -> audit_service_pb2.VerifyLogResponse:
        return verification_proto(await self.log.verify_log())

    async def ExportEvents(
        self, request: audit_service_pb2.ExportEventsRequest, context: grpc.aio.ServicerContext
    ) -> audit_service_pb2.ExportEventsResponse:
        page = await self.log.export(_account(), ExportCursor.parse(request.cursor), int(request.format) or 1,
                                     request.page_size, request.omit_proofs)
        out = audit_service_pb2.ExportEventsResponse(
            data=page.data, next_cursor=page.cursor.encode(), complete=page.complete, count=page.count,
            verifier_key=self.log.verifier_key,
        )
        if page.checkpoint is not None:
            out.checkpoint.CopyFrom(checkpoint_proto(page.checkpoint))
        return out

    async def ExportAccountEvents(
        self, request: audit_service_pb2.ExportAccountEventsRequest, context: grpc.aio.ServicerContext
    ) -> audit_service_pb2.ExportAccountEventsResponse:
        """GET /v1/audit/export's JSON Lines with proofs for one account, for messaging's account export."""
        if request.account_id <= 0:
            raise AccountRequired("give an account_id")
        page = await self.log.export(request.account_id, ExportCursor.parse(request.cursor), FORMAT_JSONL,
                                     request.page_size, False)
        out = audit_service_pb2.ExportAccountEventsResponse(
            data=page.data, next_cursor=page.cursor.encode(), complete=page.complete, count=page.count,
            verifier_key=self.log.verifier_key,
        )
        if page.checkpoint is not None:
            out.checkpoint.CopyFrom(checkpoint_proto(page.checkpoint))
        return out

    async def ListAccountAlertRules(
        self, request: audit_service_pb2.ListAccountAlertRulesRequest, context: grpc.aio.ServicerContext
    ) -> audit_service_pb2.ListAccountAlertRulesResponse:
        rules = await self.alerts.list_rules(request.account_id)
        return audit_service_pb2.ListAccountAlertRulesResponse(rules=[rule_proto(r) for r in rules])

    # -- alerts --------------------------------------------------------------------------------------------

    async def CreateAlertRule(
        self, request: audit_service_pb2.CreateAlertRuleRequest, context: grpc.aio.ServicerContext
    ) -> audit_service_pb2.CreateAlertRuleResponse:
        rule = await self.alerts.create_rule(_account(), rule_spec(request.rule), _owner())
        return audit_service_pb2.CreateAlertRuleResponse(rule=rule_proto(rule))

    async def ListAlertRules(
        self, request: audit_service_pb2.ListAlertRulesRequest, context: grpc.aio.ServicerContext
    ) -> audit_service_pb2.ListAlertRulesResponse:
        rules = await self.alerts.list_rules(_account())
        return audit_service_pb2.ListAlertRulesResponse(rules=[rule_proto(r) for r in rules])

    async def UpdateAlertRule(
        self, request: audit_service_pb2.UpdateAlertRuleRequest, context: grpc.aio.ServicerContext
    ) -> audit_service_pb2.UpdateAlertRuleResponse:
        rule = await self.alerts.update_rule(_account(), request.rule_id, rule_spec(request.rule), _owner())
        return audit_service_pb2.UpdateAlertRuleResponse(rule=rule_proto(rule))

    async def DeleteAlertRule(
        self, request: audit_service_pb2.DeleteAlertRuleRequest, context: grpc.aio.ServicerContext
    ) -> audit_service_pb2.DeleteAlertRuleResponse:
        await self.alerts.delete_rule(_account(), request.rule_id)
        return audit_service_pb2.DeleteAlertRuleResponse()

    async def ListAlerts(
        self, request: audit_service_pb2.ListAlertsRequest, context: grpc.aio.ServicerContext
    ) -> audit_service_pb2.ListAlertsResponse:
        alerts, token = await self.alerts.list_alerts(_account(), request.page_size, request.page_token)
        return audit_service_pb2.ListAlertsResponse(alerts=[alert_proto(a) for a in alerts], next_page_token=token)

    async def GetWebhookSecret(
        self, request: audit_service_pb2.GetWebhookSecretRequest, context: grpc.aio.ServicerContext
    ) -> audit_service_pb2.GetWebhookSecretResponse:
        secret, version = await self.alerts.webhook_secret(_account(), rotate=False)
        return audit_service_pb2.GetWebhookSecretResponse(secret=secret, version=version)

    async def RotateWebhookSecret(
        self, request: audit_service_pb2.RotateWebhookSecretRequest, context: grpc.aio.ServicerContext
    ) -> audit_service_pb2.RotateWebhookSecretResponse:
        secret, version = await self.alerts.webhook_secret(_account(), rotate=True)
        return audit_service_pb2.RotateWebhookSecretResponse(secret=secret, version=version)

    async def GetForwarding(
        self, request: audit_service_pb2.GetForwardingRequest, context: grpc.aio.ServicerContext
    ) -> audit_service_pb2.GetForwardingResponse:
        state = await self.forwarding.get(_account())
        return audit_service_pb2.GetForwardingResponse(forwarding=forwarding_proto(state))

    async def SetForwarding(
        self, request: audit_service_pb2.SetForwardingRequest, context: grpc.aio.ServicerContext
    ) -> audit_service_pb2.SetForwardingResponse:
        f = request.forwarding
        state = await self.forwarding.set(
            _account(), ForwardingSpec(f.enabled, int(f.kind), f.url, int(f.format), f.backfill))
        return audit_service_pb2.SetForwardingResponse(forwarding=forwarding_proto(state))

    async def ListSecurityNotifications(
        self, request: audit_service_pb2.ListSecurityNotificationsRequest, context: grpc.aio.ServicerContext
    ) -> audit_service_pb2.ListSecurityNotificationsResponse:
        notices, token = await self.notices.list(_account(), request.page_size, request.page_token)
        return audit_service_pb2.ListSecurityNotificationsResponse(
            notifications=[notice_proto(n) for n in notices], next_page_token=token)
