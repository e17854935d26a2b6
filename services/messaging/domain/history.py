"""History search and sort (ClickSend `q=field:value,...` and `order_by=field:asc|desc`) and the pages
it answers.

Bodies and phone numbers are ciphertext at rest, so the database can neither search nor sort them:
- `to` is matched exactly through a keyed hash of the normalised number (`to_hash`, keyed per account),
  across the whole history;
- `body` (substring, case-insensitive) and sorting by `to` or `body` work on a decrypted window: the
  newest `SEARCH_WINDOW` messages that pass every other filter are decrypted in memory, then filtered,
  sorted and paged. Nothing decrypted is ever written back, logged or cached.
De-identified users (sms_deidentify_message) cannot search or sort by `to` or `body`: a match would tell
them what they are not allowed to see.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from services.messaging.domain.errors import InvalidRecipient
from services.messaging.domain.recipients import REGION_SHAPE, parse_recipient
from services.messaging.domain.records import MESSAGE_ID_SHAPE, StoredMessage
from services.messaging.domain.statuses import HISTORY_VIEWS, HistoryStatus, MessageStatus
from svckit.errors import InvalidArgument, PermissionDenied
from svckit.paging import PageWindow


@dataclass(frozen=True, slots=True)
class HistoryItem:
    message: StoredMessage
    body: str
    to: str
    status: HistoryStatus


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    window: PageWindow
    date_from: int | None = None
    date_to: int | None = None
    filter: HistoryFilter = field(default_factory=lambda: HistoryFilter())
    sort: HistorySort = field(default_factory=lambda: HistorySort())


@dataclass(frozen=True, slots=True)
class HistoryPage:
    window: PageWindow
    total: int
    items: list[HistoryItem]


class InvalidQuery(InvalidArgument):
    reason = "INVALID_QUERY"


class SearchNotPermitted(PermissionDenied):
    reason = "SEARCH_NOT_PERMITTED"


SEARCH_WINDOW: Final = 1000
HISTORY_FILTER_FIELDS: Final = frozenset(
    {"status", "to", "from", "custom_string", "message_id", "username", "country", "body"}
)
HISTORY_SORT_FIELDS: Final = frozenset({"date", "username", "from", "to", "status", "body"})
_MAX_QUERY_LENGTH: Final = 1000

# ClickSend history status name (case-insensitive) -> internal states shown under that name.
_STATUS_BY_NAME: Final[Mapping[str, frozenset[MessageStatus]]] = MappingProxyType(
    {
        "queued": frozenset({MessageStatus.QUEUED, MessageStatus.SENDING}),
        "scheduled": frozenset({MessageStatus.SCHEDULED}),
        "sent": frozenset({MessageStatus.SENT, MessageStatus.DELIVERED}),
        "delivered": frozenset({MessageStatus.DELIVERED}),  # ours: ClickSend shows these as Sent with code 201
        "failed": frozenset({MessageStatus.FAILED}),
        "cancelled": frozenset({MessageStatus.CANCELLED}),
    }
)
# The order `status` sorts in: the ClickSend name of each state (alphabetical, as ClickSend sorts text).
STATUS_SORT_NAME: Final[Mapping[MessageStatus, str]] = MappingProxyType(
    {s: ("Failed" if s is MessageStatus.FAILED else HISTORY_VIEWS[s][0]) for s in MessageStatus}
)


@dataclass(frozen=True, slots=True)
class HistoryFilter:
    statuses: frozenset[MessageStatus] | None = None
    to: str | None = None  # E.164, matched through the keyed hash
    sender: str | None = None
    custom_string: str | None = None
    message_id: str | None = None  # uppercase UUID
    username: str | None = None
    country: str | None = None
    body_contains: str | None = None  # casefolded

    @property
    def touches_content(self) -> bool:
        return self.to is not None or self.body_contains is not None


@dataclass(frozen=True, slots=True)
class HistorySort:
    field: str = "date"
    descending: bool = True

    @property
    def on_content(self) -> bool:
        return self.field in ("to", "body")


def parse_history_filter(q: str) -> HistoryFilter:
    """`q` is `field:value[,field:value...]`, every condition must hold (AND). Values cannot hold commas
    (as at ClickSend). Raises InvalidQuery naming the offending field, never echoing a value."""
    q = q.strip()
    if not q:
        return HistoryFilter()
    if len(q) > _MAX_QUERY_LENGTH:
        raise InvalidQuery(f"q is longer than {_MAX_QUERY_LENGTH} characters.")
    seen: dict[str, str] = {}
    for part in q.split(","):
        name, sep, value = part.partition(":")
        name, value = name.strip().lower(), value.strip()
        if name == "_api_username":
            name = "username"
        if not sep or name not in HISTORY_FILTER_FIELDS:
            raise InvalidQuery(
                f"q must be field:value pairs with fields {', '.join(sorted(HISTORY_FILTER_FIELDS))}.",
                field=name[:40],
            )
        if not value:
            raise InvalidQuery(f"q has an empty value for {name}.", field=name)
        if name in seen:
            raise InvalidQuery(f"q names {name} twice.", field=name)
        seen[name] = value
    statuses = None
    if "status" in seen:
        statuses = _STATUS_BY_NAME.get(seen["status"].lower())
        if statuses is None:
            raise InvalidQuery(
                "status must be one of Queued, Scheduled, Sent, Delivered, Failed, Cancelled.", field="status"
            )
    to = None
    if "to" in seen:
        try:
            to = parse_recipient(seen["to"], None).e164
        except InvalidRecipient:
            raise InvalidQuery("to must be a phone number in E.164 format.", field="to") from None
    mid = seen.get("message_id")
    if mid is not None:
        if not MESSAGE_ID_SHAPE.fullmatch(mid):
            raise InvalidQuery("message_id must be a message id.", field="message_id")
        mid = mid.upper()
    country = seen.get("country")
    if country is not None:
        country = country.upper()
        if not REGION_SHAPE.fullmatch(country):
            raise InvalidQuery("country must be an ISO 3166-1 alpha-2 code.", field="country")
    body = seen.get("body")
    return HistoryFilter(
        statuses=statuses, to=to, sender=seen.get("from"), custom_string=seen.get("custom_string"),
        message_id=mid, username=seen.get("username"), country=country,
        body_contains=body.casefold() if body is not None else None,
    )


def parse_history_sort(order_by: str) -> HistorySort:
    """`field:asc|desc` (direction defaults to asc, as at ClickSend); empty means newest first."""
    order_by = order_by.strip()
    if not order_by:
        return HistorySort()
    name, _, direction = order_by.partition(":")
    name, direction = name.strip().lower(), (direction.strip().lower() or "asc")
    if name not in HISTORY_SORT_FIELDS or direction not in ("asc", "desc"):
        raise InvalidQuery(
            f"order_by must be field:asc or field:desc with fields {', '.join(sorted(HISTORY_SORT_FIELDS))}.",
            field="order_by",
        )
    return HistorySort(field=name, descending=direction == "desc")


def check_content_search(f: HistoryFilter, s: HistorySort, *, deidentified: bool) -> None:
    """De-identified users may not search or sort by what they cannot see."""
    if deidentified and (f.touches_content or s.on_content):
        raise SearchNotPermitted("Searching or sorting by to or body is not available to de-identified users.")


def matches_content(f: HistoryFilter, body: str, to: str) -> bool:
    """The decrypted-window part of a filter (the rest ran in the database)."""
    if f.body_contains is not None and f.body_contains not in body.casefold():
        return False
    return f.to is None or f.to == to
