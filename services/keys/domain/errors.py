"""Every error the keys service reports, with its stable reason (svckit.errors kinds)."""

from __future__ import annotations

from svckit.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unauthenticated


class InvalidCredentials(Unauthenticated):
    """Every way a key can fail before its secret is proven, with one message: no oracle for guessers."""

    reason = "INVALID_CREDENTIALS"

    def __init__(self) -> None:
        super().__init__("the API key is not valid")


class ApiKeyRevoked(Unauthenticated):
    """Shown only to someone who holds the real secret: telling them why is safe and helps them."""

    reason = "API_KEY_REVOKED"

    def __init__(self) -> None:
        super().__init__("the API key has been revoked")


class ApiKeyExpired(Unauthenticated):
    reason = "API_KEY_EXPIRED"

    def __init__(self) -> None:
        super().__init__("the API key has expired")


class AddressNotAllowed(PermissionDenied):
    reason = "API_KEY_ADDRESS_NOT_ALLOWED"

    def __init__(self) -> None:
        super().__init__("the API key may not be used from this address (see its allowed_cidrs)")


class ApiKeyNotFound(NotFound):
    reason = "API_KEY_NOT_FOUND"

    def __init__(self) -> None:
        super().__init__("no such API key")


class ApiKeyInactive(FailedPrecondition):
    reason = "API_KEY_INACTIVE"


class ApiKeyAlreadyRolled(FailedPrecondition):
    reason = "API_KEY_ALREADY_ROLLED"


class ScopeInvalid(InvalidArgument):
    reason = "SCOPE_INVALID"


class ScopeNotHeld(PermissionDenied):
    reason = "SCOPE_NOT_HELD"


class ExceedsCallingKey(PermissionDenied):
    """A key made with an API key may not be stronger than that key (no escalation by minting)."""

    reason = "EXCEEDS_CALLING_KEY"


class ExpiryInvalid(InvalidArgument):
    reason = "EXPIRY_INVALID"


class CidrInvalid(InvalidArgument):
    reason = "ALLOWED_CIDR_INVALID"


class SendLimitsInvalid(InvalidArgument):
    reason = "SEND_LIMITS_INVALID"


class PrincipalRequired(PermissionDenied):
    reason = "PRINCIPAL_REQUIRED"


class DecryptFailed(InvalidArgument):
    reason = "DECRYPT_FAILED"

    def __init__(
        self,
        message: str = "the data failed authentication: it was altered, or the encryption context differs",
    ) -> None:
        super().__init__(message)


class KeyAccountMismatch(InvalidArgument):
    reason = "KEY_ACCOUNT_MISMATCH"

    def __init__(self) -> None:
        super().__init__("the data belongs to another account")


class KeyVersionUnknown(FailedPrecondition):
    reason = "KEY_VERSION_UNKNOWN"

    def __init__(self) -> None:
        super().__init__("the data names a key version this account does not have")


class KeyVersionRetired(FailedPrecondition):
    reason = "KEY_VERSION_RETIRED"

    def __init__(self, version: int, minimum: int) -> None:
        super().__init__(
            f"key version {version} is retired (the minimum decryption version is {minimum})",
            version=str(version), min_decryption_version=str(minimum),
        )


class KeysDestroyed(FailedPrecondition):
    reason = "KEYS_DESTROYED"

    def __init__(self) -> None:
        super().__init__("the account's keys were destroyed: its data can never be decrypted again")


class KeysPendingDestruction(FailedPrecondition):
    reason = "KEYS_PENDING_DESTRUCTION"

    def __init__(self) -> None:
        super().__init__("the account's keys are scheduled for destruction: every use fails until it is cancelled")


class AccountKeysNotFound(NotFound):
    reason = "ACCOUNT_KEYS_NOT_FOUND"

    def __init__(self) -> None:
        super().__init__("this account has no keys yet")


class NotPendingDestruction(FailedPrecondition):
    reason = "NOT_PENDING_DESTRUCTION"


class KeysNotDestroyed(FailedPrecondition):
    """An account's data is purged only after its keys are destroyed (the receipt exists)."""

    reason = "KEYS_NOT_DESTROYED"


class RewrapIncomplete(FailedPrecondition):
    """A version cannot be retired yet: data owners still hold items under older versions (or have not
    finished a rewrap pass since the new minimum existed)."""

    reason = "REWRAP_INCOMPLETE"


class KeyPolicyInvalid(InvalidArgument):
    reason = "KEY_POLICY_INVALID"


class ContextInvalid(InvalidArgument):
    reason = "ENCRYPTION_CONTEXT_INVALID"


class PlaintextTooLarge(InvalidArgument):
    reason = "PLAINTEXT_TOO_LARGE"


class BatchTooLarge(InvalidArgument):
    reason = "BATCH_TOO_LARGE"


class RequestInvalid(InvalidArgument):
    reason = "INVALID_ARGUMENT"


class RootKeyInvalid(InvalidArgument):
    reason = "ROOT_KEY_INVALID"
