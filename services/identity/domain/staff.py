"""The staff directory: members, who may grant which role, and the reason staff give when they touch a
customer's data (the roles' permissions are `svckit.permissions`'). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Final

from services.identity.domain.credentials import Enrollment
from services.identity.domain.errors import ReasonRequired, RoleInvalid
from svckit.permissions import ROLE_PERMISSIONS, STAFF_ROLES

# Who may hand out which role: nobody grants a role above their own.
GRANTABLE_ROLES: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "support_readonly": frozenset(),
        "support_agent": frozenset(),
        "security_admin": frozenset({"support_readonly", "support_agent", "security_admin"}),
        "platform_admin": frozenset(STAFF_ROLES),
    }
)


def check_role(role: str) -> str:
    if role not in ROLE_PERMISSIONS:
        raise RoleInvalid(f"role must be one of {', '.join(STAFF_ROLES)}")
    return role


@dataclass(frozen=True)
class StaffMember:
    id: int
    username: str
    email: str
    display_name: str
    role: str
    active: bool
    create_time: datetime

    @property
    def permissions(self) -> frozenset[str]:
        return ROLE_PERMISSIONS[self.role] if self.active else frozenset()


def check_reason(raw: str) -> str:
    """Staff state why they touch a customer's data (a ticket id, a sentence); the customer sees it."""
    value = " ".join(raw.split())
    if not value:
        raise ReasonRequired("give a reason (it is shown to the customer in their audit feed)")
    if len(value) > 200 or not value.isprintable():
        raise ReasonRequired("the reason must be at most 200 printable characters")
    return value


@dataclass(frozen=True)
class NewStaff:
    member: StaffMember
    enrollment: Enrollment
    recovery_codes: list[str]
