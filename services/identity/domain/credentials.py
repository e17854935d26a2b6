"""Secrets people hold and how identity checks them: the password policy (offline) and argon2id cost,
TOTP (RFC 6238 via pyotp, QR via segno), recovery codes and session tokens. No I/O (hashing runs in
`adapters/hasher.py`).

What is stored: the argon2id PHC string of a password; the TOTP secret encrypted (by the caller, through
the keys service); SHA-256 of each recovery code and of each session token. Recovery codes (80 bits) and
session tokens (256 bits) are random enough that a fast hash is the right one; passwords are not."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import secrets
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Final

import pyotp

from services.identity.domain.errors import MfaCodeInvalid, PasswordRejected

# ---------------------------------------------------------------------------------------------------
# Passwords


@dataclass(frozen=True)
class Argon2Params:
    """argon2id cost. Defaults: RFC 9106's second recommended option scaled to a 2-core host -- 64 MiB,
    3 passes, 1 lane -- about 0.2 s of one core per verification on the development machine, so a few
    logins/s per core (`python -m bench identity` measures it)."""

    time_cost: int = 3
    memory_kib: int = 64 * 1024
    parallelism: int = 1


@dataclass(frozen=True)
class PasswordPolicy:
    """Offline checks only (never a network call): length, not built from the username or email, not
    one of the 30,000 most common leaked passwords, and not easy to guess by zxcvbn's estimate, whose
    lists and patterns ship inside the package."""

    min_length: int = 12
    max_length: int = 256
    min_score: int = 3  # zxcvbn 0..4; 3 = "safely unguessable: moderate protection from offline attacks"

    @cached_property
    def _common(self) -> frozenset[str]:
        from zxcvbn.frequency_lists import FREQUENCY_LISTS

        return frozenset(FREQUENCY_LISTS["passwords"])

    def check(self, password: str, *, identifiers: tuple[str, ...] = ()) -> None:
        if len(password) < self.min_length:
            raise PasswordRejected(f"the password must have at least {self.min_length} characters", rule="min_length")
        if len(password.encode("utf-8")) > self.max_length:
            raise PasswordRejected(f"the password must have at most {self.max_length} bytes", rule="max_length")
        folded = password.casefold()
        for ident in identifiers:
            for part in _identifier_parts(ident):
                if part in folded:
                    raise PasswordRejected("the password must not contain your username or email", rule="identifier")
        if folded in self._common:
            raise PasswordRejected("this password is one of the most common passwords", rule="common")
        from zxcvbn import zxcvbn

        estimate = zxcvbn(password[:100], user_inputs=[i for i in identifiers if i])
        if estimate["score"] < self.min_score:
            raise PasswordRejected("this password is too easy to guess; use a longer passphrase", rule="guessable")


def _identifier_parts(identifier: str) -> set[str]:
    """The username and the email's local part (4+ characters: shorter pieces match too much)."""
    value = identifier.casefold()
    parts = {value, value.split("@", 1)[0]}
    return {p for p in parts if len(p) >= 4}


# ---------------------------------------------------------------------------------------------------
# TOTP (RFC 6238: SHA-1, 6 digits, 30 s; what every authenticator app supports)

TOTP_DIGITS: Final = 6
TOTP_PERIOD: Final = 30
TOTP_SECRET_BYTES: Final = 20  # 160 bits, RFC 4226's recommendation
TOTP_WINDOW: Final = 1  # accept the previous and next step too (clock skew)


def new_totp_secret() -> str:
    return base64.b32encode(secrets.token_bytes(TOTP_SECRET_BYTES)).decode("ascii")


def totp_uri(secret: str, account_name: str, issuer: str) -> str:
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_PERIOD).provisioning_uri(
        name=account_name, issuer_name=issuer
    )


def qr_png(uri: str) -> bytes:
    import segno

    out = io.BytesIO()
    segno.make(uri, error="m", micro=False).save(out, kind="png", scale=5, border=4)
    return out.getvalue()


def current_step(now: float | None = None) -> int:
    return int((time.time() if now is None else now) // TOTP_PERIOD)


def typed_code(code: str) -> str | None:
    """A code as a person typed it (TOTP or recovery code), spaces dropped; None unless it is ASCII.
    Authenticators and recovery sheets show ASCII only; anything else (full-width digits pass str.isdigit,
    then make hmac.compare_digest raise) is answered like a wrong code, never as an error."""
    code = code.strip().replace(" ", "")
    return code if code.isascii() else None


def _totp_code(code: str) -> str | None:
    typed = typed_code(code)
    return typed if typed is not None and len(typed) == TOTP_DIGITS and typed.isdigit() else None


def matching_step(secret: str, code: str, now: float | None = None) -> int | None:
    """The time step whose code `code` is (now ±1 step), or None. The caller must still make sure the
    step was not used before (replay): see the store's atomic `last_step` update."""
    typed = _totp_code(code)
    if typed is None:
        return None
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_PERIOD)
    step = current_step(now)
    found = None
    for candidate in range(step - TOTP_WINDOW, step + TOTP_WINDOW + 1):
        # Compare all three in constant time; no early exit.
        if hmac.compare_digest(totp.generate_otp(candidate), typed):
            found = candidate
    return found


def require_code_format(code: str) -> str:
    typed = _totp_code(code)
    if typed is None:
        raise MfaCodeInvalid(f"the code is {TOTP_DIGITS} digits (0-9)")
    return typed


# ---------------------------------------------------------------------------------------------------
# Recovery codes: 10 codes of 16 base32 characters (80 bits each), shown once, stored as SHA-256.

RECOVERY_CODE_COUNT: Final = 10
_RECOVERY_BYTES: Final = 10  # 80 bits -> 16 base32 characters


def new_recovery_codes(count: int = RECOVERY_CODE_COUNT) -> list[str]:
    out = []
    for _ in range(count):
        raw = base64.b32encode(secrets.token_bytes(_RECOVERY_BYTES)).decode("ascii").lower()
        out.append("-".join(raw[i : i + 4] for i in range(0, len(raw), 4)))
    return out


def normalize_recovery_code(code: str) -> str:
    """The code's letters and digits, lower case; "" (never a stored code) for anything but ASCII."""
    typed = typed_code(code)
    return "" if typed is None else "".join(ch for ch in typed.lower() if ch.isalnum())


def recovery_code_hash(code: str) -> bytes:
    return hashlib.sha256(b"sendsafe.recovery.v1\x00" + normalize_recovery_code(code).encode("ascii")).digest()


# ---------------------------------------------------------------------------------------------------
# Session tokens: `ss_sess_` + 256 random bits; the session's public id is separate and not a secret.

SESSION_TOKEN_PREFIX: Final = "ss_sess_"  # noqa: S105 - a prefix, not a secret


def new_session_token() -> str:
    return SESSION_TOKEN_PREFIX + secrets.token_urlsafe(32)


def session_token_hash(token: str) -> bytes:
    return hashlib.sha256(b"sendsafe.session.v1\x00" + token.encode("utf-8", "replace")).digest()


def new_session_id() -> str:
    return "ses_" + secrets.token_hex(12)


# The record name a TOTP secret is sealed under (`svckit.envelope.aad_for`), with the subject's key.
TOTP_RECORD = "totp_secret"


@dataclass(frozen=True)
class Enrollment:
    otpauth_uri: str
    secret: str
    qr_png: bytes
