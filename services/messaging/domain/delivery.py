"""Delivery: what the worker claims and submits, how carrier answers split into sent/retry/failed, retry
backoff, receipts, and the carrier callbacks' signature."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

from services.messaging.domain.statuses import TEMPORARY_FAILURE_ERROR, UNKNOWN_FAILURE_ERROR, MessageStatus


def retry_delay(attempt: int, base_seconds: float, cap_seconds: float) -> float:
    """Exponential backoff after the `attempt`-th failed try (1-based): base, 2*base, 4*base ... cap."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    return float(min(cap_seconds, base_seconds * (2 ** min(attempt - 1, 30))))


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    """A message a worker has claimed for sending (status SENDING, `attempts` already counted)."""

    id: str
    account_id: int
    body_ct: bytes
    to_ct: bytes
    sender: str
    attempts: int
    is_test: bool
    cause: str = ""


@dataclass(frozen=True, slots=True)
class Submission:
    """What a carrier adapter receives: our message id is the carrier's idempotency key."""

    message_id: str
    to: str
    body: str
    sender: str
    attempt: int


@dataclass(frozen=True, slots=True)
class SubmitResult:
    message_id: str
    accepted: bool
    carrier_ref: str = ""
    error_code: int | None = None  # ClickSend gateway error code when not accepted
    carrier: str = ""  # the carrier that answered, when a router chose it ("" = the adapter's own name)

    @property
    def temporary(self) -> bool:
        return not self.accepted and self.error_code in (None, TEMPORARY_FAILURE_ERROR)


@dataclass(frozen=True, slots=True)
class Receipt:
    """A delivery report from a carrier: a final state for one of our messages, named by our message id
    or, when the carrier only knows its own, by the carrier's reference."""

    message_id: str
    status: MessageStatus
    error_code: int | None = None
    carrier_ref: str = ""


def plan_results(
    claimed: list[ClaimedMessage], results: list[SubmitResult], max_attempts: int
) -> tuple[list[SubmitResult], list[tuple[str, int]], list[tuple[str, int]]]:
    """Split carrier answers into (sent, retry [(id, attempts)], failed [(id, error_code)]).

    Temporary failures are retried until `max_attempts` claims have been made; permanent failures and
    exhausted retries fail the message. A claimed message the carrier did not answer for counts as a
    temporary failure.
    """
    by_id = {r.message_id: r for r in results}
    sent: list[SubmitResult] = []
    retry: list[tuple[str, int]] = []
    failed: list[tuple[str, int]] = []
    for m in claimed:
        r = by_id.get(m.id) or SubmitResult(m.id, accepted=False, error_code=TEMPORARY_FAILURE_ERROR)
        if r.accepted:
            sent.append(r)
        elif r.temporary and m.attempts < max_attempts:
            retry.append((m.id, m.attempts))
        else:
            code = r.error_code if r.error_code is not None and not r.temporary else UNKNOWN_FAILURE_ERROR
            failed.append((m.id, code))
    return sent, retry, failed


SIGNATURE_TOLERANCE_S: Final = 300


def webhook_signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """A carrier callback's `X-Carrier-Signature`: `v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`
    (the timestamp is signed with the body so a captured request cannot be replayed later). Customer
    webhooks are signed the Standard Webhooks way instead (svckit.webhooks)."""
    mac = hmac.new(secret, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={mac}"


def verify_signature(secret: bytes, timestamp: str, body: bytes, header: str, now: int,
                     tolerance: int = SIGNATURE_TOLERANCE_S) -> bool:
    """Constant-time check of any `v1=` value in `header` (several are allowed during secret rotation),
    and the timestamp within `tolerance` seconds of now."""
    if not timestamp.isdigit() or len(timestamp) > 12 or abs(now - int(timestamp)) > tolerance:
        return False
    expected = webhook_signature(secret, int(timestamp), body)
    ok = False
    for candidate in header.split(","):
        ok |= hmac.compare_digest(candidate.strip().encode(), expected.encode())
    return ok
