"""Events between their stored bytes and what leaves the service: protobuf, the JSON view, export lines
(JSON Lines with proofs, CEF) and alert/forwarding payloads.

The stored bytes of an event (its Merkle leaf) are the emitter's `Event` serialized deterministically
without the fields the log assigns, followed by `sequence` and `account_sequence` (domain/events.seal). The JSON
view of an event is its proto3 JSON mapping (`json_format.MessageToDict`, proto field names), so anyone
with event.proto can recompute it from `leaf_data` and compare — which is what tools/audit_verify.py does.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format

from sendsafe.audit.v1 import event_pb2
from services.audit.domain import merkle
from services.audit.domain.alerts import Alert
from services.audit.domain.checkpoints import StoredCheckpoint
from services.audit.domain.evaluation import EventFacts
from services.audit.domain.events import IncomingEvent
from services.audit.domain.security_notices import NoticeEvent
from services.audit.domain.siem import cef_ext, cef_header, cef_severity
from services.audit.domain.trace_links import trace_url
from svckit.times import to_datetime

JSONL_CONTENT_TYPE = "application/x-ndjson"
CEF_CONTENT_TYPE = "text/plain"
_SERVER_FIELDS = ("sequence", "prev_hash", "hash", "account_sequence", "trace_url")
_OUTCOME_WORD = {1: "success", 2: "failure", 3: "denied"}


def to_incoming(ev: event_pb2.Event) -> IncomingEvent:
    """What an emitter sent, with the fields the log assigns removed from the bytes."""
    clean = event_pb2.Event()
    clean.CopyFrom(ev)
    for name in _SERVER_FIELDS:
        clean.ClearField(name)  # type: ignore[arg-type]
    when = to_datetime(ev.event_time, "event_time") if ev.HasField("event_time") else datetime.now(UTC)
    return IncomingEvent(
        event_id=ev.event_id,
        event_time=when,
        account_id=ev.actor.account_id,
        actor_id=ev.actor.id,
        action=ev.action,
        outcome=int(ev.outcome),
        trace_id=ev.trace_id,
        body=clean.SerializeToString(deterministic=True),
        actor_type=ev.actor.type,
        subject_account_id=ev.subject_account_id,
        client_address=ev.source.client_address,
        resource_type=ev.resource.type,
        resource_id=ev.resource.id,
        request_id=ev.request_id,
    )


def to_proto(sequence: int, leaf: bytes, trace_url_template: str = "") -> event_pb2.Event:
    """The stored event as the API shows it: `hash` is its leaf hash; legacy (hash-chained) rows get their
    sequence from the row; `trace_url` links its trace in the trace UI (when a template is set)."""
    ev = event_pb2.Event.FromString(leaf)
    ev.sequence = sequence
    ev.hash = merkle.leaf_hash(leaf).hex()
    ev.trace_url = trace_url(trace_url_template, ev.trace_id)
    return ev


def facts(sequence: int, leaf: bytes) -> EventFacts:
    ev = event_pb2.Event.FromString(leaf)
    return EventFacts(
        sequence=sequence,
        event_id=ev.event_id,
        account_id=ev.subject_account_id or ev.actor.account_id,
        event_time=ev.event_time.ToDatetime(tzinfo=UTC),
        action=ev.action,
        outcome=int(ev.outcome),
        actor_id=ev.actor.id,
        actor_type=ev.actor.type,
        client_address=ev.source.client_address,
        details=dict(ev.details),
        cause=ev.cause,
    )


def notice_event(sequence: int, leaf: bytes) -> NoticeEvent:
    """What a security notice may read of a stored event."""
    ev = event_pb2.Event.FromString(leaf)
    return NoticeEvent(
        sequence=sequence, event_id=ev.event_id, account_id=ev.subject_account_id or ev.actor.account_id,
        event_time=ev.event_time.ToDatetime(tzinfo=UTC), action=ev.action, outcome=int(ev.outcome),
        actor_type=ev.actor.type, actor_id=ev.actor.id, resource_type=ev.resource.type, resource_id=ev.resource.id,
        client_address=ev.source.client_address, user_agent=ev.source.user_agent, details=dict(ev.details),
    )


def event_view(leaf: bytes) -> dict[str, Any]:
    """The JSON view of stored bytes (proto3 JSON mapping, proto field names)."""
    view: dict[str, Any] = json_format.MessageToDict(
        event_pb2.Event.FromString(leaf), preserving_proto_field_name=True
    )
    return view


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def checkpoint_line(cp: StoredCheckpoint, verifier_key: str, account_head: str, after_sequence: int) -> str:
    """The line that opens an export segment: the checkpoint its proofs lead to, the signed account head,
    and where the segment starts (0: at the account's first event)."""
    return json.dumps(
        {"type": "checkpoint", "tree_size": cp.tree_size, "signed_note": cp.note, "verifier_key": verifier_key,
         "account_head": account_head, "after_sequence": after_sequence},
        separators=(",", ":"),
    )


def jsonl_line(sequence: int, leaf: bytes, tree_size: int | None, path: Sequence[bytes] | None,
               trace_url_template: str = "") -> str:
    line: dict[str, Any] = {
        "type": "event",
        "leaf_index": sequence - 1,
        "leaf_data": b64(leaf),
        "leaf_hash": merkle.leaf_hash(leaf).hex(),
    }
    if tree_size is not None and path is not None:
        line["tree_size"] = tree_size
        line["inclusion_path"] = [b64(p) for p in path]
    line["event"] = event_view(leaf)  # exactly what the bytes say (tools/audit_verify.py compares them)
    link = trace_url(trace_url_template, str(line["event"].get("trace_id", "")))
    if link:
        line["trace_url"] = link  # beside the event, not in it
    return json.dumps(line, separators=(",", ":"), ensure_ascii=False)


def cef_line(sequence: int, leaf: bytes, trace_url_template: str = "") -> str:
    ev = event_pb2.Event.FromString(leaf)
    when = ev.event_time.ToDatetime(tzinfo=UTC)
    ext: list[tuple[str, str]] = [
        ("rt", str(int(when.timestamp() * 1000))),
        ("externalId", ev.event_id),
        ("outcome", _OUTCOME_WORD.get(int(ev.outcome), "unknown")),
        ("suser", ev.actor.id),
        ("cs1Label", "actorType"), ("cs1", ev.actor.type),
        ("cs2Label", "accountId"), ("cs2", str(ev.subject_account_id or ev.actor.account_id)),
        ("cs3Label", "traceId"), ("cs3", ev.trace_id),
        ("cs4Label", "requestId"), ("cs4", ev.request_id),
        ("cs5Label", "resource"), ("cs5", f"{ev.resource.type}:{ev.resource.id}" if ev.resource.type else ""),
        ("cs6Label", "leafHash"), ("cs6", merkle.leaf_hash(leaf).hex()),
        ("cn1Label", "sequence"), ("cn1", str(sequence)),
        ("requestClientApplication", ev.source.user_agent),
        ("reason", ev.error_reason),
        ("deviceProcessName", ev.service),
    ]
    link = trace_url(trace_url_template, ev.trace_id)
    if link:  # the trace UI's page for cs3's trace id
        ext += [("flexString1Label", "traceUrl"), ("flexString1", link)]
    if _is_ip(ev.source.client_address):
        ext.append(("src", ev.source.client_address))
    extension = " ".join(f"{k}={cef_ext(v)}" for k, v in ext if v)
    head = "|".join(cef_header(x) for x in ("SendSafe", "SendSafe Audit", "1", ev.action, ev.action))
    return f"CEF:0|{head}|{cef_severity(int(ev.outcome), ev.action)}|{extension}"


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def alert_payload(delivery_id: int, account_id: int, alert: Alert, leaf: bytes | None) -> bytes:
    """The body of an alert webhook."""
    data = {
        "type": "alert",
        "delivery_id": delivery_id,
        "alert_id": alert.alert_id,
        "account_id": account_id,
        "rule_id": alert.rule_id,
        "rule_name": alert.rule_name,
        "fire_time": alert.fire_time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "match_count": alert.match_count,
        "window_seconds": alert.window_seconds,
        "event": event_view(leaf) if leaf is not None else {"event_id": alert.event_id, "action": alert.action},
    }
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def forward_body(rows: Sequence[tuple[int, bytes]], fmt: int, trace_url_template: str = "") -> tuple[bytes, str]:
    """A forwarding batch: JSON Lines (without proofs) or CEF lines."""
    if fmt == 2:
        lines = (cef_line(s, leaf, trace_url_template) for s, leaf in rows)
        return ("\n".join(lines) + "\n").encode(), CEF_CONTENT_TYPE
    text = "\n".join(jsonl_line(s, leaf, None, None, trace_url_template) for s, leaf in rows) + "\n"
    return text.encode(), JSONL_CONTENT_TYPE
