"""API-key rules: format, checksum, hashing, verification outcomes, scopes, lifetimes, restrictions, rolling,
paging."""

from __future__ import annotations

import base64
import dataclasses
import string
import zlib
from datetime import UTC, datetime, timedelta

import pytest

from services.keys.domain.api_key_format import (
    API_KEY_LEN,
    BASE62,
    SECRET_LEN,
    ApiKeyParts,
    base62_fixed,
    hmac_matches,
    looks_like_api_key,
    new_api_key,
    parse_api_key,
    random_base62,
    secret_hmac,
)
from services.keys.domain.api_keys import (
    VERIFY_ERRORS,
    ApiKeyRecord,
    Caller,
    KeyRules,
    KeySpec,
    check_issue_request,
    check_new_key,
    check_roll,
    rolled_lifetime,
    valid_for,
    verify_failure,
)
from services.keys.domain.errors import (
    ApiKeyAlreadyRolled,
    ApiKeyInactive,
    CidrInvalid,
    ExceedsCallingKey,
    ExpiryInvalid,
    InvalidCredentials,
    RequestInvalid,
    ScopeInvalid,
    ScopeNotHeld,
    SendLimitsInvalid,
)
from services.keys.domain.paging import page_size, page_token, parse_page_token
from services.keys.domain.restrictions import (
    MAX_SEND_PER_MINUTE,
    NO_LIMITS,
    SendLimits,
    address_allowed,
    check_send_limits,
)
from svckit.senders import AllowedSendersInvalid

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PEPPER = bytes(range(32))


# -- API-key format --------------------------------------------------------------------------------------


def test_new_key_format() -> None:
    for test_mode, prefix in ((False, "ss_live_"), (True, "ss_test_")):
        parts = new_api_key(test_mode)
        key = parts.format()
        assert key.startswith(prefix)
        assert len(key) == API_KEY_LEN == 8 + 12 + 1 + 22 + 6
        rest = key[len(prefix) :]
        assert rest[:12] == parts.key_id and rest[12] == "_"
        assert set(rest[:12] + rest[13:]) <= set(string.ascii_letters + string.digits)
        assert parse_api_key(key) == parts
        assert looks_like_api_key(key)


def test_secret_has_at_least_128_bits_and_is_random() -> None:
    import math

    assert SECRET_LEN * math.log2(62) >= 128
    keys = {new_api_key(False).format() for _ in range(2000)}
    assert len(keys) == 2000
    # Every base62 character shows up across the secrets (no truncated alphabet).
    assert set("".join(parse_api_key(k).secret for k in keys)) == set(BASE62)  # type: ignore[union-attr]


def test_checksum_is_base62_crc32_of_the_rest() -> None:
    parts = ApiKeyParts(False, "A" * 12, "b" * 22)
    key = parts.format()
    body, check = key[:-6], key[-6:]
    value = 0
    for c in check:
        value = value * 62 + BASE62.index(c)
    assert value == zlib.crc32(body.encode())
    assert base62_fixed(0, 6) == "000000"
    assert base62_fixed(62**6 - 1, 6) == "zzzzzz"
    with pytest.raises(ValueError):
        base62_fixed(62**6, 6)


def test_every_single_character_change_is_detected_offline() -> None:
    key = new_api_key(False).format()
    for i in range(len(key)):
        for c in ("0", "Z", "z", "_", "x"):
            if key[i] == c:
                continue
            mutated = key[:i] + c + key[i + 1 :]
            assert not looks_like_api_key(mutated), (i, c)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ss_live_",
        "sk_live_" + "a" * 41,
        "ss_prod_" + "a" * 12 + "_" + "a" * 28,
        "ss_live_" + "a" * 12 + "-" + "a" * 28,
        "ss_live_" + "a" * 12 + "_" + "a" * 27 + "!",
        "ss_live_" + "a" * 12 + "_" + "a" * 29,
        "ss_live_" + "é" * 12 + "_" + "a" * 28,
        "ss_live_" + "a" * 12 + "_" + "a" * 28 + "\n",
        "x" * 10_000,
    ],
)
def test_garbage_is_not_a_key(text: str) -> None:
    assert parse_api_key(text) is None
    assert not looks_like_api_key(text)


