"""Identity's domain errors: stable UPPER_SNAKE reasons; svckit maps the kinds to gRPC codes."""

from __future__ import annotations

from svckit.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)


class UsernameInvalid(InvalidArgument):
    reason = "USERNAME_INVALID"


class EmailInvalid(InvalidArgument):
    reason = "EMAIL_INVALID"


class PhoneInvalid(InvalidArgument):
    reason = "PHONE_INVALID"


class CountryInvalid(InvalidArgument):
    reason = "COUNTRY_INVALID"


class NameInvalid(InvalidArgument):
    reason = "NAME_INVALID"


class UserLookupInvalid(InvalidArgument):
    reason = "USER_LOOKUP_INVALID"


class UserNotFound(NotFound):
    reason = "USER_NOT_FOUND"


class UsernameTaken(AlreadyExists):
    # ClickSend answers a duplicate api_username with ALREADY_EXISTS; so do we.
    reason = "ALREADY_EXISTS"


class PrincipalRequired(PermissionDenied):
    reason = "PRINCIPAL_REQUIRED"


class UserDisabled(PermissionDenied):
    reason = "USER_DISABLED"


class BalanceUnavailable(Unavailable):
    reason = "BALANCE_UNAVAILABLE"


class MissingRequiredFields(InvalidArgument):
    # ClickSend's application code for a request without its required fields.
    reason = "MISSING_REQUIRED_FIELDS"


class FlagInvalid(InvalidArgument):
    reason = "FLAG_INVALID"


class SubaccountNotFound(NotFound):
    reason = "NOT_FOUND"


class MainUserProtected(PermissionDenied):
    reason = "MAIN_USER_PROTECTED"


class DelegationExceedsActor(PermissionDenied):
    reason = "DELEGATION_EXCEEDS_ACTOR"


class RestrictionNotLiftable(PermissionDenied):
    reason = "RESTRICTION_NOT_LIFTABLE"


class OwnAccessUnchangeable(PermissionDenied):
    reason = "OWN_ACCESS_UNCHANGEABLE"


class InvalidCredentials(Unauthenticated):
    """One answer for an unknown user, a wrong password or code, a replayed code and a locked user."""

    reason = "INVALID_CREDENTIALS"

    def __init__(self) -> None:
        super().__init__("Invalid username, password or code.")


class MfaRequired(Unauthenticated):
    """The password was right; a second factor (TOTP or recovery code) must come with it."""

    reason = "MFA_REQUIRED"


class LoginThrottled(ResourceExhausted):
    reason = "LOGIN_THROTTLED"


class SessionInvalid(Unauthenticated):
    reason = "SESSION_INVALID"


class SessionRequired(PermissionDenied):
    reason = "SESSION_REQUIRED"


class PasswordRejected(InvalidArgument):
    reason = "PASSWORD_REJECTED"


class MfaAlreadyEnrolled(FailedPrecondition):
    reason = "MFA_ALREADY_ENROLLED"


class MfaNotPending(FailedPrecondition):
    reason = "MFA_NOT_PENDING"


class MfaNotEnrolled(FailedPrecondition):
    reason = "MFA_NOT_ENROLLED"


class MfaCodeInvalid(InvalidArgument):
    reason = "MFA_CODE_INVALID"


class StaffMfaMandatory(FailedPrecondition):
    reason = "STAFF_MFA_MANDATORY"


class ReasonRequired(InvalidArgument):
    reason = "REASON_REQUIRED"


class RoleInvalid(InvalidArgument):
    reason = "ROLE_INVALID"


class StaffNotFound(NotFound):
    reason = "STAFF_NOT_FOUND"


class AccountNotFound(NotFound):
    reason = "ACCOUNT_NOT_FOUND"


class OwnRoleChange(PermissionDenied):
    reason = "OWN_ROLE_CHANGE"


class RoleNotGrantable(PermissionDenied):
    reason = "ROLE_NOT_GRANTABLE"


class StaffOnly(PermissionDenied):
    reason = "STAFF_ONLY"


class SessionNotFound(NotFound):
    reason = "SESSION_NOT_FOUND"


class CodeChoice(InvalidArgument):
    reason = "ONE_SECOND_FACTOR"


class AccountNameMismatch(InvalidArgument):
    reason = "ACCOUNT_NAME_MISMATCH"


class MainUserOnly(PermissionDenied):
    reason = "MAIN_USER_ONLY"


class AccountClosing(FailedPrecondition):
    reason = "ACCOUNT_CLOSING"


class AccountNotClosing(FailedPrecondition):
    reason = "ACCOUNT_NOT_CLOSING"


class AccountClosed(FailedPrecondition):
    """Too late: the account's keys are destroyed."""

    reason = "ACCOUNT_CLOSED"
