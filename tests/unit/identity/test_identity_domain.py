"""Identity domain rules: permissions from flags, username/email/phone/country checks."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.identity.domain import accounts
from services.identity.domain import flags as flags_module
from services.identity.domain.accounts import check_balance, check_email, check_phone, check_username, new_account
from services.identity.domain.errors import (
    BalanceUnavailable,
    CountryInvalid,
    EmailInvalid,
    NameInvalid,
    PhoneInvalid,
    UsernameInvalid,
)
from services.identity.domain.flags import FLAG_NAMES, AccessFlags, derive_permissions
from services.identity.domain.staff import GRANTABLE_ROLES
from svckit.permissions import ALWAYS, MAIN_USER, PERMISSION_FLAGS, ROLE_PERMISSIONS, STAFF_ROLES


def test_every_role_has_its_grantable_roles() -> None:
    """The rest of the permission table's checks moved with it to tests/unit/test_permissions.py."""
    assert set(ROLE_PERMISSIONS) == set(STAFF_ROLES) == set(GRANTABLE_ROLES)


def test_rules_name_real_flags() -> None:
    assert all(flag is ALWAYS or flag is MAIN_USER or flag in FLAG_NAMES for flag in PERMISSION_FLAGS.values())


def test_new_user_defaults_to_least_privilege() -> None:
    flags = AccessFlags()
    assert not any(getattr(flags, f) for f in FLAG_NAMES)
    assert derive_permissions(flags, is_main=False, enabled=True) == {"account.read", "self.manage"}


def test_flags_grant_their_permissions() -> None:
    base = {"account.read", "self.manage"}
    assert derive_permissions(AccessFlags(access_sms=True), is_main=False, enabled=True) == base | {"sms.send"}
    assert derive_permissions(AccessFlags(access_reporting=True), is_main=False, enabled=True) == base | {
        "sms.read",
        "audit.read",
    }
    assert derive_permissions(AccessFlags(access_users=True), is_main=False, enabled=True) == base | {
        "subaccounts.read",
        "subaccounts.write",
    }
    # Flags that grant nothing today grant nothing.
    assert derive_permissions(AccessFlags(access_billing=True), is_main=False, enabled=True) == base


def test_main_user_holds_every_permission_whatever_its_flags() -> None:
    assert derive_permissions(AccessFlags(), is_main=True, enabled=True) == set(PERMISSION_FLAGS)
    assert AccessFlags.all_granted().access_sms and not AccessFlags.all_granted().hide_pricing


def test_a_main_user_permission_reaches_no_other_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """A MAIN_USER permission (closing or exporting the account): the main user holds it, a sub-account with every
    access flag does not."""
    monkeypatch.setattr(flags_module, "PERMISSION_FLAGS", {**PERMISSION_FLAGS, "account.close": MAIN_USER})
    every_flag = AccessFlags(**{name: True for name in FLAG_NAMES})
    assert "account.close" in derive_permissions(AccessFlags(), is_main=True, enabled=True)
    assert "account.close" not in derive_permissions(every_flag, is_main=False, enabled=True)
    assert "sms.send" in derive_permissions(every_flag, is_main=False, enabled=True)


@pytest.mark.parametrize("is_main", [True, False])
def test_disabled_users_hold_nothing(is_main: bool) -> None:
    assert derive_permissions(AccessFlags.all_granted(), is_main=is_main, enabled=False) == frozenset()


@pytest.mark.parametrize("name", ["abc", "demo", "a.b_c-d@e", "A" * 64, "User.Name@example.com"])
def test_good_usernames(name: str) -> None:
    assert check_username(name) == name


@pytest.mark.parametrize("name", ["", "ab", "A" * 65, "has space", "tab\t", "new\nline", "ünï", "semi;colon", "demo\n"])
def test_bad_usernames(name: str) -> None:
    with pytest.raises(UsernameInvalid) as info:
        check_username(name)
    assert info.value.reason == "USERNAME_INVALID"


def test_email() -> None:
    assert check_email(" Demo.User+tag@Example.COM ") == "Demo.User+tag@example.com"
    for bad in ["", "no-at", "a@b", "a@@b.com", "a b@c.com", "a@-b.com", ".a@b.com", "x" * 65 + "@b.com", "a@b.c\x00m"]:
        with pytest.raises(EmailInvalid):
            check_email(bad)


def test_phone() -> None:
    assert check_phone("", "AU") == ""
    assert check_phone("+61411111111", "AU") == "+61411111111"
    assert check_phone("0411 111 111", "AU") == "+61411111111"
    for bad in ["+6141111", "abc", "+61411111111 ext 2", "tel:+61411111111", "1" * 40]:
        with pytest.raises(PhoneInvalid):
            check_phone(bad, "AU")


def _new(**overrides: object) -> accounts.NewAccount:
    args: dict[str, object] = dict(
        account_name="Demo",
        api_username="demo",
        email="demo@example.com",
        phone_number="",
        first_name="Demo",
        last_name="User",
        country="",
        test_mode=False,
        default_country="AU",
        default_timezone="Australia/Melbourne",
    )
    args.update(overrides)
    return new_account(**args)  # type: ignore[arg-type]


def test_new_account_normalises() -> None:
    new = _new(account_name="  Demo   Co ", country="nz", phone_number="021 123 4567")
    assert new.account_name == "Demo Co"
    assert new.country == "NZ"
    assert new.phone_number.startswith("+64")
    assert new.timezone == "Australia/Melbourne"
    assert _new().country == "AU"


def test_new_account_rejects() -> None:
    with pytest.raises(NameInvalid):
        _new(account_name="   ")
    with pytest.raises(NameInvalid):
        _new(first_name="x" * 101)
    with pytest.raises(NameInvalid):
        _new(last_name="bell\x07")
    with pytest.raises(CountryInvalid):
        _new(country="XX")
    with pytest.raises(UsernameInvalid):
        _new(api_username="no")


def test_balance_is_reported_not_invented() -> None:
    assert check_balance("12.5") == "12.500000"
    assert check_balance("-1.25") == "-1.250000"
    for bad in ["", "abc", "NaN", "Infinity"]:
        with pytest.raises(BalanceUnavailable) as info:
            check_balance(bad)
        assert info.value.code == "UNAVAILABLE"


def test_user_permissions_follow_enabled() -> None:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    user = accounts.User(
        id=1,
        account_id=1,
        api_username="sub",
        email="s@example.com",
        phone_number="",
        first_name="",
        last_name="",
        is_main=False,
        notes=None,
        flags=AccessFlags(access_sms=True),
        active=True,
        banned=False,
        create_time=now,
        update_time=now,
    )
    assert user.enabled and "sms.send" in user.permissions
    assert replace(user, banned=True).permissions == frozenset()
    assert replace(user, active=False).permissions == frozenset()
