"""ClickSend page/limit paging and the unix-time query parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from svckit.errors import InvalidArgument
from svckit.times import unix_seconds


class InvalidPaging(InvalidArgument):
    reason = "INVALID_PAGING"


DEFAULT_PAGE_LIMIT: Final = 15
MIN_PAGE_LIMIT: Final = 15
MAX_PAGE_LIMIT: Final = 100


@dataclass(frozen=True, slots=True)
class PageWindow:
    page: int
    limit: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.limit

    def last_page(self, total: int) -> int:
        return max(1, -(-total // self.limit))

    def bounds(self, total: int, count: int) -> tuple[int | None, int | None]:
        """ClickSend's `from`/`to`: 1-based indexes of the first and last item shown (None when empty)."""
        if count == 0:
            return None, None
        return self.offset + 1, self.offset + count


def unix_time(seconds: int, name: str) -> int | None:
    """A unix-seconds filter (date_from, date_to, date_before): 0 = not given; else within 0..year 9999,
    so the database conversion (to_timestamp) can never overflow."""
    return unix_seconds(seconds, name) or None


def page_window(page: int, limit: int) -> PageWindow:
    """ClickSend paging: page defaults to 1, limit to 15; limit must be 15-100 (the SDK enforces that too)."""
    if page < 0:
        raise InvalidPaging("page must be 1 or more.")
    if limit < 0 or (limit and not MIN_PAGE_LIMIT <= limit <= MAX_PAGE_LIMIT):
        raise InvalidPaging(
            f"limit must be between {MIN_PAGE_LIMIT} and {MAX_PAGE_LIMIT}.",
            min_limit=str(MIN_PAGE_LIMIT),
            max_limit=str(MAX_PAGE_LIMIT),
        )
    return PageWindow(page=page or 1, limit=limit or DEFAULT_PAGE_LIMIT)
