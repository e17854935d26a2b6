"""Identity service settings."""

from __future__ import annotations

from dataclasses import dataclass

from services.identity.domain.accounts import Currency
from services.identity.domain.credentials import Argon2Params, PasswordPolicy
from services.identity.domain.sessions import SessionSettings, ThrottlePolicy
from services.identity.domain.signup import SignupPolicy
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
    keys_addr: str = setting("KEYS_ADDR", doc="host:port of keys (sub-accounts' API keys, TOTP secret encryption)")
    keys_timeout_seconds: float = setting("KEYS_TIMEOUT_SECONDS", default=5.0)
    rewrap_seconds: float = setting(
        "IDENTITY_REWRAP_SECONDS", default=600.0,
        doc="period of the pass that moves TOTP secrets to their account's newest key version (and reports to keys)")
    closure_pending_seconds: int = setting(
        "ACCOUNT_CLOSURE_PENDING_SECONDS", default=14 * 86400,
        doc="how long a closing account can still be cancelled before its keys are destroyed (keys' minimum"
            " KEYS_MIN_DESTRUCTION_PENDING_SECONDS must allow it)")
    closure_sweep_seconds: float = setting(
        "IDENTITY_CLOSURE_SWEEP_SECONDS", default=30.0,
        doc="period of the sweep that retries account-closure steps and purges accounts whose window has ended")
    # Passwords: argon2id cost (hashes made with other parameters are upgraded at the next login) and policy.
    argon2_time_cost: int = setting("PASSWORD_ARGON2_TIME_COST", default=3)
    argon2_memory_kib: int = setting("PASSWORD_ARGON2_MEMORY_KIB", default=65536)
    argon2_parallelism: int = setting("PASSWORD_ARGON2_PARALLELISM", default=1)
    password_min_length: int = setting("PASSWORD_MIN_LENGTH", default=12)
    password_min_score: int = setting("PASSWORD_MIN_SCORE", default=3, doc="zxcvbn score 0-4")
    # Sessions and step-up.
    session_lifetime_seconds: int = setting("SESSION_LIFETIME_SECONDS", default=12 * 3600)
    staff_session_lifetime_seconds: int = setting("STAFF_SESSION_LIFETIME_SECONDS", default=8 * 3600)
    session_idle_seconds: int = setting("SESSION_IDLE_SECONDS", default=3600)
    account_min_session_lifetime_seconds: int = setting(
        "ACCOUNT_POLICY_MIN_SESSION_LIFETIME_SECONDS", default=300,
        doc="the shortest session lifetime an account's policy may set (besides 0: the platform's limits alone)")
    totp_issuer: str = setting("TOTP_ISSUER", default="SendSafe")
    # Brute force.
    login_max_failures: int = setting("LOGIN_MAX_FAILURES", default=10, doc="per user, then locked")
    login_window_seconds: int = setting("LOGIN_WINDOW_SECONDS", default=900)
    login_lock_seconds: int = setting("LOGIN_LOCK_SECONDS", default=900)
    login_address_max_failures: int = setting("LOGIN_ADDRESS_MAX_FAILURES", default=100, doc="per client address")
    login_address_window_seconds: int = setting("LOGIN_ADDRESS_WINDOW_SECONDS", default=900)
    login_ipv6_network_max_failures: int = setting(
        "LOGIN_IPV6_NETWORK_MAX_FAILURES", default=100, doc="per client IPv6 /64, in the address window"
    )
    login_ipv4_network_max_failures: int = setting(
        "LOGIN_IPV4_NETWORK_MAX_FAILURES", default=300, doc="per client IPv4 /24 (looser: NAT), in the address window"
    )
    # Self-service sign-up (domain.signup): per client address and network, per window; and the emailed code.
    signup_window_seconds: int = setting("SIGNUP_WINDOW_SECONDS", default=3600)
    signup_address_max: int = setting("SIGNUP_ADDRESS_MAX", default=20, doc="sign-ups per client address")
    signup_ipv4_network_max: int = setting("SIGNUP_IPV4_NETWORK_MAX", default=60, doc="sign-ups per IPv4 /24")
    signup_ipv6_network_max: int = setting("SIGNUP_IPV6_NETWORK_MAX", default=20, doc="sign-ups per IPv6 /64")
    signup_code_attempts_max: int = setting(
        "SIGNUP_CODE_ATTEMPTS_MAX", default=60, doc="code entries and resends per client address and per network")
    signup_code_ttl_seconds: int = setting("SIGNUP_CODE_TTL_SECONDS", default=1800, doc="how long a code works")
    signup_resend_interval_seconds: int = setting(
        "SIGNUP_RESEND_INTERVAL_SECONDS", default=60, doc="the shortest time between two codes for one sign-up")
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

    @property
    def signup(self) -> SignupPolicy:
        return SignupPolicy(
            window_seconds=self.signup_window_seconds, address_max=self.signup_address_max,
            ipv4_network_max=self.signup_ipv4_network_max, ipv6_network_max=self.signup_ipv6_network_max,
            code_attempts_max=self.signup_code_attempts_max, code_ttl_seconds=self.signup_code_ttl_seconds,
            resend_interval_seconds=self.signup_resend_interval_seconds,
        )

    @property
    def argon2(self) -> Argon2Params:
        return Argon2Params(self.argon2_time_cost, self.argon2_memory_kib, self.argon2_parallelism)

    @property
    def password_policy(self) -> PasswordPolicy:
        return PasswordPolicy(min_length=self.password_min_length, min_score=self.password_min_score)

    @property
    def throttle(self) -> ThrottlePolicy:
        return ThrottlePolicy(
            max_failures=self.login_max_failures,
            window_seconds=self.login_window_seconds,
            lock_seconds=self.login_lock_seconds,
            address_max_failures=self.login_address_max_failures,
            address_window_seconds=self.login_address_window_seconds,
            ipv6_network_max_failures=self.login_ipv6_network_max_failures,
            ipv4_network_max_failures=self.login_ipv4_network_max_failures,
        )

    @property
    def sessions(self) -> SessionSettings:
        return SessionSettings(
            lifetime_seconds=self.session_lifetime_seconds,
            staff_lifetime_seconds=self.staff_session_lifetime_seconds,
            idle_seconds=self.session_idle_seconds,
            step_up_max_age_seconds=self.step_up_max_age_seconds,
            totp_issuer=self.totp_issuer,
            audit_strict_timeout=self.audit_strict_timeout_seconds,
        )
