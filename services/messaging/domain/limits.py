"""Send limits and rate limits.

Whole-request limits (token buckets per account and per API key, the key's messages per minute/day)
refuse the whole request with 429 + Retry-After: nothing is stored or charged, the client retries later.
Per-destination rules are per message, as ClickSend reports per message: a country the key may not send
to is COUNTRY_NOT_ALLOWED, a destination prefix over its velocity limit (SMS pumping) is THROTTLED.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import phonenumbers

from services.messaging.domain.outbound import MAX_MESSAGES_PER_REQUEST
from svckit.errors import ResourceExhausted
from svckit.senders import sender_allowed

if TYPE_CHECKING:
    from services.messaging.domain.records import Caller


class RateLimited(ResourceExhausted):
    """Whole request refused; `retry_after_seconds` goes to the client as Retry-After."""

    reason = "TOO_MANY_REQUESTS"


class SendLimitExceeded(ResourceExhausted):
    reason = "SEND_LIMIT_EXCEEDED"


@dataclass(frozen=True, slots=True)
class SendLimits:
    """An API key's own limits (0 / empty = none). `bucket`: the key whose counters they draw from, shared by
    the key's lineage (rolled successors, keys it minted) so rolling never resets them; "" = the key's own."""

    per_minute: int = 0
    per_day: int = 0
    countries: frozenset[str] = frozenset()
    bucket: str = ""
    senders: frozenset[str] | None = None  # compared forms (svckit.senders) of the `from`s allowed; None = any

    def allows_country(self, country: str) -> bool:
        return not self.countries or country.upper() in self.countries

    def allows_sender(self, sender: str) -> bool:
        """The key's and the user's sender limit (issue 21); a limited caller must name one of its senders."""
        return sender_allowed(sender, self.senders)


@dataclass(frozen=True, slots=True)
class Bucket:
    """A token bucket (`rate` per second, at most `capacity`) or, with `window` > 0, a fixed window of
    `window` seconds allowing `capacity` in each."""

    key: str
    capacity: int
    rate: float = 0.0
    window: int = 0


@dataclass(frozen=True, slots=True)
class Velocity:
    """At most `limit` messages per `window` seconds to one destination prefix (keyed token in `key`)."""

    key: str
    limit: int
    window: int


@dataclass(frozen=True, slots=True)
class LimitRequest:
    """What one send asks of the limiter: `cost` tokens from every bucket (all or nothing), and per
    message the velocity counter it counts against (None: exempt, e.g. a test recipient)."""

    buckets: tuple[Bucket, ...]
    velocity: tuple[Velocity | None, ...]


@dataclass(frozen=True, slots=True)
class LimitVerdict:
    """`retry_after` > 0: the whole request is refused. Otherwise `throttled[i]` marks messages over their
    destination prefix's velocity limit."""

    retry_after: float = 0.0
    throttled: tuple[bool, ...] = ()
    exceeded: str = ""  # which limit refused the request: "account", "api_key", "key_minute", "key_day"


def destination_prefix(e164: str, national_digits: int, region: str = "") -> str:
    """Country calling code plus the first `national_digits` digits of the national number. With the
    number's region (known after validation) the calling code is a table lookup, not a parse."""
    cc = _calling_code(region) if region else ""
    if cc and e164.startswith(cc):
        return e164[: len(cc) + national_digits]
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return e164[: 1 + national_digits]
    national = str(number.national_number)
    return f"+{number.country_code}{national[:national_digits]}"


@functools.lru_cache(maxsize=512)
def _calling_code(region: str) -> str:
    """"+61" for "AU" ("" when unknown)."""
    cc = phonenumbers.country_code_for_region(region)
    return f"+{cc}" if cc else ""


def retry_after_seconds(wait: float) -> int:
    """Retry-After is whole seconds, at least 1."""
    return max(1, math.ceil(wait))


@dataclass(frozen=True, slots=True)
class RateConfig:
    """Configured limits (0 disables one): messages per second and burst per account and per API key, and
    at most `prefix_limit` messages per `prefix_window` seconds to one destination prefix per account."""

    account_rate: float = 0.0
    account_burst: int = 0
    key_rate: float = 0.0
    key_burst: int = 0
    prefix_limit: int = 0
    prefix_window: int = 60
    prefix_digits: int = 4

    def __post_init__(self) -> None:
        for name in ("account", "key"):
            rate, burst = getattr(self, f"{name}_rate"), getattr(self, f"{name}_burst")
            if rate < 0 or burst < 0 or (rate > 0) != (burst > 0):
                raise ValueError(f"{name} rate and burst must both be positive, or both 0 (off)")
            if burst and burst < MAX_MESSAGES_PER_REQUEST:
                raise ValueError(f"{name} burst must allow one full request ({MAX_MESSAGES_PER_REQUEST} messages)")
        if self.prefix_limit < 0 or self.prefix_window <= 0 or not 1 <= self.prefix_digits <= 8:
            raise ValueError("prefix velocity needs limit >= 0, window > 0 and 1-8 digits")


def limit_request(config: RateConfig, caller: Caller, prefix_tokens: Sequence[str | None]) -> LimitRequest:
    """The buckets one send draws from and, per message, its destination-prefix counter (None: exempt)."""
    acct = caller.account_id
    buckets: list[Bucket] = []
    if config.account_rate > 0:
        buckets.append(Bucket(f"account:{acct}", config.account_burst, config.account_rate))
    if caller.api_key_id:
        kid = caller.api_key_id
        if config.key_rate > 0:
            buckets.append(Bucket(f"api_key:{kid}", config.key_burst, config.key_rate))
        # The key's own limits, counted per lineage: each key is held to its own cap on the shared count.
        lineage = caller.limits.bucket or kid
        if caller.limits.per_minute > 0:
            buckets.append(Bucket(f"key_minute:{lineage}", caller.limits.per_minute, window=60))
        if caller.limits.per_day > 0:
            buckets.append(Bucket(f"key_day:{lineage}", caller.limits.per_day, window=86_400))
    velocity = tuple(
        None if token is None or config.prefix_limit <= 0
        else Velocity(f"prefix:{acct}:{token}", config.prefix_limit, config.prefix_window)
        for token in prefix_tokens
    )
    return LimitRequest(tuple(buckets), velocity)


def limit_error(verdict: LimitVerdict, limits: SendLimits) -> ResourceExhausted:
    """The whole-request refusal for a verdict with `retry_after` set."""
    which = verdict.exceeded
    if verdict.retry_after < 0:
        what = {"key_minute": f"{limits.per_minute} messages per minute",
                "key_day": f"{limits.per_day} messages per day"}.get(which, "its rate limit")
        return SendLimitExceeded(f"This request has more messages than the API key allows ({what}).", limit=which)
    wait = str(retry_after_seconds(verdict.retry_after))
    if which in ("key_minute", "key_day"):
        return SendLimitExceeded("The API key's send limit is used up; retry later.", limit=which,
                                 retry_after_seconds=wait)
    return RateLimited("Too many messages; retry later.", limit=which, retry_after_seconds=wait)
