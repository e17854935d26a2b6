"""Security notifications to an account's owners (issue 14): recorded by the alert engine's pass over new
events (in its transaction, so each event is noticed exactly once), emailed through messaging to the
account's owners, retried with backoff, and listed to the account with their delivery state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from services.audit.domain.delivery import retry_delay
from services.audit.domain.errors import need_account
from services.audit.domain.evaluation import EventFacts
from services.audit.domain.paging import page_size_of, parse_page_token
from services.audit.domain.security_notices import (
    CANDIDATE_ACTIONS,
    NEW_SIGN_IN,
    OUTCOME_SUCCESS,
    PENDING,
    SENT,
    NoticeEvent,
    StoredNotice,
    delivery_outcome,
    is_new_sign_in,
    notice_kind,
    render,
    sign_in_ask,
)
from services.audit.service import formats
from services.audit.service.ports import DeliveryError, NoticeStore, NoticeTx, OwnerMailer

_LOG = logging.getLogger(__name__)


class SecurityNotices:
    def __init__(self, store: NoticeStore, mailer: OwnerMailer | None, *, retry_base: float = 5.0) -> None:
        self._store = store
        self._mailer = mailer
        self._retry_base = retry_base
        self.recorded = 0
        self.sent = 0
        self.failures = 0

    async def record(self, tx: NoticeTx, rows: Sequence[tuple[int, bytes]], facts: Sequence[EventFacts]) -> int:
        """Inside the engine's transaction: the notices these events call for. Returns how many were new."""
        candidates: list[tuple[str, NoticeEvent]] = []
        for (sequence, leaf), f in zip(rows, facts, strict=True):
            if f.action not in CANDIDATE_ACTIONS or f.outcome != OUTCOME_SUCCESS or f.account_id <= 0:
                continue
            ev = formats.notice_event(sequence, leaf)
            kind = notice_kind(ev)
            if kind:
                candidates.append((kind, ev))
        # Sign-ins: one query for the batch's, each against the log before it.
        asks = {ev.sequence: ask for kind, ev in candidates if kind == NEW_SIGN_IN and (ask := sign_in_ask(ev))}
        answers = dict(zip(asks, await tx.sign_in_history(list(asks.values())), strict=True))
        notices = [render(kind, ev) for kind, ev in candidates
                   if kind != NEW_SIGN_IN or (ev.sequence in answers and is_new_sign_in(*answers[ev.sequence]))]
        n = await tx.insert_notices(notices)
        self.recorded += n
        return n

    async def list(self, account_id: int, page_size: int, page_token: str) -> tuple[list[StoredNotice], str]:
        need_account(account_id)
        limit = page_size_of(page_size)
        notices = await self._store.notices(account_id, parse_page_token(page_token), limit)
        return notices, str(notices[-1].notice_id) if len(notices) == limit else ""

    async def deliver_due(self, limit: int = 50, lease_seconds: float = 120.0) -> int:
        """Email the notices that are due (each leased, so replicas never send one twice at once)."""
        due = await self._store.claim_notices(limit, lease_seconds)
        if due:
            await asyncio.gather(*(self._deliver(n) for n in due))
        return len(due)

    async def _deliver(self, notice: StoredNotice) -> None:
        attempts = notice.attempts + 1
        try:
            if self._mailer is None:
                raise DeliveryError("MESSAGING_NOT_CONFIGURED", retryable=False)
            # The same notification_id on every attempt: messaging's idempotency key for this email.
            await self._mailer.email_owners(notice.account_id, notice.subject, notice.body,
                                            f"security-notice-{notice.notice_id}")
        except DeliveryError as err:
            self.failures += 1
            status, reason = delivery_outcome(err.reason, err.retryable, attempts)
            await self._store.finish_notice(notice.notice_id, status, attempts, reason,
                                            retry_delay(attempts, self._retry_base) if status == PENDING else 0.0)
            _LOG.info("security notice %d (%s) not sent: %s", notice.notice_id, notice.kind, reason)
        except Exception:
            self.failures += 1
            _LOG.exception("security notice %d crashed", notice.notice_id)
            status, reason = delivery_outcome("INTERNAL", True, attempts)
            await self._store.finish_notice(notice.notice_id, status, attempts, reason,
                                            retry_delay(attempts, self._retry_base) if status == PENDING else 0.0)
        else:
            self.sent += 1
            await self._store.finish_notice(notice.notice_id, SENT, attempts, "", 0.0)
