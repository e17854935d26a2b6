"""Page sizes and opaque page tokens for listing API keys."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

from services.keys.domain.api_key_format import valid_key_id
from services.keys.domain.errors import RequestInvalid

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100


def page_size(requested: int) -> int:
    if requested < 0:
        raise RequestInvalid("page_size must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def page_token(create_time: datetime, key_id: str) -> str:
    micros = int(create_time.timestamp() * 1_000_000)
    return base64.urlsafe_b64encode(f"{micros}.{key_id}".encode()).decode().rstrip("=")


def parse_page_token(token: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        micros, key_id = raw.split(".", 1)
        when = datetime.fromtimestamp(int(micros) / 1_000_000, UTC)
    except (ValueError, UnicodeDecodeError, binascii.Error, OverflowError, OSError):
        raise RequestInvalid("page_token is not valid") from None
    if not valid_key_id(key_id):
        raise RequestInvalid("page_token is not valid")
    return when, key_id
