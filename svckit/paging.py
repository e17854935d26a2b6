"""ClickSend's page/limit paging, used by every list that speaks the /v3 shape.

`page_window` validates a request's `page` and `limit` (0 means "not given": page 1, limit 15; a limit must
be 15-100, which the official SDK enforces too) and `clicksend_paging` builds the answer's paging fields
(`total`, `per_page`, `current_page`, `last_page`, the page URLs and the 1-based `first_index`/`last_index`,
left out when there is nothing to show). Pure: domain code may use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from svckit.errors import InvalidArgument

DEFAULT_PAGE_LIMIT: Final = 15
MIN_PAGE_LIMIT: Final = 15
MAX_PAGE_LIMIT: Final = 100


class InvalidPaging(InvalidArgument):
    reason = "INVALID_PAGING"


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


def page_window(page: int, limit: int) -> PageWindow:
    """ClickSend paging: page defaults to 1, limit to 15; limit must be 15-100."""
    if page < 0:
        raise InvalidPaging("page must be 1 or more.")
    if limit < 0 or (limit and not MIN_PAGE_LIMIT <= limit <= MAX_PAGE_LIMIT):
        raise InvalidPaging(
            f"limit must be between {MIN_PAGE_LIMIT} and {MAX_PAGE_LIMIT}.",
            min_limit=str(MIN_PAGE_LIMIT),
            max_limit=str(MAX_PAGE_LIMIT),
        )
    return PageWindow(page=page or 1, limit=limit or DEFAULT_PAGE_LIMIT)


def clicksend_paging(w: PageWindow, total: int, count: int) -> dict[str, object]:
    """The answer's paging fields for `count` items shown of `total` (page URLs and indexes only when they
    exist), as keyword arguments for a list response message."""
    last = w.last_page(total)
    first_index, last_index = w.bounds(total, count)
    out: dict[str, object] = {"total": total, "per_page": w.limit, "current_page": w.page, "last_page": last}
    if w.page < last:
        out["next_page_url"] = f"/?page={w.page + 1}"
    if w.page > 1:
        out["prev_page_url"] = f"/?page={w.page - 1}"
    if first_index is not None and last_index is not None:
        out["first_index"] = first_index
        out["last_index"] = last_index
    return out
