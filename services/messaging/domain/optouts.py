"""Opt-outs (STOP) and inbound keywords."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

OPT_OUT_KEYWORDS: Final = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT"})
OPT_IN_KEYWORDS: Final = frozenset({"START", "UNSTOP", "SUBSCRIBE"})
_KEYWORD_STRIP: Final = " \t\r\n.!?,;:'\"()"


class OptAction(StrEnum):
    NONE = ""
    OPT_OUT = "OPT_OUT"
    OPT_IN = "OPT_IN"


def opt_action(body: str) -> OptAction:
    """A reply that is exactly one of the opt-out (opt-in) keywords, ignoring case, surrounding spaces and
    punctuation ("Stop.", " unsubscribe "), changes the sender's opt-out state. A sentence that merely
    contains the word ("please don't stop") does not."""
    word = body.strip(_KEYWORD_STRIP).upper().replace("-", "").replace(" ", "")
    if len(word) > 16:
        return OptAction.NONE
    if word in OPT_OUT_KEYWORDS:
        return OptAction.OPT_OUT
    if word in OPT_IN_KEYWORDS:
        return OptAction.OPT_IN
    return OptAction.NONE


def first_word(body: str) -> str:
    """ClickSend's deprecated `_keyword`: the first word of an inbound body."""
    parts = body.split()
    return parts[0] if parts else ""
