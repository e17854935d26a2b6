"""What leaves the log for customers' SIEMs and archives: the export/forwarding formats, CEF escaping and
the export cursor."""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.audit.domain.errors import CursorInvalid
from services.audit.domain.events import OUTCOME_DENIED, OUTCOME_FAILURE


@dataclass(frozen=True)
class ExportCursor:
    """Where an export stands: after `after_sequence` (a log sequence, not the account's), pinned to the
    checkpoint of `tree_size` (0: pin the latest when the next page starts)."""

    after_sequence: int = 0
    tree_size: int = 0

    def encode(self) -> str:
        return f"v1.{self.after_sequence}.{self.tree_size}"

    @classmethod
    def parse(cls, text: str) -> ExportCursor:
        if not text:
            return cls()
        parts = text.split(".")
        if len(parts) != 3 or parts[0] != "v1" or not all(p.isdigit() and len(p) <= 19 for p in parts[1:]):
            raise CursorInvalid("cursor is not one this service issued")
        return cls(int(parts[1]), int(parts[2]))


_CEF_HEADER_ESCAPE = re.compile(r"([\\|])")
_CEF_EXT_ESCAPE = re.compile(r"([\\=])")


def cef_header(value: str) -> str:
    return _CEF_HEADER_ESCAPE.sub(r"\\\1", value).replace("\r", " ").replace("\n", " ")


def cef_ext(value: str) -> str:
    return _CEF_EXT_ESCAPE.sub(r"\\\1", value).replace("\r", "\\r").replace("\n", "\\n")


def cef_severity(outcome: int, action: str) -> int:
    if outcome == OUTCOME_DENIED:
        return 7
    if outcome == OUTCOME_FAILURE:
        return 5
    return 3


FORMAT_JSONL, FORMAT_CEF = 1, 2
