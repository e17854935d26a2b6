"""Recipients normalised to E.164 with `phonenumbers` (including ClickSend's fixed test recipients),
sender ids and schedules."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import phonenumbers

from services.messaging.domain.errors import InvalidRecipient, InvalidSchedule, InvalidSenderId

# ClickSend's documented test recipients: accepted, never sent, never charged. E.164 -> region.
_TEST_RECIPIENT_REGIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "+61411111111": "AU",
        "+61422222222": "AU",
        "+61433333333": "AU",
        "+61444444444": "AU",
        "+14055555555": "US",
        "+14055555666": "US",
        "+447777777777": "GB",
        "+8615555555555": "CN",
    }
)
TEST_RECIPIENTS: Final[frozenset[str]] = frozenset(_TEST_RECIPIENT_REGIONS)

# Digits with the usual separators, optionally one leading "+". No letters (phonenumbers would turn
# vanity letters into digits), no extensions, no "tel:" URIs.
_RECIPIENT_SHAPE: Final = re.compile(r"\+?[0-9 ().\-]*[0-9][0-9 ().\-]*")
_MAX_RECIPIENT_INPUT: Final = 40
REGION_SHAPE: Final = re.compile(r"[A-Z]{2}")


@dataclass(frozen=True, slots=True)
class Recipient:
    e164: str
    country: str  # ISO 3166-1 alpha-2 of the number (not of the request's `country` hint)

    @property
    def is_test(self) -> bool:
        return self.e164 in TEST_RECIPIENTS


def is_test_recipient(e164: str) -> bool:
    return e164 in TEST_RECIPIENTS


_RECIPIENT_CACHE_SIZE: Final = 65_536


def parse_recipient(to: str, country: str | None) -> Recipient:
    """`_parse_recipient` with its valid answers memoised (bounded LRU).

    Validation with `phonenumbers` costs tens of microseconds per number, a large share of the send path;
    customers send to the same numbers again and again. Only valid results are kept (an exception is
    never cached), and a `Recipient` is immutable, so sharing it is safe.
    """
    return _parse_recipient_cached(to, country)


def _parse_recipient(to: str, country: str | None) -> Recipient:
    """Normalise `to` (E.164, or national format with `country` as ISO2) to a valid number.

    Raises InvalidRecipient for anything `phonenumbers` does not consider a valid number, except
    ClickSend's fixed test recipients, which are always accepted.
    """
    raw = to.strip()
    if raw in _TEST_RECIPIENT_REGIONS:
        return Recipient(raw, _TEST_RECIPIENT_REGIONS[raw])
    if not raw:
        raise InvalidRecipient("The recipient is empty.")
    if len(raw) > _MAX_RECIPIENT_INPUT or not _RECIPIENT_SHAPE.fullmatch(raw):
        raise InvalidRecipient("The recipient is not a phone number.")
    region: str | None = None
    if not raw.startswith("+"):
        region = (country or "").strip().upper()
        if not region:
            raise InvalidRecipient("The recipient is not in E.164 format and no country was given.")
        if not REGION_SHAPE.fullmatch(region) or region not in phonenumbers.SUPPORTED_REGIONS:
            raise InvalidRecipient("The country is not a known ISO 3166-1 alpha-2 code.")
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidRecipient("The recipient is not a valid phone number.") from exc
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if e164 in _TEST_RECIPIENT_REGIONS:
        return Recipient(e164, _TEST_RECIPIENT_REGIONS[e164])
    # is_valid_number() is exactly this pair; calling it and then region_code_for_number would work out
    # the region twice (a third of the time spent on an unseen number).
    number_region = phonenumbers.region_code_for_number(number)
    if number_region is None or not phonenumbers.is_valid_number_for_region(number, number_region):
        raise InvalidRecipient("The recipient is not a valid phone number.")
    if not REGION_SHAPE.fullmatch(number_region):
        # Non-geographic numbers (+800, +882, ...: region "001") have no country to route or price by.
        raise InvalidRecipient("The recipient is not a phone number in a country we can send to.")
    return Recipient(e164, number_region)


_parse_recipient_cached = functools.lru_cache(maxsize=_RECIPIENT_CACHE_SIZE)(_parse_recipient)


def normalize_recipient(to: str, country: str | None) -> str:
    """`parse_recipient(to, country).e164`."""
    return parse_recipient(to, country).e164


_ALPHA_SENDER: Final = re.compile(r"[A-Za-z0-9 ]{1,11}")
_HAS_LETTER: Final = re.compile(r"[A-Za-z]")
_NUMERIC_SENDER: Final = re.compile(r"\+?[0-9]{1,15}")


def validate_sender(sender: str) -> str:
    """Return the sender id to use ("" = a shared number); raises InvalidSenderId.

    Accepted: empty (after trimming), an alphanumeric id of 1-11 ASCII letters/digits/spaces with at
    least one letter, or a number of up to 15 digits with an optional leading "+".
    """
    value = sender.strip()
    if not value:
        return ""
    if _NUMERIC_SENDER.fullmatch(value):
        return value
    if _ALPHA_SENDER.fullmatch(value) and _HAS_LETTER.search(value):
        return value
    raise InvalidSenderId(
        "The sender id must be up to 11 letters, digits or spaces with at least one letter, "
        "or a phone number of up to 15 digits."
    )


SCHEDULE_PAST_TOLERANCE_S: Final = 60
SCHEDULE_MAX_AHEAD_S: Final = 365 * 24 * 3600


def validate_schedule(schedule: int, now: int) -> int | None:
    """0 means send now (None); otherwise a unix time from 60 s ago up to 365 days ahead, inclusive."""
    if isinstance(schedule, bool):
        raise InvalidSchedule("The schedule must be a unix time in seconds.")
    if schedule == 0:
        return None
    if schedule < now - SCHEDULE_PAST_TOLERANCE_S:
        raise InvalidSchedule("The schedule is in the past.")
    if schedule > now + SCHEDULE_MAX_AHEAD_S:
        raise InvalidSchedule("The schedule is more than 365 days ahead.")
    return schedule
