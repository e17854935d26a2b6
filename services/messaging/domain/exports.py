"""Account exports (portability): an export's life, its refusals, and the JSON Lines record of each kind of data.

An export is PENDING until a job claims it, RUNNING while the job writes it (records per type and bytes grow),
READY once every chunk is sealed and stored (downloadable until its expiry), then DOWNLOADED (after one whole
download) or EXPIRED (nobody downloaded it in time) or FAILED; in those three its chunks are deleted and only
the metadata stays (ids, counts, times: no content).

The file is JSON Lines. Every line is an object whose "type" names the record: a header ("export"), then
"message" (ClickSend's /v3/sms/history fields, body and number opened), "receipt" (/v3/sms/receipts fields),
"reply" (/v3/sms/inbound fields), "settings", "webhook", the account's sender identities ("dedicated_number" in
/v3/numbers fields, "own_number" in /v3/own-numbers fields with the number opened, "alpha_tag" in /v3/alpha-tags
fields), its contacts ("contact_list" in /v3/lists fields, then "contact" in /v3/lists/{list_id}/contacts fields,
every field opened), "subaccount", "api_key", "alert_rule", and last the
account's audit events exactly as GET /v1/audit/export gives them ("checkpoint" and "event" lines, with
proofs): those lines, taken alone, are a file `python -m tools.audit_verify verify` checks offline.
"""

from __future__ import annotations

import enum
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from services.messaging.domain.alpha_tags import AlphaTag
from services.messaging.domain.contacts import FIELDS as CONTACT_FIELDS
from services.messaging.domain.history import HistoryItem
from services.messaging.domain.pricing import format_price
from services.messaging.domain.receipts import InboundView, ReceiptRecord
from services.messaging.domain.senders import SenderIdentity, SenderKind, SenderState
from services.messaging.domain.settings import MessagingSettings
from services.messaging.domain.statuses import clicksend_receipt_view
from svckit.errors import FailedPrecondition, NotFound

FORMAT_VERSION: Final = 1
CONTENT_TYPE: Final = "application/x-ndjson"
AUDIT_LINE_TYPES: Final = frozenset({"checkpoint", "event"})  # the audit log's own export lines
# Record types in the order the file holds them (the audit section last: its lines verify on their own).
RECORD_TYPES: Final = ("message", "receipt", "reply", "settings", "webhook", "dedicated_number", "own_number",
                       "alpha_tag", "contact_list", "contact", "subaccount", "api_key", "alert_rule", "audit_event")
