"""Message ids: ClickSend's are uppercase random (version 4) UUID strings."""

from __future__ import annotations

import os


def new_message_id() -> str:
    """ClickSend message ids are uppercase UUID strings (random, version 4)."""
    return new_message_ids(1)[0]


def new_message_ids(n: int) -> list[str]:
    """`n` random (version 4) message ids from one read of the system's random source."""
    raw = bytearray(os.urandom(16 * n))
    raw[6::16] = bytes((b & 0x0F) | 0x40 for b in raw[6::16])  # version 4
    raw[8::16] = bytes((b & 0x3F) | 0x80 for b in raw[8::16])  # RFC 4122 variant
    h = raw.hex().upper()
    return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-{h[i + 20:i + 32]}"
            for i in range(0, 32 * n, 32)]
