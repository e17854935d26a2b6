"""The one permission table (svckit/permissions.py) against the protos: every permission an RPC names is
declared, every declared one is used by some RPC, staff-only ones never reach customers, and the mapping
from flags and roles is today's."""

from __future__ import annotations

import importlib
from pathlib import Path

from google.protobuf import descriptor_pool

from sendsafe.options.v1 import options_pb2
from svckit.permissions import ALWAYS, PERMISSION_FLAGS, PERMISSIONS, ROLE_PERMISSIONS, STAFF_ROLES

GEN = Path(__file__).resolve().parents[2] / "gen" / "python"
# Declared permissions no RPC names, and why they exist anyway. Empty today: keep it that way if you can.
USED_ELSEWHERE: dict[str, str] = {}


def _rpc_permissions() -> dict[str, set[str]]:
    """permission -> the full names of the RPCs whose access option names it (every service the protos define)."""
    pool = descriptor_pool.Default()
    out: dict[str, set[str]] = {}
    for path in sorted(GEN.glob("sendsafe/*/v1/*_service_pb2.py")):
        module = importlib.import_module(".".join(path.relative_to(GEN).with_suffix("").parts))
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in pool.FindServiceByName(service.full_name).methods:
                opts = method.GetOptions()
                if opts.HasExtension(options_pb2.access) and opts.Extensions[options_pb2.access].permission:
                    out.setdefault(opts.Extensions[options_pb2.access].permission, set()).add(method.full_name)
    return out


def test_every_permission_an_rpc_names_is_declared() -> None:
    declared = set(_rpc_permissions())
    assert declared, "no permissions found in the descriptors"
    assert declared <= set(PERMISSIONS), f"add these to svckit/permissions.py: {sorted(declared - set(PERMISSIONS))}"


def test_every_declared_permission_has_a_rule() -> None:
    """Moved from identity's domain test: each permission the protos declare is held by customers or staff."""
    declared = set(_rpc_permissions())
    staff = set().union(*ROLE_PERMISSIONS.values())
    assert declared <= set(PERMISSION_FLAGS) | staff, f"unmapped: {declared - set(PERMISSION_FLAGS) - staff}"


def test_every_declared_permission_is_used() -> None:
    unused = set(PERMISSIONS) - set(_rpc_permissions()) - set(USED_ELSEWHERE)
    assert not unused, f"no RPC names {sorted(unused)}: remove them, or say in USED_ELSEWHERE who uses them"
    assert set(USED_ELSEWHERE) <= set(PERMISSIONS)


def test_every_permission_has_a_holder() -> None:
    for name, holders in PERMISSIONS.items():
        assert holders.for_customers or holders.roles, f"{name}: nobody holds it"
        assert holders.roles <= set(STAFF_ROLES), f"{name}: unknown roles {sorted(holders.roles - set(STAFF_ROLES))}"


def test_staff_only_permissions_never_reach_customers() -> None:
    rpcs = _rpc_permissions()
    staff_service = {p for p, methods in rpcs.items() if any(".StaffService." in m for m in methods)}
    staff_only = {p for p, h in PERMISSIONS.items() if not h.for_customers}
    assert staff_service <= staff_only | {"self.manage"}, "a StaffService RPC needs a permission customers lack"
    assert not staff_only & set(PERMISSION_FLAGS)
    assert all(p.startswith(("staff.", "audit.")) for p in staff_only)


def test_staff_and_customer_permissions_never_mix() -> None:
    """Customers never hold staff.*; staff never hold customer data permissions (only audited staff RPCs)."""
    staff = set().union(*ROLE_PERMISSIONS.values())
    shared = {"self.manage", "audit.read"}  # on a staff session: one's own sessions, the platform's feed
    assert staff & set(PERMISSION_FLAGS) == shared
    assert all(p.startswith(("staff.", "audit.")) for p in staff - shared)
    assert set(ROLE_PERMISSIONS) == set(STAFF_ROLES)
    assert ROLE_PERMISSIONS["platform_admin"] == staff
    assert ROLE_PERMISSIONS["support_readonly"] < ROLE_PERMISSIONS["support_agent"]


def test_today_mapping() -> None:
    assert PERMISSION_FLAGS["account.read"] is ALWAYS
    assert PERMISSION_FLAGS["sms.send"] == "access_sms"
    assert PERMISSION_FLAGS["sms.read"] == "access_reporting"
    assert PERMISSION_FLAGS["audit.read"] == "access_reporting"
    assert PERMISSION_FLAGS["subaccounts.read"] == PERMISSION_FLAGS["subaccounts.write"] == "access_users"
    assert PERMISSION_FLAGS["self.manage"] is ALWAYS
