"""Alpha tags (alphanumeric sender IDs): what a tag may look like, its life, and the protected-name rule.

A customer requests a tag with a reason; it is REQUESTED until a staff member approves it (it becomes one of
the account's sender identities: sends may use it as `from`), rejects it, or -- once approved -- revokes it (it
stops working at once). The customer may cancel it in any live state (CANCELLED). Staff give a reason for every
decision; the customer sees it in the tag's view (ClickSend's `reason`) and in the account's audit feed.

A tag is 1-11 characters (the GSM limit for an alphanumeric originator): ASCII letters, digits and spaces,
with at least one letter (a tag of digits alone would be a phone number), no leading or trailing space -- the
same shape a send accepts as `from` (domain.recipients.validate_sender). Two tags of one account are the same
tag when their *normalised* forms are equal: upper case, only letters and digits kept ("My Bank" and "MYBANK"
are one tag; a send's `from` is compared in this form too).

Protected names (banks, government, carriers; a list staff edit) are matched on a *skeleton* that undoes the
usual tricks, so "C0mm Bank", "W e s t p a c" and "PAYPA1" all match:
  1. upper case, keep only letters and digits (spaces and punctuation go);
  2. digits read as the letters they imitate: 0->O 1->I 2->Z 3->E 4->A 5->S 6->G 7->T 8->B 9->G;
  3. letters that look alike fold together: L->I (so 1, I and L are one letter).
A protected name of 4 or more skeleton letters matches when it appears anywhere inside the tag's skeleton
("MYWESTPACALERT" holds "WESTPAC"). A shorter one (ANZ, NAB, ATO, IRS) would match inside ordinary words
("BANANZA"), so it matches only at the start or end of the skeleton, or as a whole word of the tag (words are
split on spaces and punctuation, and runs of one-character words are joined first: "N.A.B Info" has the word
"NAB"). A match does not refuse the request: it refuses the approval unless the reviewer records the evidence
that the account holds the name (PROTECTED_SENDER_NAME otherwise).
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from svckit.errors import FailedPrecondition, InvalidArgument, NotFound

MAX_TAG: Final = 11
MAX_REASON: Final = 500
MAX_EVIDENCE: Final = 500
MAX_NAME: Final = 40
SHORT_NAME: Final = 3  # protected names this long or shorter match only at an edge or as a word
_TAG: Final = re.compile(r"[A-Za-z0-9 ]{1,11}")
_ID: Final = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_NOT_ALNUM: Final = re.compile(r"[^A-Z0-9]+")
_LOOKALIKE: Final = str.maketrans("0123456789L", "OIZEASGTBGI")
_NAME: Final = re.compile(r"[A-Za-z0-9 .&'_-]{2,40}")
CATEGORIES: Final = frozenset({"bank", "government", "carrier", "payments", "delivery", "brand", "other"})


class AlphaTagState(enum.Enum):
    REQUESTED = "requested"
    APPROVED = "approved"
    REJECTED = "rejected"
    REVOKED = "revoked"
    CANCELLED = "cancelled"


# ClickSend's `status` strings for each state.
CLICKSEND_STATUS: Final = {
    AlphaTagState.REQUESTED: "PENDING", AlphaTagState.APPROVED: "APPROVED", AlphaTagState.REJECTED: "REJECTED",
    AlphaTagState.REVOKED: "REVOKED", AlphaTagState.CANCELLED: "CANCELLED",
}
LIVE_STATES: Final = frozenset({AlphaTagState.REQUESTED, AlphaTagState.APPROVED})


class InvalidAlphaTag(InvalidArgument):
    reason = "INVALID_ALPHA_TAG"


class ReasonRequired(InvalidArgument):
    reason = "REASON_REQUIRED"


class InvalidProtectedName(InvalidArgument):
    reason = "INVALID_PROTECTED_NAME"


class AlphaTagNotFound(NotFound):
    reason = "ALPHA_TAG_NOT_FOUND"


class ProtectedNameNotFound(NotFound):
    reason = "PROTECTED_NAME_NOT_FOUND"


class AlphaTagExists(FailedPrecondition):
    reason = "ALPHA_TAG_EXISTS"


class ProtectedNameExists(FailedPrecondition):
    reason = "PROTECTED_NAME_EXISTS"


class AlphaTagWrongState(FailedPrecondition):
    reason = "ALPHA_TAG_WRONG_STATE"


class ProtectedSenderName(FailedPrecondition):
    reason = "PROTECTED_SENDER_NAME"


@dataclass(frozen=True, slots=True)
class AlphaTag:
    """One request and its review, as stored."""

    id: str
    account_id: int
    user_id: int
    tag: str
    normalized: str
    request_reason: str
    state: AlphaTagState
    countries: tuple[str, ...] = ()
    reviewer_staff_id: int = 0
    review_reason: str = ""
    evidence: str = ""
    protected_name: str = ""  # the protected name it matched when reviewed ("" none)
    create_time: float = 0.0
    update_time: float = 0.0
    review_time: float | None = None

    @property
    def status(self) -> str:
        return CLICKSEND_STATUS[self.state]

    @property
    def shown_reason(self) -> str:
        """ClickSend's `reason` ("the reason for the status"): the reviewer's once reviewed, else the customer's."""
        return self.review_reason or self.request_reason


