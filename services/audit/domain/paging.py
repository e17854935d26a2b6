"""Page sizes and page tokens of the event and alert lists (a token is the last sequence or id returned)."""

from __future__ import annotations

from typing import Final

from services.audit.domain.errors import PageTokenInvalid

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_EXPORT_PAGE = 1000


def page_size_of(requested: int, maximum: int = MAX_PAGE_SIZE) -> int:
    if requested <= 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, maximum)


MAX_SEQUENCE: Final = 2**63 - 1


def parse_page_token(token: str) -> int:
    if not token:
        return 0
    # An issued token is an event sequence: ASCII digits of a value a bigint holds.
    if not (token.isascii() and token.isdigit()) or len(token) > 19 or int(token) > MAX_SEQUENCE:
        raise PageTokenInvalid("page_token is not one this service issued; start again without it")
    return int(token)


def next_token(last_sequence: int | None, returned: int, limit: int) -> str:
    return str(last_sequence) if last_sequence is not None and returned == limit else ""
