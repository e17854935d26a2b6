"""Closing an account: the state machine of its closure and what the main user may do meanwhile. Pure.

    open --close--> closing --(window ends, every final step done)--> closed
      ^               |
      +---cancel------+   (only while the account's keys still exist)

At once on close (in this order, each retried until done): the account's sessions end, its API keys are revoked,
its sends stop (scheduled and queued messages cancelled and refunded), its keys enter destruction with the pending
window. At the end of the window, once the keys service has destroyed the keys: the keys service's rows, then
messaging's, then audit's configuration are purged, the signed receipt is emailed to the owner, and identity's own
rows go last (the account row keeps its id, state, times and the receipt's hash)."""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from services.identity.domain.errors import (
    AccountClosing,
    AccountNameMismatch,
    AccountNotClosing,
    MainUserOnly,
)


class ClosureState(enum.StrEnum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


IMMEDIATE_STEPS: Final = ("sessions_ended", "api_keys_revoked", "sends_stopped", "keys_scheduled")
FINAL_STEPS: Final = ("keys_purged", "messaging_purged", "audit_purged", "receipt_sent", "identity_purged")
CLOSING_PERMISSIONS: Final = frozenset({"account.close"})
"""What the main user of a closing account holds: see or cancel the closure, nothing else (no sub-account holds
anything)."""
OWNER_EMAIL_RECORD: Final = "identity.closure.owner_email"
"""Associated-data record type of the owner's address kept, sealed under the platform's key, for the receipt."""


@dataclass(frozen=True)
class Closure:
    account_id: int
    state: ClosureState
    request_time: datetime | None = None
    destroy_time: datetime | None = None
    steps_done: tuple[str, ...] = ()
    requested_by: str = ""

    def next_steps(self, now: datetime) -> list[str]:
        """What is left to do now, in order: the immediate steps; then, once the window has ended, the final
        ones (each only after every step before it)."""
        if self.state is not ClosureState.CLOSING:
            return []
        todo = [s for s in IMMEDIATE_STEPS if s not in self.steps_done]
        if todo or self.destroy_time is None or now < self.destroy_time:
            return todo
        return [s for s in FINAL_STEPS if s not in self.steps_done]


def permissions_while(state: str, is_main: bool, held: frozenset[str]) -> frozenset[str]:
    """A user's permissions given its account's state: unchanged while open; while closing, the main user holds
    only CLOSING_PERMISSIONS and nobody else anything; closed: nothing."""
    if state == ClosureState.OPEN:
        return held
    if state == ClosureState.CLOSING and is_main and held:
        return CLOSING_PERMISSIONS
    return frozenset()


def check_close(state: ClosureState, is_main: bool, typed_name: str, account_name: str) -> None:
    """May this user close the account now, having typed `typed_name` back?"""
    if not is_main:
        raise MainUserOnly("only the account's main user may close it")
    if state is not ClosureState.OPEN:
        raise AccountClosing("the account is already closing")
    if not typed_name or not hmac.compare_digest(typed_name.strip().encode(), account_name.encode()):
        raise AccountNameMismatch("type the account's name exactly as GET /v3/account shows it")


def check_cancel(state: ClosureState) -> None:
    if state is not ClosureState.CLOSING:
        raise AccountNotClosing("the account is not closing")


def receipt_reference(receipt: bytes) -> str:
    """What the closed account row keeps of its destruction receipt: its SHA-256 (the receipt itself is in the
    audit log and the keys service)."""
    return hashlib.sha256(receipt).hexdigest()
