"""Our TOTP against an independent implementation: Debian's `oathtool` (liboath, C). The codes an
authenticator app computes from our enrolment URI, and the codes our verification accepts, are the codes
oathtool computes for the same secret and time; both reproduce RFC 6238's SHA-1 test vectors.

oathtool is a test dependency (`make sysdeps` installs it): without it this test fails, it does not skip."""

from __future__ import annotations

import base64
import shutil
import subprocess

import pyotp
import pytest

from services.identity.domain import credentials

# RFC 6238 appendix B, SHA-1: the ASCII secret "12345678901234567890", 8 digits, 30 s steps.
RFC6238_SECRET = base64.b32encode(b"12345678901234567890").decode()
RFC6238_SHA1 = {
    59: "94287082",
    1111111109: "07081804",
    1111111111: "14050471",
    1234567890: "89005924",
    2000000000: "69279037",
    20000000000: "65353130",
}
TIMES = (0, 29, 30, 59, 1_111_111_109, 1_234_567_890, 1_700_000_015, 2_000_000_000, 20_000_000_000)


def oathtool(secret: str, when: int, digits: int = credentials.TOTP_DIGITS) -> str:
    path = shutil.which("oathtool")
    assert path is not None, "oathtool is missing: run `make sysdeps` (apt-get install oathtool)"
    out = subprocess.run(
        [path, "--totp", "-b", "-d", str(digits), "-s", f"{credentials.TOTP_PERIOD}s", secret, "-N", f"@{when}"],
        check=True, capture_output=True, text=True, timeout=10,
    )
    return out.stdout.strip()


@pytest.mark.parametrize(("when", "expected"), sorted(RFC6238_SHA1.items()))
def test_rfc6238_sha1_vectors_from_both_implementations(when: int, expected: str) -> None:
    assert oathtool(RFC6238_SECRET, when, digits=8) == expected
    assert pyotp.TOTP(RFC6238_SECRET, digits=8, interval=credentials.TOTP_PERIOD).at(when) == expected


def test_enrolment_uri_codes_match_oathtool() -> None:
    """What an authenticator app does with our otpauth URI gives oathtool's codes."""
    for _ in range(3):
        secret = credentials.new_totp_secret()
        app = pyotp.parse_uri(credentials.totp_uri(secret, "alice", "SendSafe"))
        assert isinstance(app, pyotp.TOTP)
        assert (app.digits, app.interval, app.secret) == (credentials.TOTP_DIGITS, credentials.TOTP_PERIOD, secret)
        for when in TIMES:
            assert app.at(when) == oathtool(secret, when), (secret, when)


def test_verification_accepts_oathtool_codes_at_their_step_only() -> None:
    secret = credentials.new_totp_secret()
    for when in TIMES[3:]:
        step = when // credentials.TOTP_PERIOD
        code = oathtool(secret, when)
        assert credentials.matching_step(secret, code, now=when) == step
        # +-1 step of clock skew is allowed; the code is not accepted two steps away (barring a 1-in-10^6 clash).
        assert credentials.matching_step(secret, code, now=when + credentials.TOTP_PERIOD) == step
        far = credentials.matching_step(secret, code, now=when + 3 * credentials.TOTP_PERIOD)
        assert far != step
