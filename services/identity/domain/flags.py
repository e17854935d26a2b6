"""The ClickSend access flags of a user and the permissions they grant (who holds which permission is
`svckit.permissions`' one table). Pure."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Final

from svckit.permissions import ALWAYS, PERMISSION_FLAGS


@dataclass(frozen=True)
class AccessFlags:
    """The ClickSend sub-account flags. Defaults are least privilege: a new non-main user can do
    nothing but read its own account until flags are granted (ClickSend defaults several to 1)."""

    access_users: bool = False
    access_billing: bool = False
    access_reporting: bool = False
    access_contacts: bool = False
    access_settings: bool = False
    access_sms: bool = False
    access_email: bool = False
    access_voice: bool = False
    access_fax: bool = False
    access_post: bool = False
    access_mms: bool = False
    access_reseller: bool = False
    access_smpp: bool = False
    access_global_sending: bool = False
    hide_pricing: bool = False
    share_campaigns: bool = False
    sms_deidentify_message: bool = False

    @classmethod
    def all_granted(cls) -> AccessFlags:
        """The main user's flags: every access_* on; the preference flags stay off."""
        return cls(**{name: True for name in ACCESS_FLAG_NAMES})


FLAG_NAMES: Final[tuple[str, ...]] = tuple(f.name for f in fields(AccessFlags))
ACCESS_FLAG_NAMES: Final[tuple[str, ...]] = tuple(n for n in FLAG_NAMES if n.startswith("access_"))


def derive_permissions(flags: AccessFlags, *, is_main: bool, enabled: bool) -> frozenset[str]:
    """Permissions a user holds. Disabled (inactive or banned) users hold none; the main user holds
    every permission; other users hold what their flags grant (never a MAIN_USER one)."""
    if not enabled:
        return frozenset()
    if is_main:
        return frozenset(PERMISSION_FLAGS)
    return frozenset(
        perm for perm, flag in PERMISSION_FLAGS.items()
        if flag is ALWAYS or (isinstance(flag, str) and getattr(flags, flag))
    )


RESTRICTION_FLAGS: Final[tuple[str, ...]] = ("sms_deidentify_message", "hide_pricing")
"""Flags that take something away from a user (masked bodies and numbers, no prices). Every other flag grants."""

GRANT_FLAGS: Final[tuple[str, ...]] = tuple(n for n in FLAG_NAMES if n not in RESTRICTION_FLAGS)