def test_mode_is_bound_by_checksum_and_hmac() -> None:
    live = new_api_key(False)
    as_test = ApiKeyParts(True, live.key_id, live.secret)
    # Switching the prefix breaks the checksum…
    assert parse_api_key("ss_test_" + live.format()[8:]) is None
    # …and an attacker who recomputes it still fails the HMAC, which covers the prefix.
    assert parse_api_key(as_test.format()) == as_test
    assert not hmac_matches(PEPPER, as_test, secret_hmac(PEPPER, live))


def test_repr_hides_the_secret() -> None:
    parts = new_api_key(False)
    assert parts.secret not in repr(parts) and parts.secret not in str(parts)


# -- hashing and verification ----------------------------------------------------------------------------


def _record(parts: ApiKeyParts, **kw: object) -> ApiKeyRecord:
    base: dict[str, object] = {
        "key_id": parts.key_id,
        "account_id": 5,
        "user_id": 6,
        "name": "ci",
        "test_mode": parts.test_mode,
        "scopes": ("*",),
        "secret_hmac": secret_hmac(PEPPER, parts),
        "pepper_id": "local-1",
        "create_time": NOW - timedelta(days=1),
    }
    base.update(kw)
    return ApiKeyRecord(**base)  # type: ignore[arg-type]


def test_hmac_is_keyed_and_constant_size() -> None:
    parts = new_api_key(False)
    h = secret_hmac(PEPPER, parts)
    assert len(h) == 32
    assert hmac_matches(PEPPER, parts, h)
    assert not hmac_matches(bytes(32), parts, h)
    assert not hmac_matches(PEPPER, ApiKeyParts(False, parts.key_id, "x" * 22), h)
    assert parts.secret.encode() not in h


def test_verify_outcomes() -> None:
    parts = new_api_key(False)
    assert verify_failure(_record(parts), parts, PEPPER, NOW) == ""
    assert verify_failure(None, parts, PEPPER, NOW) == "unknown_key"
    wrong = ApiKeyParts(False, parts.key_id, random_base62(22))
    assert verify_failure(_record(parts), wrong, PEPPER, NOW) == "secret_mismatch"
    assert verify_failure(_record(parts), parts, bytes(32), NOW) == "secret_mismatch"
    assert verify_failure(_record(parts, revoke_time=NOW), parts, PEPPER, NOW) == "revoked"
    assert verify_failure(_record(parts, revoke_time=NOW + timedelta(seconds=1)), parts, PEPPER, NOW) == ""
    assert verify_failure(_record(parts, expire_time=NOW - timedelta(seconds=1)), parts, PEPPER, NOW) == "expired"
    assert verify_failure(_record(parts, expire_time=NOW + timedelta(hours=1)), parts, PEPPER, NOW) == ""


def test_invalid_credentials_message_is_the_same_for_every_failure() -> None:
    err = InvalidCredentials()
    assert err.reason == "INVALID_CREDENTIALS" and err.code == "UNAUTHENTICATED"
    assert str(err) == str(InvalidCredentials())


def test_issue_request_checks() -> None:
    assert check_issue_request(1, 2, "  ci key ") == "ci key"
    for args in ((0, 1, "x"), (1, 0, "x"), (1, 1, "x" * 101), (1, 1, "bad\nname"), (-1, 1, "")):
        with pytest.raises(RequestInvalid):
            check_issue_request(*args)  # type: ignore[arg-type]


# -- API-key settings ------------------------------------------------------------------------------------------

RULES = KeyRules(
    declared_permissions=frozenset({"sms.send", "sms.read", "api_keys.read", "api_keys.write", "audit.read"}),
    max_lifetime=timedelta(days=366),
    default_lifetime=timedelta(days=90),
)
USER = Caller(5, 6, frozenset({"sms.send", "sms.read", "api_keys.write"}))


def _new(caller: Caller = USER, parent: ApiKeyRecord | None = None, **kw: object) -> KeySpec:
    args: dict[str, object] = {
        "name": "ci", "scopes": ["sms.send"], "expire_time": None, "allowed_cidrs": [], "send_limits": NO_LIMITS,
        "rules": RULES, "now": NOW,
    }
    args.update(kw)
    return check_new_key(caller, parent, **args)  # type: ignore[arg-type]


