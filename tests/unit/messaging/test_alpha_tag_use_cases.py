"""Alpha tag use cases over an in-memory store: the audit event is stored inside the change's transaction, so an
audit log that refuses it leaves nothing changed (fail closed); who may call what; which feeds a decision goes to."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

import pytest

from sendsafe.audit.v1 import event_pb2
from services.messaging.domain.alpha_tags import AlphaTag, AlphaTagState, ProtectedName, Review
from services.messaging.domain.records import Caller
from services.messaging.service.alpha_tags import AlphaTags
from svckit.errors import PermissionDenied, Unavailable

CUSTOMER = Caller(account_id=40, user_id=7, api_username="shop")
STAFF = Caller(account_id=1, user_id=900, api_username="reviewer", staff=True)


class MemoryStore:
    """What PgAlphaTagStore does, in memory: a change is kept only if its before_commit returns."""

    def __init__(self) -> None:
        self.tags: dict[str, AlphaTag] = {}
        self.names = [ProtectedName("Westpac", "WESTPAC", "bank")]

    async def create_alpha_tag(self, tag: AlphaTag, before_commit: Callable[[], Awaitable[None]]) -> AlphaTag | None:
        if any(t.account_id == tag.account_id and t.normalized == tag.normalized for t in self.tags.values()):
            return None
        await before_commit()
        self.tags[tag.id] = tag
        return tag

    async def alpha_tag(self, alpha_tag_id: str, account_id: int | None = None) -> AlphaTag | None:
        t = self.tags.get(alpha_tag_id)
        return t if t is not None and account_id in (None, t.account_id) else None

    async def review_alpha_tag(self, current: AlphaTag, decision: Review,
                               before_commit: Callable[[AlphaTag], Awaitable[None]]) -> AlphaTag | None:
        done = dataclasses.replace(current, state=decision.state, review_reason=decision.reason,
                                   reviewer_staff_id=decision.staff_id, evidence=decision.evidence)
        await before_commit(done)
        self.tags[done.id] = done
        return done

    async def protected_names(self) -> list[ProtectedName]:
        return list(self.names)


class Log:
    def __init__(self) -> None:
        self.events: list[event_pb2.Event] = []
        self.down = False

    async def record(self, ev: event_pb2.Event) -> None:
        if self.down:
            raise Unavailable("audit log unavailable")
        self.events.append(ev)


def _tags() -> tuple[AlphaTags, MemoryStore, Log]:
    store, log = MemoryStore(), Log()
    return AlphaTags(store, log.record), store, log  # type: ignore[arg-type]


def test_a_decision_the_audit_log_cannot_record_changes_nothing() -> None:
    async def run() -> None:
        tags, store, log = _tags()
        t = await tags.request(CUSTOMER, "Cafe Roma", "our name", [])
        log.down = True
        with pytest.raises(Unavailable):
            await tags.approve(STAFF, t.id, "fine", "")
        assert store.tags[t.id].state is AlphaTagState.REQUESTED
        with pytest.raises(Unavailable):
            await tags.request(CUSTOMER, "Deli", "another", [])
        assert [x.tag for x in store.tags.values()] == ["Cafe Roma"]

    asyncio.run(run())


def test_a_decision_goes_to_the_customers_feed_and_the_platforms_and_activates_a_sender() -> None:
    async def run() -> None:
        tags, _, log = _tags()
        t = await tags.request(CUSTOMER, "W3stpac SMS", "we are the bank", [])
        done = await tags.approve(STAFF, t.id, "the bank itself", "APRA licence 1")
        assert done.protected_name == "Westpac" and done.tag.state is AlphaTagState.APPROVED
        got = [(e.action, e.subject_account_id, dict(e.details)) for e in log.events[1:]]
        assert [(a, s) for a, s, _ in got] == [
            ("messaging.alpha_tag.approved", 40), ("messaging.alpha_tag.approved", 0),
            ("messaging.sender.activated", 40)]
        customer, platform, activated = (d for _, _, d in got)
        assert customer["reason"] == platform["reason"] == "the bank itself"
        assert customer["evidence_recorded"] == "true" and "evidence" not in customer
        assert platform["evidence"] == "APRA licence 1" and platform["customer_account_id"] == "40"
        assert activated["sender_type"] == "alpha_tag" and activated["alpha_tag"] == "W3stpac SMS"
        assert "we are the bank" not in str(got)  # the customer's own reason is not copied into events

    asyncio.run(run())


def test_customers_do_not_review_and_staff_do_not_request() -> None:
    async def run() -> None:
        tags, _, _ = _tags()
        t = await tags.request(CUSTOMER, "Cafe Roma", "our name", [])
        with pytest.raises(PermissionDenied):
            await tags.approve(CUSTOMER, t.id, "self-approved", "")
        with pytest.raises(PermissionDenied):
            await tags.request(STAFF, "Cafe Roma", "for them", [])
        with pytest.raises(PermissionDenied):
            await tags.add_protected_name(CUSTOMER, "Acme", "brand", "mine now")

    asyncio.run(run())