@dataclass(frozen=True, slots=True)
class ProtectedName:
    name: str  # as entered ("Commonwealth Bank")
    skeleton: str  # its matching form (see the module rule)
    category: str
    added_by: str = "seed"
    create_time: float = 0.0


@dataclass(frozen=True, slots=True)
class Review:
    """A staff decision: approve, reject or revoke."""

    state: AlphaTagState
    staff_id: int
    reason: str
    evidence: str = ""
    protected_name: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def new_alpha_tag_id() -> str:
    return str(uuid.uuid4())


def check_alpha_tag_id(value: str) -> str:
    if not _ID.fullmatch(value or ""):
        raise AlphaTagNotFound("No such alpha tag.")
    return value.lower()


def check_tag(value: str) -> str:
    """The tag as requested, if it may be one (see the module rule)."""
    tag = value or ""
    if not _TAG.fullmatch(tag) or tag != tag.strip() or not any(c.isalpha() for c in tag):
        raise InvalidAlphaTag(
            f"alpha_tag must be 1-{MAX_TAG} letters, digits or spaces, with at least one letter and no leading or"
            " trailing space")
    return tag


def normalize(tag: str) -> str:
    """The form two tags of one account are compared in: upper case, letters and digits only."""
    return _NOT_ALNUM.sub("", tag.upper())


def skeleton(text: str) -> str:
    """The protected-name matching form: normalised, digits read as letters, look-alike letters folded."""
    return normalize(text).translate(_LOOKALIKE)


def _words(text: str) -> list[str]:
    """The tag's words in skeleton form, runs of one-character words joined ("N.A.B Info" -> NAB, INFO)."""
    out: list[str] = []
    run = ""
    for w in (skeleton(p) for p in re.split(r"[^A-Za-z0-9]+", text) if p):
        if len(w) == 1:
            run += w
            continue
        if run:
            out.append(run)
            run = ""
        out.append(w)
    if run:
        out.append(run)
    return out


def matches(tag: str, name_skeleton: str) -> bool:
    """Whether `tag` imitates the protected name whose skeleton is `name_skeleton` (the module rule)."""
    if not name_skeleton:
        return False
    s = skeleton(tag)
    if len(name_skeleton) > SHORT_NAME:
        return name_skeleton in s
    return s.startswith(name_skeleton) or s.endswith(name_skeleton) or name_skeleton in _words(tag)


def protected_match(tag: str, names: Iterable[ProtectedName]) -> ProtectedName | None:
    """The first protected name `tag` imitates (longest first, so the message names the most specific)."""
    for n in sorted(names, key=lambda n: (-len(n.skeleton), n.skeleton)):
        if matches(tag, n.skeleton):
            return n
    return None


def check_reason(value: str, what: str = "reason") -> str:
    reason = (value or "").strip()
    if not reason:
        raise ReasonRequired(f"{what} is required: say why (it is recorded and shown to the customer)")
    if len(reason) > MAX_REASON:
        raise ReasonRequired(f"{what} is at most {MAX_REASON} characters")
    return reason


def check_evidence(value: str) -> str:
    evidence = (value or "").strip()
    if len(evidence) > MAX_EVIDENCE:
        raise InvalidArgument(f"evidence is at most {MAX_EVIDENCE} characters")
    return evidence


def check_countries(values: Iterable[str]) -> tuple[str, ...]:
    out = tuple(sorted({v.strip().upper() for v in values if v.strip()}))
    if any(not re.fullmatch(r"[A-Z]{2}", c) for c in out):
        raise InvalidArgument("countries must be ISO 3166-1 alpha-2 codes (e.g. AU)")
    return out


def check_protected_name(name: str, category: str) -> ProtectedName:
    value = (name or "").strip()
    if not _NAME.fullmatch(value) or not any(c.isalpha() for c in value):
        raise InvalidProtectedName(f"name must be 2-{MAX_NAME} letters, digits, spaces or . & ' _ -")
    cat = (category or "other").strip().lower()
    if cat not in CATEGORIES:
        raise InvalidProtectedName(f"category must be one of {', '.join(sorted(CATEGORIES))}")
    return ProtectedName(name=value, skeleton=skeleton(value), category=cat)


def review(tag: AlphaTag, decision: AlphaTagState, staff_id: int, reason: str, evidence: str,
           names: Iterable[ProtectedName]) -> Review:
    """A staff decision on `tag`, if the rules allow it: approve or reject a REQUESTED tag, revoke an APPROVED
    one; approving a tag that imitates a protected name needs evidence (PROTECTED_SENDER_NAME without)."""
    reason = check_reason(reason)
    evidence = check_evidence(evidence)
    allowed = {AlphaTagState.APPROVED: AlphaTagState.REQUESTED, AlphaTagState.REJECTED: AlphaTagState.REQUESTED,
               AlphaTagState.REVOKED: AlphaTagState.APPROVED}
    if allowed.get(decision) != tag.state:
        raise AlphaTagWrongState(
            f"a {tag.state.value} alpha tag cannot be {decision.value}"
            f" (only a {allowed[decision].value} one can)" if decision in allowed else "not a staff decision")
    protected = protected_match(tag.tag, names) if decision is AlphaTagState.APPROVED else None
    if protected is not None and not evidence:
        raise ProtectedSenderName(
            f"this tag imitates the protected name {protected.name!r} ({protected.category}): approve it only with"
            " `evidence` naming the document that proves the account holds the name")
    return Review(decision, staff_id, reason, evidence, protected.name if protected is not None else "")
