"""The audit service's domain errors, each with its stable UPPER_SNAKE reason."""

from __future__ import annotations

from typing import ClassVar

from svckit.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied


class EventInvalid(InvalidArgument):
    reason = "EVENT_INVALID"


class PageTokenInvalid(InvalidArgument):
    reason = "PAGE_TOKEN_INVALID"


class FilterInvalid(InvalidArgument):
    reason = "FILTER_INVALID"


class EventNotFound(NotFound):
    reason = "EVENT_NOT_FOUND"


class TreeSizeInvalid(InvalidArgument):
    reason = "TREE_SIZE_INVALID"


class CheckpointNotFound(NotFound):
    reason = "CHECKPOINT_NOT_FOUND"


class IntegrityViolation(DomainError):
    """What is stored does not match what the log signed: the store was tampered with."""

    code: ClassVar[str] = "DATA_LOSS"
    reason = "INTEGRITY_VIOLATION"


class RuleInvalid(InvalidArgument):
    reason = "ALERT_RULE_INVALID"


class RuleNotFound(NotFound):
    reason = "ALERT_RULE_NOT_FOUND"


class TooManyRules(FailedPrecondition):
    reason = "TOO_MANY_ALERT_RULES"


class ForwardingInvalid(InvalidArgument):
    reason = "FORWARDING_INVALID"


class CursorInvalid(InvalidArgument):
    reason = "CURSOR_INVALID"


class AccountRequired(DomainError):
    code: ClassVar[str] = "PERMISSION_DENIED"
    reason = "ACCOUNT_PRINCIPAL_REQUIRED"


def need_account(account_id: int) -> None:
    """Alert rules, alerts, webhook secrets and forwarding belong to an account: the caller must act for one."""
    if account_id <= 0:
        raise AccountRequired("this call needs an account principal")


class SendPermissionRequired(PermissionDenied):
    reason = "SMS_SEND_REQUIRED"


class DestinationNotVerified(InvalidArgument):
    reason = "DESTINATION_NOT_VERIFIED"
