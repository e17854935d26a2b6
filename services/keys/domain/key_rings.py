"""Account key rings: versions, retirement (minimum decryption version), rotation periods and destruction.

Key hierarchy::

    root key (RootKeyProvider: local file/env now, a KMS or HSM later; named by a key id)
      └─ wraps  per-account key-encryption keys (KEK), versioned: AES-256-GCM, AAD = account id + version
           ├─ wrap  data keys (32 random bytes) handed to callers (svckit.envelope encrypts records with them)
           └─ (through an HKDF subkey) encrypt small secrets directly (Encrypt/Decrypt)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.keys.domain.errors import (
    KeyPolicyInvalid,
    KeysDestroyed,
    KeysPendingDestruction,
    KeyVersionRetired,
    KeyVersionUnknown,
    RequestInvalid,
)
from services.keys.domain.root_key import RootWrapped


class RingState(enum.StrEnum):
    ENABLED = "enabled"
    PENDING_DESTRUCTION = "pending_destruction"
    DESTROYED = "destroyed"


MIN_ROTATION_PERIOD = timedelta(hours=1)
MAX_PENDING_WINDOW = timedelta(days=30)
MAX_KEK_VERSION = 0x7FFFFFFF  # key_version is an int32 on the wire


@dataclass(frozen=True)
class AccountRing:
    """An account's key ring: which version new data uses, which versions still decrypt, its lifecycle."""

    account_id: int
    current_version: int
    min_decryption_version: int = 1
    state: RingState = RingState.ENABLED
    rotation_period_seconds: int = 0  # 0: the service default
    destroy_time: datetime | None = None  # pending: when it will be destroyed; destroyed: when it was
    current_create_time: datetime | None = None

    def check_usable(self) -> None:
        if self.state is RingState.DESTROYED:
            raise KeysDestroyed()
        if self.state is RingState.PENDING_DESTRUCTION:
            raise KeysPendingDestruction()

    def check_decrypt(self, version: int) -> None:
        self.check_usable()
        if not 0 < version <= self.current_version:
            raise KeyVersionUnknown()
        if version < self.min_decryption_version:
            raise KeyVersionRetired(version, self.min_decryption_version)

    def version_state(self, version: int, destroyed: bool) -> str:
        if destroyed or self.state is RingState.DESTROYED:
            return "destroyed"
        if version == self.current_version:
            return "primary"
        return "retired" if version < self.min_decryption_version else "enabled"

    def next_rotation_time(self, default_period: timedelta) -> datetime | None:
        period = timedelta(seconds=self.rotation_period_seconds) if self.rotation_period_seconds else default_period
        if not period or self.current_create_time is None or self.state is not RingState.ENABLED:
            return None
        return self.current_create_time + period


@dataclass(frozen=True)
class StoredKek:
    """One version of an account's KEK as stored: wrapped by the root key (None once destroyed)."""

    account_id: int
    version: int
    wrapped: RootWrapped | None
    create_time: datetime | None = None


def check_account_id(account_id: int) -> None:
    if account_id <= 0:
        raise RequestInvalid("account_id must be positive")


def check_policy(
    ring: AccountRing, rotation_period_seconds: int | None, min_decryption_version: int | None
) -> tuple[int, int]:
    """(rotation period, minimum decryption version) after a policy change, or KeyPolicyInvalid."""
    ring.check_usable()
    period = ring.rotation_period_seconds if rotation_period_seconds is None else rotation_period_seconds
    if period and period < MIN_ROTATION_PERIOD.total_seconds():
        raise KeyPolicyInvalid("rotation_period_seconds must be 0 (the default) or at least 3600")
    minimum = ring.min_decryption_version if min_decryption_version is None else min_decryption_version
    if not 1 <= minimum <= ring.current_version:
        raise KeyPolicyInvalid(f"min_decryption_version must be between 1 and {ring.current_version} (current)")
    return period, minimum


def check_pending_window(seconds: int, minimum: timedelta) -> timedelta:
    window = timedelta(seconds=seconds)
    if not minimum <= window <= MAX_PENDING_WINDOW:
        raise KeyPolicyInvalid(
            f"pending_window_seconds must be between {int(minimum.total_seconds())} and"
            f" {int(MAX_PENDING_WINDOW.total_seconds())}"
        )
    return window
