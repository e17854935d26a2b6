"""Verified notification destinations: the code, its text and how it is stored (pure domain rules)."""

from __future__ import annotations

import pytest

from services.messaging.domain.destinations import (
    SESSION_SCOPES,
    DestinationCodeInvalid,
    OwnerUser,
    check_destination_code,
    destination_code_hash,
    new_destination_code,
    owner_refusal,
    verification_text,
)


def test_codes_are_six_random_digits_in_a_fixed_text() -> None:
    codes = {new_destination_code() for _ in range(200)}
    assert all(len(c) == 6 and c.isascii() and c.isdigit() for c in codes) and len(codes) > 190
    assert verification_text("012345") == "SendSafe verification code: 012345"


@pytest.mark.parametrize("code", ["12345", "1234567", "12a456", "\uff11\uff12\uff13\uff14\uff15\uff16", "", "12 456"])
def test_only_six_ascii_digits_are_a_code(code: str) -> None:
    with pytest.raises(DestinationCodeInvalid):
        check_destination_code(code)


def test_the_stored_code_is_keyed_and_bound_to_its_destination() -> None:
    key = b"k" * 32
    h = destination_code_hash(key, "dest-1", "123456")
    assert h != destination_code_hash(key, "dest-2", "123456")
    assert h != destination_code_hash(b"j" * 32, "dest-1", "123456")
    assert b"123456" not in h and check_destination_code(" 123456 ") == "123456"


_SENDER = OwnerUser(account_id=5, active=True, permissions=frozenset({"sms.send", "sms.read"}))


@pytest.mark.parametrize(("user", "scopes", "why"), [
    (_SENDER, SESSION_SCOPES, ""),
    (_SENDER, ("sms.send",), ""),
    (_SENDER, (), ""),  # a key scoped to nothing carries every permission of its user
    (None, SESSION_SCOPES, "user_not_found"),
    (OwnerUser(6, True, frozenset({"sms.send"})), SESSION_SCOPES, "user_not_found"),  # another account's
    (OwnerUser(5, False, frozenset({"sms.send"})), SESSION_SCOPES, "user_inactive"),
    (OwnerUser(5, True, frozenset({"sms.read"})), SESSION_SCOPES, "sms_send_missing"),
    (_SENDER, None, "api_key_inactive"),
    (_SENDER, ("audit.manage", "audit.read"), "api_key_scope"),
])
def test_an_alert_owner_must_still_be_allowed_to_send(
    user: OwnerUser | None, scopes: tuple[str, ...] | None, why: str
) -> None:
    assert owner_refusal(5, user, scopes) == why