_EXPORT_ID: Final = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class ExportState(enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    READY = "READY"
    DOWNLOADED = "DOWNLOADED"
    EXPIRED = "EXPIRED"
    FAILED = "FAILED"


class ExportNotFound(NotFound):
    reason = "EXPORT_NOT_FOUND"


class ExportNotReady(FailedPrecondition):
    reason = "EXPORT_NOT_READY"


class ExportAlreadyDownloaded(FailedPrecondition):
    reason = "EXPORT_ALREADY_DOWNLOADED"


class ExportExpired(FailedPrecondition):
    reason = "EXPORT_EXPIRED"


class ExportFailed(FailedPrecondition):
    reason = "EXPORT_FAILED"


class ExportDownloadInProgress(FailedPrecondition):
    reason = "EXPORT_DOWNLOAD_IN_PROGRESS"


class ExportInProgress(FailedPrecondition):
    """The account already has an export being written: one at a time."""

    reason = "EXPORT_IN_PROGRESS"


def check_export_id(export_id: str) -> str:
    """The canonical form of an export id; anything else names no export (404, never 400: ids are opaque)."""
    if not _EXPORT_ID.fullmatch(export_id.strip()):
        raise ExportNotFound("No such export.")
    return export_id.strip().lower()


def new_export_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class ExportRecord:
    """An export's metadata (never its content)."""

    id: str
    account_id: int
    user_id: int
    state: ExportState
    counts: Mapping[str, int] = field(default_factory=dict)
    total_bytes: int = 0
    chunks: int = 0
    create_time: int = 0
    complete_time: int | None = None
    expire_time: int | None = None
    download_time: int | None = None
    failure_reason: str = ""
    wrapped_key: bytes | None = None


def refusal(export: ExportRecord, now: float) -> FailedPrecondition | None:
    """Why `export` cannot be downloaded now (None: it can)."""
    if export.state is ExportState.DOWNLOADED:
        return ExportAlreadyDownloaded("This export was downloaded already; its content is deleted.")
    if export.state is ExportState.EXPIRED or (
            export.state is ExportState.READY and export.expire_time is not None and export.expire_time <= now):
        return ExportExpired("This export was not downloaded in time; its content is deleted.")
    if export.state is ExportState.FAILED:
        return ExportFailed("This export failed; start a new one.")
    if export.state is not ExportState.READY:
        return ExportNotReady("This export is still being written; poll it until its state is READY.")
    return None


# -- lines --------------------------------------------------------------------------------------------------


def line(record: Mapping[str, Any]) -> bytes:
    """One JSON Lines line (compact, UTF-8, newline-terminated)."""
    return (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def header_record(export_id: str, account_id: int, create_time: int) -> dict[str, Any]:
    return {"type": "export", "format_version": FORMAT_VERSION, "export_id": export_id, "account_id": account_id,
            "create_time": create_time, "record_types": list(RECORD_TYPES),
            "audit": "the lines of type checkpoint and event, taken alone, verify with"
                     " `python -m tools.audit_verify verify FILE --key VERIFIER_KEY`"}


def message_record(item: HistoryItem) -> dict[str, Any]:
    """A message with ClickSend's /v3/sms/history field names, body and number opened."""
    m, st = item.message, item.status
    out: dict[str, Any] = {
        "type": "message", "direction": "out", "date": m.date, "to": item.to, "body": item.body,
        "from": m.sender, "schedule": str(m.schedule) if m.schedule else "", "status": st.status,
        "status_code": st.status_code, "status_text": st.status_text, "message_id": m.id, "message_parts": m.parts,
        "message_price": format_price(m.price), "from_email": m.from_email, "list_id": m.list_id,
        "custom_string": m.custom_string, "contact_id": m.contact_id, "user_id": m.account_id,
        "subaccount_id": m.user_id, "country": m.country, "carrier": m.carrier, "_api_username": m.api_username,
    }
    if st.error_code is not None:
        out["error_code"] = st.error_code
    if st.error_text is not None:
        out["error_text"] = st.error_text
    return out


def receipt_record(r: ReceiptRecord) -> dict[str, Any]:
    """A delivery receipt with ClickSend's /v3/sms/receipts field names."""
    view = clicksend_receipt_view(r.status, r.error_code)
    out: dict[str, Any] = {
        "type": "receipt", "timestamp_send": r.timestamp_send, "timestamp": r.timestamp, "message_id": r.message_id,
        "status_code": view.status_code, "status_text": view.status_text, "custom_string": r.custom_string,
        "subaccount_id": r.user_id, "message_type": "sms",
    }
    if view.error_code is not None:
        out["error_code"] = view.error_code
    if view.error_text is not None:
        out["error_text"] = view.error_text
    return out


def reply_record(v: InboundView) -> dict[str, Any]:
    """A reply with ClickSend's /v3/sms/inbound field names, sender and body opened."""
    r = v.record
    return {"type": "reply", "timestamp": r.timestamp, "from": v.sender, "body": v.body,
            "original_body": v.original_body, "original_message_id": r.original_message_id, "to": r.to,
            "custom_string": r.custom_string, "message_id": r.id, "_keyword": v.keyword}


def settings_records(s: MessagingSettings) -> list[dict[str, Any]]:
    """The account's messaging settings, and its webhooks without their signing secret (only whether one is set)."""
    settings = {"type": "settings", "body_retention_days": s.body_retention_days,
                "staff_content_access": s.staff_content_access, "update_time": s.update_time or 0}
    webhooks = [{"type": "webhook", "event": event, "url": url, "secret_set": s.has_webhook_secret}
                for event, url in (("sms.receipt", s.receipt_webhook_url), ("sms.inbound", s.inbound_webhook_url))
                if url]
    return [settings, *webhooks]


def peer_record(record_type: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """A record another service gave (a sub-account, an API key's metadata, an alert rule), typed."""
    return {"type": record_type, **{k: v for k, v in fields.items() if k != "type"}}


def _iso(unix: float | None) -> str:
    """ClickSend's timestamp form for senders and tags (ISO 8601, UTC, seconds); "" for none."""
    if unix is None:
        return ""
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def sender_record(i: SenderIdentity, number: str) -> dict[str, Any]:
    """A number the account holds or held: a dedicated number with /v3/numbers field names, a verified one with
    /v3/own-numbers field names; `number` is the number opened (E.164). `_state` and the times are ours."""
    times = {"_state": i.state.value, "created_timestamp": _iso(i.create_time),
             "_activated_timestamp": _iso(i.activate_time), "_released_timestamp": _iso(i.release_time)}
    if i.kind is SenderKind.DEDICATED_NUMBER:
        return {"type": "dedicated_number", "dedicated_number": number, "country": i.country,
                "number_guid": i.id.upper(), "number_type": "longcode", "subaccount_id": i.user_id, **times}
    return {"type": "own_number", "id": i.id, "phone_number": number, "country": i.country, "label": i.label,
            "status": "APPROVED" if i.state is SenderState.ACTIVE else i.state.value.upper(),
            "verified_timestamp": _iso(i.activate_time), "subaccount_id": i.user_id, **times}


def alpha_tag_record(t: AlphaTag) -> dict[str, Any]:
    """An alpha tag request with /v3/alpha-tags field names, and the customer's own request reason."""
    return {"type": "alpha_tag", "id": t.id, "account_id": str(t.account_id), "user_id": str(t.user_id),
            "alpha_tag": t.tag, "status": t.status, "reason": t.shown_reason, "countries": list(t.countries),
            "created_timestamp": _iso(t.create_time), "updated_timestamp": _iso(t.update_time),
            "_request_reason": t.request_reason}


def contact_list_record(list_id: int, name: str) -> dict[str, Any]:
    """A contact list with /v3/lists field names."""
    return {"type": "contact_list", "list_id": list_id, "list_name": name}


def contact_record(contact_id: int, list_id: int, fields: Mapping[str, str], create_time: int,
                   update_time: int) -> dict[str, Any]:
    """A contact with /v3/lists/{list_id}/contacts field names, every field opened."""
    return {"type": "contact", "contact_id": contact_id, "list_id": list_id, "date_added": create_time,
            "date_updated": update_time, **{k: fields[k] for k in CONTACT_FIELDS if fields.get(k)}}
