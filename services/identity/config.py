"""Identity service settings."""

from __future__ import annotations

from dataclasses import dataclass

from services.identity.domain import Currency
from svckit.config import KitSettings, setting


@dataclass(frozen=True, kw_only=True)
class Settings(KitSettings):
    service_name: str = setting("SERVICE_NAME", default="identity")
    # Privileged actions fail closed without the audit log, so identity does not start without it.
    audit_addr: str = setting("AUDIT_ADDR", doc="host:port of the audit service")
    audit_strict_timeout_seconds: float = setting(
        "AUDIT_STRICT_TIMEOUT_SECONDS", default=5.0, doc="how long a privileged action waits for its audit event"
    )
    messaging_addr: str = setting("MESSAGING_ADDR", doc="host:port of messaging (account balances)")
    messaging_timeout_seconds: float = setting("MESSAGING_TIMEOUT_SECONDS", default=2.0)
    # Not called yet: API keys for sub-accounts and encrypted TOTP secrets (issue 3) go through keys.
    keys_addr: str = setting("KEYS_ADDR", default="", doc="host:port of the keys service")
    default_country: str = setting("DEFAULT_COUNTRY", default="AU", doc="ISO 3166 code for new accounts")
    default_timezone: str = setting("DEFAULT_TIMEZONE", default="Australia/Melbourne")
    currency_name_short: str = setting("CURRENCY_NAME_SHORT", default="AUD")
    currency_prefix_d: str = setting("CURRENCY_PREFIX_D", default="$")
    currency_prefix_c: str = setting("CURRENCY_PREFIX_C", default="c")
    currency_name_long: str = setting("CURRENCY_NAME_LONG", default="Australian Dollars")
    currency_min_recharge: str = setting("CURRENCY_MIN_RECHARGE", default="20.00")
    currency_max_recharge: str = setting("CURRENCY_MAX_RECHARGE", default="10000.00")

    @property
    def currency(self) -> Currency:
        return Currency(
            currency_name_short=self.currency_name_short,
            currency_prefix_d=self.currency_prefix_d,
            currency_prefix_c=self.currency_prefix_c,
            currency_name_long=self.currency_name_long,
            min_recharge_amount=self.currency_min_recharge,
            max_recharge_amount=self.currency_max_recharge,
        )
