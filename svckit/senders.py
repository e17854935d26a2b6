"""Sender-id limits (issue 21): the sender ids (`from`) an API key or a user may send as. One module for the rule,
used by keys and identity (validating a limit), the gateway (intersecting a user's and a key's) and messaging
(enforcing it at send). Pure.

A limit is a set of sender ids: numbers in E.164 form ("+61411111111"; spaces and a missing "+" are accepted and
normalised) and alpha tags (1-11 ASCII letters, digits or spaces with at least one letter, kept as given). Two ids
are the same sender when their compared forms are equal: "+digits" for a number, upper-case letters and digits
for a tag (the form messaging compares an account's sender identities in). An empty limit means no limit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from svckit.errors import InvalidArgument

MAX_ALLOWED_SENDERS: Final = 20

_NUMBER: Final = re.compile(r"\+?[0-9]{1,15}")
_E164: Final = re.compile(r"\+[1-9][0-9]{5,14}")
_ALPHA: Final = re.compile(r"[A-Za-z0-9 ]{1,11}")
_LETTER: Final = re.compile(r"[A-Za-z]")
_NOT_ALNUM: Final = re.compile(r"[^A-Z0-9]")


class AllowedSendersInvalid(InvalidArgument):
    reason = "ALLOWED_SENDERS_INVALID"


def sender_form(sender: str) -> str:
    """The compared form of a sender id: "+digits" for a number, upper-case letters and digits for a tag."""
    compact = sender.strip().replace(" ", "")
    if _NUMBER.fullmatch(compact):
        return "+" + compact.lstrip("+")
    return _NOT_ALNUM.sub("", sender.upper())


def check_allowed_senders(values: Iterable[str]) -> tuple[str, ...]:
    """The normalised limit (numbers "+digits", tags trimmed with single spaces; one entry per compared form,
    sorted by it), or AllowedSendersInvalid naming the entry's position (never its value: it may be a number)."""
    out: dict[str, str] = {}
    for position, raw in enumerate(values, start=1):
        text = " ".join(raw.split())
        compact = text.replace(" ", "")
        if _NUMBER.fullmatch(compact):
            number = "+" + compact.lstrip("+")
            if not _E164.fullmatch(number):
                raise AllowedSendersInvalid(
                    f"allowed_senders entry {position} is not a phone number in E.164 form, e.g. +61411111111")
            out[number] = number
        elif _ALPHA.fullmatch(text) and _LETTER.search(text):
            out.setdefault(sender_form(text), text)
        else:
            raise AllowedSendersInvalid(
                f"allowed_senders entry {position} must be a phone number in E.164 form or an alpha tag of 1-11"
                " letters, digits or spaces with at least one letter")
        if len(out) > MAX_ALLOWED_SENDERS:
            raise AllowedSendersInvalid(f"at most {MAX_ALLOWED_SENDERS} allowed_senders")
    return tuple(out[form] for form in sorted(out))


def forms(senders: Iterable[str]) -> frozenset[str]:
    return frozenset(sender_form(s) for s in senders)


def senders_within(child: Iterable[str], parent: Iterable[str]) -> bool:
    """`child` limits at least as much as `parent` (parent empty = no limit; child empty = no limit)."""
    p = forms(parent)
    if not p:
        return True
    c = forms(child)
    return bool(c) and c <= p


def intersect_senders(a: Iterable[str], b: Iterable[str]) -> tuple[tuple[str, ...], bool]:
    """The effective limit of two limits (empty = none): (senders, limited). Limited with no senders when both
    limit and they share none: then no sender at all may be named."""
    a, b = tuple(a), tuple(b)
    if not a or not b:
        return a or b, bool(a or b)
    theirs = forms(b)
    return tuple(s for s in a if sender_form(s) in theirs), True


def sender_allowed(sender: str, allowed: frozenset[str] | None) -> bool:
    """Whether `from` may be used under a limit given in compared forms (None: no limit). Under a limit an empty
    `from` (the shared number) is refused: a limited caller names one of its senders."""
    if allowed is None:
        return True
    return bool(sender.strip()) and sender_form(sender) in allowed


def split_numbers(senders: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(alpha tags, numbers) of a limit: numbers may be the customer's own phone numbers, kept sealed at rest."""
    values = tuple(senders)
    numbers = tuple(s for s in values if _NUMBER.fullmatch(s.replace(" ", "")))
    return tuple(s for s in values if s not in numbers), numbers


def merge_senders(*parts: Iterable[str]) -> tuple[str, ...]:
    """One limit from its parts, in check_allowed_senders' order (by compared form)."""
    return tuple(sorted((s for part in parts for s in part), key=sender_form))


def senders_summary(senders: Iterable[str]) -> str:
    """For audit details: the alpha tags as they are and how many numbers (never a number)."""
    tags, numbers = split_numbers(senders)
    n = len(numbers)
    return ",".join([*tags, *([f"{n} number{'s' if n != 1 else ''}"] if n else [])])
