"""SMS body encoding and part counting per GSM 03.38 / ClickSend (GSM-7 160/153, UCS-2 70/67, 8 parts
max), and splitting that never separates a GSM-7 escape pair or a UTF-16 surrogate pair."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from services.messaging.domain.errors import EmptyMessage, InvalidMessageBody, MessageTooLong

# The GSM 03.38 default alphabet in septet order, 16 per row; 0x1B is the escape to the extension table.
_GSM7_TABLE: Final = (
    "@£$¥èéùìòÇ\nØø\rÅå"  # 0x00
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"  # 0x10  (Greek capitals are U+0394 etc., not the math/Ohm look-alikes)
    " !\"#¤%&'()*+,-./"  # 0x20  (0x24 is ¤; $ is 0x02)
    "0123456789:;<=>?"  # 0x30
    "¡ABCDEFGHIJKLMNO"  # 0x40
    "PQRSTUVWXYZÄÖÑÜ§"  # 0x50
    "¿abcdefghijklmno"  # 0x60
    "pqrstuvwxyzäöñüà"  # 0x70
)
assert len(_GSM7_TABLE) == 128

GSM7_BASIC: Final[frozenset[str]] = frozenset(_GSM7_TABLE) - {"\x1b"}
"""Characters that cost one septet."""

# Extension table: each costs two septets (ESC + code). Form feed is 0x1B 0x0A.
_GSM7_EXTENSION_TABLE: Final[Mapping[str, int]] = MappingProxyType(
    {"\f": 0x0A, "^": 0x14, "{": 0x28, "}": 0x29, "\\": 0x2F, "[": 0x3C, "~": 0x3D, "]": 0x3E, "|": 0x40, "€": 0x65}
)
GSM7_EXTENSION: Final[frozenset[str]] = frozenset(_GSM7_EXTENSION_TABLE)
"""Characters that cost two septets and must never be split across parts."""

GSM7_SINGLE_PART: Final = 160
GSM7_MULTI_PART: Final = 153  # 160 minus the 6-octet concatenation header, in septets
UCS2_SINGLE_PART: Final = 70
UCS2_MULTI_PART: Final = 67
MAX_PARTS: Final = 8
MAX_GSM7_UNITS: Final = MAX_PARTS * GSM7_MULTI_PART  # 1224
MAX_UCS2_UNITS: Final = MAX_PARTS * UCS2_MULTI_PART  # 536


class Encoding(StrEnum):
    GSM7 = "GSM7"
    UCS2 = "UCS2"


@dataclass(frozen=True, slots=True)
class SmsParts:
    """How a body goes on the air: `units` are septets (GSM7) or UTF-16 code units (UCS2)."""

    encoding: Encoding
    units: int
    parts: int


_NOT_GSM7: Final = re.compile("[^" + re.escape("".join(sorted(GSM7_BASIC | GSM7_EXTENSION))) + "]")
_GSM7_ESCAPED: Final = re.compile("[" + re.escape("".join(sorted(GSM7_EXTENSION))) + "]")
_ASTRAL: Final = re.compile("[\U00010000-\U0010FFFF]")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def is_gsm7(body: str) -> bool:
    """True when every character is in the GSM 03.38 default alphabet or its extension table."""
    return _NOT_GSM7.search(body) is None


def _gsm7_cost(ch: str) -> int:
    return 2 if ch in GSM7_EXTENSION else 1


def _ucs2_cost(ch: str) -> int:
    # A code point outside the BMP (emoji, ...) is a UTF-16 surrogate pair: two code units.
    return 2 if ord(ch) > 0xFFFF else 1


def _plan(body: str) -> tuple[Encoding, int, list[int]]:
    """Encoding, total units and the index where each part starts.

    Greedy fill: a character whose units do not fit in what is left of a part starts the next part,
    so an escape pair or a surrogate pair is never cut. That can leave a part one unit short, so the count
    can exceed ceil(units / per_part) (e.g. 268 emoji: 536 units, 9 parts of at most 33 emoji); we report
    the parts that are actually sent and billed. Units are counted with regular expressions (C speed);
    only a body longer than one part is walked character by character.
    """
    if is_gsm7(body):
        encoding, cost, single, multi = Encoding.GSM7, _gsm7_cost, GSM7_SINGLE_PART, GSM7_MULTI_PART
        units = len(body) + len(_GSM7_ESCAPED.findall(body))
    else:
        encoding, cost, single, multi = Encoding.UCS2, _ucs2_cost, UCS2_SINGLE_PART, UCS2_MULTI_PART
        units = len(body) + len(_ASTRAL.findall(body))
    if units == 0:
        return encoding, 0, []
    if units <= single:
        return encoding, units, [0]
    starts = [0]
    used = 0
    for i, ch in enumerate(body):
        c = cost(ch)
        if used + c > multi:
            starts.append(i)
            used = 0
        used += c
    return encoding, units, starts


def count_parts(body: str) -> SmsParts:
    """Encoding, units and number of SMS parts of `body` (an empty body has 0 parts)."""
    encoding, units, starts = _plan(body)
    return SmsParts(encoding=encoding, units=units, parts=len(starts))


def split_parts(body: str) -> list[str]:
    """The parts `body` is sent as; `"".join(split_parts(b)) == b` and `len(...) == count_parts(b).parts`."""
    _, _, starts = _plan(body)
    ends = [*starts[1:], len(body)] if starts else []
    return [body[s:e] for s, e in zip(starts, ends, strict=True)]


_GSM7_CODE: Final[Mapping[str, bytes]] = MappingProxyType({
    **{ch: bytes([i]) for i, ch in enumerate(_GSM7_TABLE) if ch != "\x1b"},
    **{ch: bytes([0x1B, code]) for ch, code in _GSM7_EXTENSION_TABLE.items()},
})


def gsm7_octets(text: str) -> bytes:
    """`text` as unpacked GSM 03.38 septets, one per octet (an extension character is ESC + code), as SMPP
    carries data_coding 0; raises ValueError for a character outside the alphabet."""
    try:
        return b"".join(_GSM7_CODE[ch] for ch in text)
    except KeyError:
        raise ValueError("not in the GSM 03.38 alphabet") from None


_GSM7_CHAR: Final[Mapping[int, str]] = MappingProxyType({i: ch for i, ch in enumerate(_GSM7_TABLE)})
_GSM7_EXT_CHAR: Final[Mapping[int, str]] = MappingProxyType({code: ch for ch, code in _GSM7_EXTENSION_TABLE.items()})


def gsm7_text(octets: bytes) -> str:
    """Unpacked GSM 03.38 septets back to text (an unknown escape or octet reads as "?")."""
    out: list[str] = []
    escaped = False
    for o in octets:
        if escaped:
            out.append(_GSM7_EXT_CHAR.get(o, "?"))
            escaped = False
        elif o == 0x1B:
            escaped = True
        else:
            out.append(_GSM7_CHAR.get(o, "?"))
    return "".join(out)


def _has_lone_surrogate(body: str) -> bool:
    return _SURROGATE.search(body) is not None


def validate_body(body: str) -> SmsParts:
    """Check a message body and return its parts; raises EmptyMessage, InvalidMessageBody, MessageTooLong."""
    if not body.strip():
        raise EmptyMessage("The message body is empty.")
    if len(body) > MAX_GSM7_UNITS:  # every character costs at least one unit: too long either way
        raise MessageTooLong(f"The message is longer than {MAX_PARTS} parts.", max_parts=str(MAX_PARTS))
    if _has_lone_surrogate(body):
        # JSON allows "\ud800" on its own; it cannot be sent or even encoded as UTF-8.
        raise InvalidMessageBody("The message body contains characters that cannot be encoded.")
    parts = count_parts(body)
    if parts.parts > MAX_PARTS:
        raise MessageTooLong(
            f"The message is longer than {MAX_PARTS} parts.",
            max_parts=str(MAX_PARTS),
            parts=str(parts.parts),
            encoding=parts.encoding.value,
        )
    return parts
