"""Alpha tags: a customer requests, lists, reads and cancels its tags; staff list them across accounts, approve
(evidence for a protected name), reject or revoke them with a reason, and edit the protected sender names.

Every change is an audit event stored before the change commits (the store calls back inside its transaction;
staff decisions are privileged, so their events fail closed). A staff decision writes one event to the customer's
feed (actor staff, the reason: the customer sees why) and one to the platform's feed (with the account acted on),
as every staff action does; an approval also records `messaging.sender.activated` in the customer's feed, the
security event that notifies the owners that the account has a new sender identity."""

from __future__ import annotations

from dataclasses import dataclass

from sendsafe.audit.v1 import event_pb2
from services.messaging.domain.alpha_tags import (
    AlphaTag,
    AlphaTagExists,
    AlphaTagNotFound,
    AlphaTagState,
    AlphaTagWrongState,
    ProtectedName,
    ProtectedNameExists,
    ProtectedNameNotFound,
    Review,
    check_alpha_tag_id,
    check_countries,
    check_protected_name,
    check_reason,
    check_tag,
    new_alpha_tag_id,
    normalize,
    protected_match,
    review,
)
from services.messaging.domain.records import Caller
from services.messaging.service.ports import SERVICE, AlphaTagStore, Record
from svckit.audit import new_event
from svckit.errors import PermissionDenied

RESOURCE = "alpha_tag"
SENDER_ACTIVATED = "messaging.sender.activated"
MAX_PAGE = 1000
DEFAULT_PAGE = 10


@dataclass(frozen=True)
class TagPage:
    items: list[AlphaTag]
    next_cursor: int  # 0: the last page


@dataclass(frozen=True)
class ReviewItem:
    tag: AlphaTag
    protected_name: str  # the protected name it imitates now ("" none)