def test_scopes_are_declared_held_and_canonical() -> None:
    assert _new(scopes=[" sms.send", "sms.read", "sms.send"]).scopes == ("sms.read", "sms.send")
    assert _new(scopes=["*"]).scopes == ("*",)
    with pytest.raises(ScopeInvalid):
        _new(scopes=[])
    with pytest.raises(ScopeInvalid):
        _new(scopes=["sms.sendd"])  # not a permission any proto declares
    with pytest.raises(ScopeInvalid):
        _new(scopes=["*", "sms.send"])
    with pytest.raises(ScopeNotHeld) as info:
        _new(scopes=["audit.read"])  # declared, but the caller does not hold it
    assert info.value.reason == "SCOPE_NOT_HELD" and "audit.read" in info.value.message


def test_expiry_is_mandatory_and_bounded() -> None:
    assert _new().expire_time == NOW + timedelta(days=90)
    assert _new(expire_time=NOW + timedelta(days=366)).expire_time == NOW + timedelta(days=366)
    for bad in (NOW, NOW - timedelta(seconds=1), NOW + timedelta(days=366, seconds=1)):
        with pytest.raises(ExpiryInvalid):
            _new(expire_time=bad)


def test_cidrs_are_normalised_and_checked() -> None:
    spec = _new(allowed_cidrs=["203.0.113.7", "10.1.2.3/8", "2001:db8::/32", "10.0.0.0/8"])
    assert spec.allowed_cidrs == ("10.0.0.0/8", "203.0.113.7/32", "2001:db8::/32")
    for bad in (["not an ip"], ["10.0.0.0/33"], [f"10.0.0.{i}" for i in range(51)]):
        with pytest.raises(CidrInvalid):
            _new(allowed_cidrs=bad)


def test_address_allow_list() -> None:
    cidrs = ("10.0.0.0/8", "2001:db8::/32")
    assert address_allowed((), "198.51.100.1") and address_allowed((), "")
    assert address_allowed(cidrs, "10.200.0.1") and address_allowed(cidrs, "2001:db8::5")
    assert address_allowed(cidrs, "::ffff:10.0.0.1")  # IPv4-mapped IPv6 is the IPv4 address
    for outside in ("11.0.0.1", "2001:db9::1", "", "localhost", "10.0.0.1; drop"):
        assert not address_allowed(cidrs, outside)


def test_send_limits() -> None:
    limits = check_send_limits(60, 1000, ["au", " NZ", "AU"])
    assert limits == SendLimits(60, 1000, ("AU", "NZ")) and not limits.unlimited
    assert check_send_limits(0, 0, []).unlimited
    for bad in ((-1, 0, []), (0, -1, []), (10, 5, []), (0, 0, ["XX"]), (0, 0, ["Australia"]),
                (MAX_SEND_PER_MINUTE + 1, 0, [])):
        with pytest.raises(SendLimitsInvalid):
            check_send_limits(*bad)  # type: ignore[arg-type]


def test_allowed_senders() -> None:
    limits = check_send_limits(0, 0, [], ["61411111111", "My Brand"])
    assert limits.senders == ("+61411111111", "My Brand") and not limits.unlimited
    with pytest.raises(AllowedSendersInvalid):
        check_send_limits(0, 0, [], ["Bank&Co"])


def test_a_key_made_with_a_key_never_widens_its_senders() -> None:
    parts = new_api_key(False)
    parent = _record(parts, scopes=("sms.send",), send_limits=SendLimits(senders=("+61411111111", "Brand")))
    via_key = dataclasses.replace(USER, permissions=frozenset({"sms.send"}), api_key_id=parts.key_id)
    assert _new(via_key, parent).send_limits.senders == ("+61411111111", "Brand")  # inherited when not asked
    assert _new(via_key, parent, send_limits=SendLimits(senders=("BRAND",))).send_limits.senders == ("BRAND",)
    for wider in (("Brand", "Other"), ("+61422222222",)):
        with pytest.raises(ExceedsCallingKey):
            _new(via_key, parent, send_limits=SendLimits(senders=wider))


