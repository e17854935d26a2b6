"""Identity's sign-in counters (svckit.metrics serves them on the process's /metrics).

Labels are the kind of principal (user or staff), an outcome (`success` or the error's stable UPPER_SNAKE
reason: a bounded set) and nothing else: never an account, a user, a username or an address.
"""

from __future__ import annotations

from prometheus_client import Counter

LOGINS = Counter("sendsafe_identity_logins", "Logins by kind (user, staff) and outcome (success or the error's "
                 "reason: INVALID_CREDENTIALS, MFA_REQUIRED, LOGIN_THROTTLED, NETWORK_NOT_ALLOWED, ...).",
                 ["kind", "outcome"])
LOCKOUTS = Counter("sendsafe_identity_lockouts", "Principals locked out after too many failed sign-ins, by kind.",
                   ["kind"])
STEP_UPS = Counter("sendsafe_identity_step_ups", "Step-ups (a second factor again for privileged work) by "
                   "outcome (success or the error's reason).", ["outcome"])


def outcome_of(error: BaseException | None) -> str:
    """`success`, or the error's stable reason (INTERNAL for anything without one)."""
    if error is None:
        return "success"
    reason = getattr(error, "reason", "")
    return reason if isinstance(reason, str) and reason.isupper() else "INTERNAL"


# Known series start at 0, so rate() and alerts see the first event (and the dashboard a flat line before it).
for _kind in ("user", "staff"):
    LOGINS.labels(_kind, "success")
    LOGINS.labels(_kind, "INVALID_CREDENTIALS")
    LOCKOUTS.labels(_kind)
STEP_UPS.labels("success")
STEP_UPS.labels("INVALID_CREDENTIALS")