class AlphaTags:
    def __init__(self, store: AlphaTagStore, record: Record) -> None:
        self._store = store
        self._record = record

    # -- the customer ------------------------------------------------------------------------------------------

    async def request(self, caller: Caller, tag: str, reason: str, countries: list[str]) -> AlphaTag:
        _customer(caller)
        value = check_tag(tag)
        new = AlphaTag(id=new_alpha_tag_id(), account_id=caller.account_id, user_id=caller.user_id, tag=value,
                       normalized=normalize(value), request_reason=check_reason(reason),
                       state=AlphaTagState.REQUESTED, countries=check_countries(countries))

        async def audit() -> None:
            await self._record(self._event("messaging.alpha_tag.requested", new, {}))

        created = await self._store.create_alpha_tag(new, audit)
        if created is None:
            raise AlphaTagExists(f"The account has already requested or holds the alpha tag {value!r}.")
        return created

    async def get(self, caller: Caller, alpha_tag_id: str) -> AlphaTag:
        _customer(caller)
        found = await self._store.alpha_tag(check_alpha_tag_id(alpha_tag_id), caller.account_id)
        if found is None:
            raise AlphaTagNotFound("No such alpha tag.")
        return found

    async def page(self, caller: Caller, descending: bool, page_size: int, cursor: int) -> TagPage:
        _customer(caller)
        limit = min(max(page_size or DEFAULT_PAGE, 1), MAX_PAGE)
        rows = await self._store.alpha_tags(caller.account_id, descending, max(cursor, 0), limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return TagPage([t for _, t in rows], rows[-1][0] if more else 0)

    async def cancel(self, caller: Caller, alpha_tag_id: str) -> None:
        _customer(caller)
        tag_id = check_alpha_tag_id(alpha_tag_id)

        async def audit(tag: AlphaTag) -> None:
            await self._record(self._event("messaging.alpha_tag.cancelled", tag, {}))

        if await self._store.cancel_alpha_tag(caller.account_id, tag_id, audit) is None:
            if await self._store.alpha_tag(tag_id, caller.account_id) is None:
                raise AlphaTagNotFound("No such alpha tag.")
            raise AlphaTagWrongState("This alpha tag is already rejected, revoked or cancelled.")

    # -- staff -------------------------------------------------------------------------------------------------

    async def reviews(self, caller: Caller, state: AlphaTagState | None, after: int, limit: int
                      ) -> tuple[list[ReviewItem], int]:
        """Tags across accounts in one state (default REQUESTED), with the protected name each imitates."""
        _staff(caller)
        limit = min(max(limit or 50, 1), 200)
        rows = await self._store.alpha_tags_in_state(state or AlphaTagState.REQUESTED, max(after, 0), limit)
        names = await self._store.protected_names()
        items = [ReviewItem(t, m.name if (m := protected_match(t.tag, names)) else "") for _, t in rows]
        ev = new_event(SERVICE, "messaging.staff.alpha_tags_listed", resource_type=RESOURCE,
                       details={"state": (state or AlphaTagState.REQUESTED).value, "count": str(len(items))})
        await self._record(ev)  # the platform's feed: which staff member looked at which accounts' requests
        return items, rows[-1][0] if len(rows) == limit else 0

    async def approve(self, caller: Caller, alpha_tag_id: str, reason: str, evidence: str) -> ReviewItem:
        return await self._decide(caller, alpha_tag_id, AlphaTagState.APPROVED, reason, evidence)

    async def reject(self, caller: Caller, alpha_tag_id: str, reason: str) -> ReviewItem:
        return await self._decide(caller, alpha_tag_id, AlphaTagState.REJECTED, reason, "")

    async def revoke(self, caller: Caller, alpha_tag_id: str, reason: str) -> ReviewItem:
        return await self._decide(caller, alpha_tag_id, AlphaTagState.REVOKED, reason, "")

    async def _decide(self, caller: Caller, alpha_tag_id: str, decision: AlphaTagState, reason: str,
                      evidence: str) -> ReviewItem:
        _staff(caller)
        current = await self._store.alpha_tag(check_alpha_tag_id(alpha_tag_id))
        if current is None:
            raise AlphaTagNotFound("No such alpha tag.")
        verdict = review(current, decision, caller.user_id, reason, evidence, await self._store.protected_names())

        async def audit(tag: AlphaTag) -> None:
            await self._staff_events(caller, tag, verdict)

        done = await self._store.review_alpha_tag(current, verdict, audit)
        if done is None:
            raise AlphaTagWrongState("This alpha tag changed while it was being reviewed; look at it again.")
        return ReviewItem(done, verdict.protected_name)

    async def _staff_events(self, caller: Caller, tag: AlphaTag, verdict: Review) -> None:
        """The decision in the customer's feed and the platform's (and the new sender identity, on approval)."""
        action = f"messaging.alpha_tag.{verdict.state.value}"
        details = {"reason": verdict.reason, "staff_id": str(caller.user_id)}
        if verdict.protected_name:
            details["protected_name"] = verdict.protected_name
            details["evidence_recorded"] = "true"
        await self._record(self._event(action, tag, details, subject=tag.account_id))
        platform = self._event(action, tag, {**details, "customer_account_id": str(tag.account_id)})
        if verdict.evidence:
            platform.details["evidence"] = verdict.evidence
        await self._record(platform)
        if verdict.state is AlphaTagState.APPROVED:
            await self._record(self._event(SENDER_ACTIVATED, tag, {"sender_type": "alpha_tag"},
                                           subject=tag.account_id, resource="sender_identity"))

    async def protected_names(self, caller: Caller) -> list[ProtectedName]:
        _staff(caller)
        return await self._store.protected_names()

    async def add_protected_name(self, caller: Caller, name: str, category: str, reason: str) -> ProtectedName:
        _staff(caller)
        checked = check_protected_name(name, category)
        why = check_reason(reason)
        new = ProtectedName(checked.name, checked.skeleton, checked.category, added_by=f"staff:{caller.user_id}")

        async def audit() -> None:
            await self._record(self._name_event("messaging.protected_name.added", new, why))

        added = await self._store.add_protected_name(new, audit)
        if added is None:
            raise ProtectedNameExists(f"{checked.name!r} is protected already (as {checked.skeleton}).")
        return added

    async def remove_protected_name(self, caller: Caller, skeleton: str, reason: str) -> None:
        _staff(caller)
        why = check_reason(reason)

        async def audit(name: ProtectedName) -> None:
            await self._record(self._name_event("messaging.protected_name.removed", name, why))

        if not await self._store.remove_protected_name((skeleton or "").strip().upper(), audit):
            raise ProtectedNameNotFound("No protected sender name has that skeleton.")

    # -- events ------------------------------------------------------------------------------------------------

    def _event(self, action: str, tag: AlphaTag, extra: dict[str, str], *, subject: int = 0,
               resource: str = RESOURCE) -> event_pb2.Event:
        details = {"alpha_tag_id": tag.id, "alpha_tag": tag.tag, "state": tag.state.value, **extra}
        return new_event(SERVICE, action, resource_type=resource, resource_id=tag.id, details=details,
                         subject_account_id=subject)

    def _name_event(self, action: str, name: ProtectedName, reason: str) -> event_pb2.Event:
        return new_event(SERVICE, action, resource_type="protected_sender_name", resource_id=name.skeleton,
                         details={"name": name.name, "category": name.category, "reason": reason})


def _customer(caller: Caller) -> None:
    if caller.staff:
        raise PermissionDenied("Staff review alpha tags through /v1/staff/alpha-tags.")


def _staff(caller: Caller) -> None:
    if not caller.staff:
        raise PermissionDenied("Only SendSafe staff review alpha tags and edit protected sender names.")