def test_a_key_made_with_a_key_is_never_stronger() -> None:
    parts = new_api_key(False)
    parent = _record(
        parts, scopes=("sms.send",), expire_time=NOW + timedelta(days=10), allowed_cidrs=("10.0.0.0/8",),
        send_limits=SendLimits(10, 100, ("AU",)),
    )
    via_key = dataclasses.replace(USER, permissions=frozenset({"sms.send"}), api_key_id=parts.key_id)
    ok = _new(via_key, parent, allowed_cidrs=["10.1.0.0/16"], send_limits=SendLimits(5, 50, ("AU",)))
    assert ok.expire_time == NOW + timedelta(days=10)  # the default lifetime is cut to the parent's
    for kw in (
        {"expire_time": NOW + timedelta(days=11)},
        {"allowed_cidrs": []},
        {"allowed_cidrs": ["11.0.0.0/8"]},
        {"allowed_cidrs": ["10.0.0.0/7"]},
        {"send_limits": SendLimits(11, 50, ("AU",))},
        {"send_limits": SendLimits(5, 101, ("AU",))},
        {"send_limits": SendLimits(5, 50, ("AU", "NZ"))},
        {"scopes": ["*"]},
    ):
        base = {"allowed_cidrs": ["10.1.0.0/16"], "send_limits": SendLimits(5, 50, ("AU",))}
        with pytest.raises(ExceedsCallingKey):
            _new(via_key, parent, **(base | kw))
    # A limit left unset (0 / no countries) is the parent's, never "no limit".
    inherited = _new(via_key, parent, allowed_cidrs=["10.1.0.0/16"], send_limits=SendLimits(0, 50, ()))
    assert inherited.send_limits == SendLimits(10, 50, ("AU",))
    # An unrestricted parent key does not restrict.
    free = _record(parts, scopes=("*",))
    assert _new(via_key, free, scopes=["*"]).scopes == ("*",)


def test_roll_rules() -> None:
    parts = new_api_key(False)
    live = _record(parts, expire_time=NOW + timedelta(days=30))
    assert check_roll(live, 0, NOW) == NOW
    assert check_roll(live, 3600, NOW) == NOW + timedelta(hours=1)
    assert check_roll(_record(parts, expire_time=NOW + timedelta(minutes=5)), 3600, NOW) == NOW + timedelta(minutes=5)
    for bad in (-1, 86401):
        with pytest.raises(RequestInvalid):
            check_roll(live, bad, NOW)
    with pytest.raises(ApiKeyInactive):
        check_roll(_record(parts, revoke_time=NOW), 0, NOW)
    with pytest.raises(ApiKeyAlreadyRolled):
        check_roll(_record(parts, rolled_to="x" * 12), 0, NOW)
    assert rolled_lifetime(live, RULES) == timedelta(days=31)  # created a day before NOW
    assert rolled_lifetime(_record(parts), RULES) == RULES.max_lifetime


def test_verify_outcomes_after_the_secret_is_proven() -> None:
    parts = new_api_key(False)
    fenced = _record(parts, allowed_cidrs=("203.0.113.0/24",))
    assert verify_failure(fenced, parts, PEPPER, NOW, "203.0.113.9") == ""
    assert verify_failure(fenced, parts, PEPPER, NOW, "198.51.100.1") == "address_not_allowed"
    assert verify_failure(fenced, parts, PEPPER, NOW, "") == "address_not_allowed"
    assert VERIFY_ERRORS["address_not_allowed"]().code == "PERMISSION_DENIED"
    assert VERIFY_ERRORS["revoked"]().reason == "API_KEY_REVOKED"
    assert VERIFY_ERRORS["expired"]().reason == "API_KEY_EXPIRED"
    assert {VERIFY_ERRORS[f]().reason for f in ("malformed", "unknown_key", "secret_mismatch")} == {
        "INVALID_CREDENTIALS"
    }
    assert valid_for(_record(parts, expire_time=NOW + timedelta(seconds=2.5)), NOW) == 2.5
    assert valid_for(_record(parts), NOW) == 0.0


def test_page_tokens() -> None:
    token = page_token(NOW, "A" * 12)
    assert parse_page_token(token) == (NOW, "A" * 12)
    assert parse_page_token("") is None
    for bad in ("!!", "abc", base64.urlsafe_b64encode(b"1.short").decode()):
        with pytest.raises(RequestInvalid):
            parse_page_token(bad)
    assert page_size(0) == 50 and page_size(1000) == 100
