"""Accounts and users (ClickSend sub-accounts): the records, what a valid new account looks like, and the
balance as ClickSend shows it. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Final

import phonenumbers

from services.identity.domain.errors import (
    BalanceUnavailable,
    CountryInvalid,
    EmailInvalid,
    NameInvalid,
    PhoneInvalid,
    UsernameInvalid,
)
from services.identity.domain.flags import AccessFlags, derive_permissions


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    country: str
    timezone: str
    test_mode: bool
    create_time: datetime


@dataclass(frozen=True)
class User:
    """A ClickSend sub-account. The account's main user is the one ClickSend calls the account."""

    id: int
    account_id: int
    api_username: str
    email: str
    phone_number: str
    first_name: str
    last_name: str
    is_main: bool
    notes: str | None
    flags: AccessFlags
    active: bool
    banned: bool
    create_time: datetime
    update_time: datetime
    allowed_senders: tuple[str, ...] = ()  # sender ids it may send as (svckit.senders); empty: any

    @property
    def enabled(self) -> bool:
        return self.active and not self.banned

    @property
    def permissions(self) -> frozenset[str]:
        return derive_permissions(self.flags, is_main=self.is_main, enabled=self.enabled)


@dataclass(frozen=True)
class Currency:
    currency_name_short: str
    currency_prefix_d: str
    currency_prefix_c: str
    currency_name_long: str
    min_recharge_amount: str
    max_recharge_amount: str


@dataclass(frozen=True)
class AccountSettings:
    """Per-account sending settings of the ClickSend account object. Not stored yet: every account
    has these values until settings become editable."""

    setting_unicode_sms: int = 0
    setting_fix_sender_id: int = 0
    # Longest message, in parts, messaging accepts (GSM 03.38 concatenation, 8 parts).
    setting_sms_message_char_limit: int = 8
    on_trial: int = 0
    auto_recharge: int = 0
    low_credit_amount: str = "0.00"


@dataclass(frozen=True)
class AccountDetails:
    """Everything `GET /v3/account` shows: the account, the calling user, and the balance."""

    account: Account
    user: User
    balance: str
    currency: Currency
    settings: AccountSettings


MASKED_API_KEY: Final = "********"
"""What the sub-account object shows for `api_key`: keys are owned (hashed) by the keys service."""

USERNAME_RE: Final = re.compile(r"[A-Za-z0-9._@-]{3,64}")

# RFC 5322 dot-atom local part (ASCII) and an LDH domain with at least one dot.
_EMAIL_RE: Final = re.compile(
    r"(?P<local>[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)"
    r"@(?P<domain>(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63})"
)

MAX_EMAIL = 254
MAX_NAME = 100


@dataclass(frozen=True)
class NewAccount:
    """A validated request to create an account and its main user."""

    account_name: str
    api_username: str
    email: str
    phone_number: str  # E.164 or ""
    first_name: str
    last_name: str
    country: str
    timezone: str
    test_mode: bool


def check_username(raw: str) -> str:
    if not USERNAME_RE.fullmatch(raw):
        raise UsernameInvalid("api_username must be 3-64 characters from A-Z a-z 0-9 . _ @ -")
    return raw


def username_key(name: str) -> str:
    """Usernames are unique ignoring case."""
    return name.lower()


def check_email(raw: str) -> str:
    value = raw.strip()
    m = _EMAIL_RE.fullmatch(value)
    if m is None or len(value) > MAX_EMAIL or len(m.group("local")) > 64:
        raise EmailInvalid("email is not a valid address")
    return f"{m.group('local')}@{m.group('domain').lower()}"


def check_country(raw: str, default: str) -> str:
    value = (raw.strip() or default).upper()
    if value not in phonenumbers.SUPPORTED_REGIONS:
        raise CountryInvalid("country must be an ISO 3166-1 alpha-2 code")
    return value


def check_phone(raw: str, country: str) -> str:
    """Optional; a national number is read in `country`. Stored as E.164."""
    value = raw.strip()
    if not value:
        return ""
    if len(value) > 32 or not re.fullmatch(r"\+?[0-9 ()./-]+", value):
        raise PhoneInvalid("phone_number must be an E.164 number such as +61411111111")
    try:
        number = phonenumbers.parse(value, country)
    except phonenumbers.NumberParseException:
        raise PhoneInvalid("phone_number must be an E.164 number such as +61411111111") from None
    if not phonenumbers.is_valid_number(number):
        raise PhoneInvalid("phone_number is not a valid number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def check_name(raw: str, field: str, *, required: bool) -> str:
    value = " ".join(raw.split())
    if required and not value:
        raise NameInvalid(f"{field} is required", field=field)
    if len(value) > MAX_NAME or not value.isprintable():
        raise NameInvalid(f"{field} must be at most {MAX_NAME} printable characters", field=field)
    return value


def new_account(
    *,
    account_name: str,
    api_username: str,
    email: str,
    phone_number: str,
    first_name: str,
    last_name: str,
    country: str,
    test_mode: bool,
    default_country: str,
    default_timezone: str,
) -> NewAccount:
    """Validate and normalise a CreateAccount request."""
    country_code = check_country(country, default_country)
    return NewAccount(
        account_name=check_name(account_name, "account_name", required=True),
        api_username=check_username(api_username),
        email=check_email(email),
        phone_number=check_phone(phone_number, country_code),
        first_name=check_name(first_name, "first_name", required=False),
        last_name=check_name(last_name, "last_name", required=False),
        country=country_code,
        timezone=default_timezone,
        test_mode=test_mode,
    )


def check_balance(raw: str) -> str:
    """The balance messaging reported, as ClickSend shows it (6 decimal places). Anything that is
    not a finite decimal means we do not know the balance: never show an invented number."""
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise BalanceUnavailable("the balance is unavailable right now") from None
    if not raw or not value.is_finite():
        raise BalanceUnavailable("the balance is unavailable right now")
    return f"{value:.6f}"
