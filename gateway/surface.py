"""The gateway's two external surfaces: ClickSend's `/v3` and SendSafe's own `/v1` (JSON shapes differ)."""

from __future__ import annotations

import enum


class Surface(enum.Enum):
    CLICKSEND = "clicksend"  # /v3/...
    V1 = "v1"  # /v1/... and anything else of our own

    @classmethod
    def for_path(cls, path: str) -> Surface:
        return cls.CLICKSEND if path == "/v3" or path.startswith("/v3/") else cls.V1
