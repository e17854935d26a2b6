"""Every permission name and who holds it, in ONE table (`PERMISSIONS`).

A permission is the name an RPC's `(sendsafe.options.v1.access).permission` declares; every guard checks that
the caller's principal holds it. Identity decides who holds what from this table alone: a customer user by an
access flag (or ALWAYS: every enabled user), a staff member by role; the main user holds every customer
permission; a disabled user holds none. Staff permissions never reach customers, and customers' data
permissions never reach staff (staff reach customer data only through explicit, audited staff RPCs).

Adding a permission is one edit here: name it in the RPC's access option, then add its line below --
`customers("access_x")` (or `customers(ALWAYS)`, or `customers(MAIN_USER)` for the main user alone) for
customers, `staff(...roles)` for staff, or
`customers(..., roles=...)` for both. tests/unit/test_permissions.py checks the table against the protos
(every permission an RPC names is here, every one here is used, staff-only ones never reach customers).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

ALWAYS: Final = None
"""A customer permission's flag when every enabled user holds it (no access flag needed)."""


class _MainUserOnly:
    """The type of MAIN_USER (a marker no access flag can equal)."""

    def __repr__(self) -> str:
        return "MAIN_USER"


MAIN_USER: Final = _MainUserOnly()
"""A customer permission's flag when only the account's main user holds it: no access flag grants it to another
user, so no sub-account, however many flags it holds, can be given it (e.g. closing or exporting the account)."""

# The staff directory's roles, least to most.
STAFF_ROLES: Final[tuple[str, ...]] = ("support_readonly", "support_agent", "security_admin", "platform_admin")
_EVERY_ROLE: Final = STAFF_ROLES
_SECURITY: Final = ("security_admin", "platform_admin")


@dataclass(frozen=True)
class Holders:
    """Who holds a permission: customer users (through `flag`, or ALWAYS) and/or the staff `roles`."""

    for_customers: bool
    flag: str | _MainUserOnly | None = ALWAYS
    roles: frozenset[str] = frozenset()


def customers(flag: str | _MainUserOnly | None, *, roles: Iterable[str] = ()) -> Holders:
    """Held by a non-main customer user with `flag` on (ALWAYS: by every enabled user; MAIN_USER: by no other
    user than the main one), and by `roles`."""
    return Holders(True, flag, frozenset(roles))


def staff(*roles: str) -> Holders:
    """Held only by staff members with one of `roles`."""
    return Holders(False, ALWAYS, frozenset(roles))


PERMISSIONS: Final[Mapping[str, Holders]] = MappingProxyType(
    {
        "account.read": customers(ALWAYS),
        "self.manage": customers(ALWAYS, roles=_EVERY_ROLE),  # one's own sessions, second factor and password
        "sms.send": customers("access_sms"),
        "sms.read": customers("access_reporting"),
        "sms.settings": customers("access_settings"),  # messaging privacy controls and webhooks
        # On a staff session `audit.read` reads the platform account's feed.
        "audit.read": customers("access_reporting", roles=_SECURITY),
        "subaccounts.read": customers("access_users"),
        "subaccounts.write": customers("access_users"),
        "api_keys.read": customers("access_settings"),
        "api_keys.write": customers("access_settings"),
        "audit.manage": customers("access_settings"),  # alert rules, webhooks, forwarding
        "account.policy": customers(MAIN_USER),  # the account's sign-in policy: 2FA, networks, session lifetime
        "account.export": customers(MAIN_USER),  # the whole account's data, taken away (issue 15)
        "account.close": customers(MAIN_USER),  # close the account, see or cancel its closure (issue 15)
        "alpha_tags.read": customers("access_settings"),  # the account's alpha tags (sender IDs) and their reviews
        "alpha_tags.write": customers("access_settings"),  # request or cancel an alpha tag
        "senders.read": customers("access_settings"),  # the account's dedicated and own numbers, numbers for sale
        # Buy, verify or release a number the account sends from (privileged RPCs: a session steps up first).
        "senders.write": customers("access_settings"),
        "contacts.read": customers("access_contacts"),  # contact lists and their contacts (personal data)
        "contacts.write": customers("access_contacts"),  # create, change, delete and import lists and contacts
        "staff.accounts.read": staff(*_EVERY_ROLE),
        "staff.accounts.write": staff("support_agent", "platform_admin"),
        "staff.roles.write": staff(*_SECURITY),
        "audit.read_all": staff(*_SECURITY),
        "audit.verify": staff(*_SECURITY),
        "staff.alpha_tags.read": staff(*_EVERY_ROLE),  # alpha tags waiting for review, the protected sender names
        "staff.alpha_tags.review": staff("support_agent", *_SECURITY),  # approve, reject, revoke an alpha tag
        "staff.protected_names.write": staff(*_SECURITY),  # the names nobody sends as without proving them
    }
)

# -- views of the table ---------------------------------------------------------------------------------------

PERMISSION_FLAGS: Final[Mapping[str, str | _MainUserOnly | None]] = MappingProxyType(
    {name: h.flag for name, h in PERMISSIONS.items() if h.for_customers}
)
"""Customer permission -> the access flag that grants it to a non-main user (ALWAYS: every enabled user; MAIN_USER:
no other user)."""

ROLE_PERMISSIONS: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {role: frozenset(name for name, h in PERMISSIONS.items() if role in h.roles) for role in STAFF_ROLES}
)
"""Staff role -> the permissions it holds."""
