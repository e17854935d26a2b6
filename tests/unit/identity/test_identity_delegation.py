"""The delegation rule (`domain.delegate`), as a table: who may create, change, re-key, reset or delete whom,
with restrictions inherited and never lifted by someone under them."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from services.identity.domain.accounts import User
from services.identity.domain.errors import (
    DelegationExceedsActor,
    MainUserProtected,
    OwnAccessUnchangeable,
    RestrictionNotLiftable,
)
from services.identity.domain.flags import FLAG_NAMES, AccessFlags
from services.identity.domain.subaccounts import delegate, delegate_senders

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _user(uid: int, *flags: str, main: bool = False, active: bool = True) -> User:
    return User(
        id=uid, account_id=1, api_username=f"u{uid}", email=f"u{uid}@example.com", phone_number="", first_name="",
        last_name="", is_main=main, notes=None, flags=AccessFlags(**{f: True for f in flags}), active=active,
        banned=False, create_time=NOW, update_time=NOW,
    )


MAIN = _user(1, main=True)
USERS = _user(2, "access_users")
USERS_SMS = _user(3, "access_users", "access_sms")
STRONG = _user(4, "access_sms", "access_settings", "access_reporting")
MASKED = _user(5, "access_users", "sms_deidentify_message")
MASKED_NO_PRICES = _user(6, "access_users", "sms_deidentify_message", "hide_pricing")
WEAK = _user(7)
MASKED_WEAK = _user(8, "sms_deidentify_message")
PEER = _user(9, "access_users")
DISABLED_STRONG = _user(10, "access_sms", "access_settings", active=False)
BILLING = _user(11, "access_billing")

OK = None
# actor, target (None: create), requested flags, expected refusal (None: allowed)
CASES: list[tuple[str, User, User | None, dict[str, bool], type[Exception] | None]] = [
    ("main creates anything", MAIN, None, {"access_sms": True, "access_billing": True}, OK),
    ("main re-keys a strong user", MAIN, STRONG, {}, OK),
    ("main lifts a restriction", MAIN, MASKED, {"sms_deidentify_message": False}, OK),
    ("main changes itself, not its flags", MAIN, MAIN, {}, OK),
    ("main's flags never change here", MAIN, MAIN, {"access_sms": False}, MainUserProtected),
    ("nobody else touches the main user", USERS, MAIN, {}, MainUserProtected),
    ("create within own grants", USERS_SMS, None, {"access_sms": True}, OK),
    ("create beyond own grants", USERS, None, {"access_sms": True}, DelegationExceedsActor),
    ("create with an unmapped flag not held", USERS, None, {"access_billing": True}, DelegationExceedsActor),
    ("re-key/reset/delete a sibling holding more", USERS, STRONG, {}, DelegationExceedsActor),
    ("a disabled sibling holding more", USERS, DISABLED_STRONG, {}, DelegationExceedsActor),
    ("a sibling holding an unmapped flag", USERS, BILLING, {}, DelegationExceedsActor),
    ("re-key a peer", USERS, PEER, {}, OK),
    ("re-key a weaker user", USERS, WEAK, {}, OK),
    ("grant a weaker user what one holds", USERS_SMS, WEAK, {"access_sms": True}, OK),
    ("grant beyond own", USERS, WEAK, {"access_sms": True}, DelegationExceedsActor),
    ("take away what one does not hold still leaves the rest", USERS, STRONG, {"access_sms": False},
     DelegationExceedsActor),
    ("take everything beyond away", USERS, STRONG,
     {"access_sms": False, "access_settings": False, "access_reporting": False}, OK),
    ("change own contact details", USERS, USERS, {}, OK),
    ("grant oneself a flag", USERS, USERS, {"access_sms": True}, OwnAccessUnchangeable),
    ("drop one's own flag", USERS_SMS, USERS_SMS, {"access_sms": False}, OwnAccessUnchangeable),
    ("restate own flags", USERS, USERS, {"access_users": True}, OK),
    ("unmask oneself", MASKED, MASKED, {"sms_deidentify_message": False}, RestrictionNotLiftable),
    ("unmask a masked sibling", MASKED, MASKED_WEAK, {"sms_deidentify_message": False}, RestrictionNotLiftable),
    ("act on an unmasked sibling", MASKED, WEAK, {}, DelegationExceedsActor),
    ("mask an unmasked sibling", MASKED, WEAK, {"sms_deidentify_message": True}, OK),
    ("act on a masked sibling", MASKED, MASKED_WEAK, {}, OK),
    ("lift a restriction one is not under", MASKED, _user(12, "hide_pricing", "sms_deidentify_message"),
     {"hide_pricing": False}, OK),
    ("an unrestricted manager lifts a restriction", USERS, MASKED_WEAK, {"sms_deidentify_message": False}, OK),
    ("a masked user with the same grants is manageable", USERS, MASKED, {}, OK),
]


@pytest.mark.parametrize(("actor", "target", "requested", "refusal"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_delegation_table(actor: User, target: User | None, requested: dict[str, bool],
                          refusal: type[Exception] | None) -> None:
    if refusal is None:
        resulting = delegate(actor, target, requested)
        base = target.flags if target is not None else AccessFlags()
        for name in FLAG_NAMES:
            want = requested.get(name, getattr(base, name))
            assert getattr(resulting, name) == want or (target is None and getattr(actor.flags, name))
    else:
        with pytest.raises(refusal) as info:
            delegate(actor, target, requested)
        assert info.value.code == "PERMISSION_DENIED" and info.value.message


@pytest.mark.parametrize("requested", [{}, {"sms_deidentify_message": False}, {"hide_pricing": False}])
def test_restrictions_are_inherited_whatever_the_request_says(requested: dict[str, Any]) -> None:
    made = delegate(MASKED_NO_PRICES, None, requested)
    assert made.sms_deidentify_message and made.hide_pricing
    assert not delegate(USERS, None, requested).sms_deidentify_message  # an unrestricted actor passes none on


def test_reasons_are_stable_and_messages_say_what_to_do() -> None:
    with pytest.raises(DelegationExceedsActor) as exceeds:
        delegate(USERS, STRONG)
    assert exceeds.value.reason == "DELEGATION_EXCEEDS_ACTOR"
    assert "access_settings" in exceeds.value.message and "sms.send" in exceeds.value.message
    with pytest.raises(RestrictionNotLiftable) as lift:
        delegate(MASKED, MASKED, {"sms_deidentify_message": False})
    assert lift.value.reason == "RESTRICTION_NOT_LIFTABLE" and "sms_deidentify_message" in lift.value.message
    with pytest.raises(MainUserProtected) as main:
        delegate(USERS, MAIN)
    assert main.value.reason == "MAIN_USER_PROTECTED"
    with pytest.raises(OwnAccessUnchangeable) as own:
        delegate(USERS, USERS, {"access_sms": True})
    assert own.value.reason == "OWN_ACCESS_UNCHANGEABLE"


# -- sender limits (issue 21): a restriction like the flags above --------------------------------------------------

def _limited(user: User, *senders: str) -> User:
    return dataclasses.replace(user, allowed_senders=senders)


SENDER_CASES: list[tuple[str, User, User, list[str], type[Exception] | tuple[str, ...]]] = [
    ("main limits a user", MAIN, WEAK, ["61411111111", " Brand "], ("+61411111111", "Brand")),
    ("main lifts a limit", MAIN, _limited(WEAK, "Brand"), [], ()),
    ("nobody limits the main user", MAIN, MAIN, ["Brand"], MainUserProtected),
    ("nobody changes their own limit", _limited(USERS, "Brand"), _limited(USERS, "Brand"), [], OwnAccessUnchangeable),
    ("an unlimited manager limits a weaker user", USERS, WEAK, ["Brand"], ("Brand",)),
    ("a limited manager narrows within its own", _limited(USERS, "Brand", "Shop"), _limited(WEAK, "Brand", "Shop"),
     ["brand"], ("brand",)),
    ("a limited manager cannot widen", _limited(USERS, "Brand"), _limited(WEAK, "Brand"), ["Brand", "Shop"],
     DelegationExceedsActor),
    ("a limited manager cannot lift", _limited(USERS, "Brand"), _limited(WEAK, "Brand"), [], RestrictionNotLiftable),
    ("a limited manager cannot touch an unlimited user", _limited(USERS, "Brand"), WEAK, ["Brand"],
     DelegationExceedsActor),
]


@pytest.mark.parametrize(("actor", "target", "requested", "expected"), [c[1:] for c in SENDER_CASES],
                         ids=[c[0] for c in SENDER_CASES])
def test_sender_limits_follow_the_delegation_rule(
    actor: User, target: User, requested: list[str], expected: type[Exception] | tuple[str, ...]
) -> None:
    if isinstance(expected, tuple):
        assert delegate_senders(actor, target, requested) == expected
    else:
        with pytest.raises(expected):
            delegate_senders(actor, target, requested)


def test_a_limited_manager_cannot_rekey_or_delete_a_user_outside_its_limit() -> None:
    with pytest.raises(DelegationExceedsActor):
        delegate(_limited(USERS, "Brand"), _limited(WEAK, "Brand", "Shop"))
    delegate(_limited(USERS, "Brand", "Shop"), _limited(WEAK, "Shop"))
