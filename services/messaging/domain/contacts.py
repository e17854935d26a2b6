"""Contact lists and contacts (ClickSend's /v3/lists shapes) and CSV imports: the pure rules.

A contact is a set of ClickSend's text fields (`FIELDS`). Its phone number is normalised to E.164 (with
`address_country` for a national number) and is what a send to the list goes to; a contact needs a number or an
email. Within a list a number appears once (and a contact without a number is unique by its email): the store
compares keyed hashes, never the values.

A CSV import names its columns with a field order (ClickSend's `field_order`, e.g. "phone_number,first_name") or
takes them from the file's header line. Each bad line is reported by its line number and a stable reason
(`ImportProblem`) and never by its content, so a report can be shown, logged or audited without leaking a number.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from services.messaging.domain.errors import InvalidRecipient
from services.messaging.domain.recipients import parse_recipient
from svckit.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied

LIST_RECORD: Final = "contact_list.name"
CONTACT_RECORD: Final = "contact"
IMPORT_FILE_RECORD: Final = "contact_import.file"

FIELDS: Final[tuple[str, ...]] = (
    "phone_number", "first_name", "last_name", "custom_1", "custom_2", "custom_3", "custom_4", "fax_number",
    "organization_name", "email", "address_line_1", "address_line_2", "address_city", "address_state",
    "address_postal_code", "address_country",
)
NUMBER_FIELDS: Final = frozenset({"phone_number", "fax_number"})
MAX_FIELD: Final = 500
MAX_LIST_NAME: Final = 100
MAX_IMPORT_ROWS: Final = 100_000
MAX_REPORTED_PROBLEMS: Final = 1000
_EMAIL: Final = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]+")
_FIELD_ALIASES: Final[Mapping[str, str]] = {"phone": "phone_number", "mobile": "phone_number", "fax": "fax_number",
                                             "country": "address_country", "organisation_name": "organization_name"}


class ContactListNotFound(NotFound):
    reason = "LIST_NOT_FOUND"


class ContactNotFound(NotFound):
    reason = "CONTACT_NOT_FOUND"


class ContactImportNotFound(NotFound):
    reason = "IMPORT_NOT_FOUND"


class ListNotPermitted(PermissionDenied):
    """A send to a list the account does not hold (ClickSend's code; another account's list or none)."""

    reason = "NOT_ENOUGH_PERMISSION_TO_LIST_ID"


class InvalidContact(InvalidArgument):
    reason = "INVALID_CONTACT"


class DuplicateContact(InvalidArgument):
    reason = "DUPLICATE_CONTACT"


class InvalidListName(InvalidArgument):
    reason = "INVALID_LIST_NAME"


class InvalidImport(InvalidArgument):
    reason = "INVALID_IMPORT"


class ImportInProgress(FailedPrecondition):
    reason = "IMPORT_IN_PROGRESS"


@dataclass(frozen=True)
class ContactList:
    list_id: int
    account_id: int
    name: str
    contacts_count: int = 0
    import_in_progress: bool = False


@dataclass(frozen=True)
class Contact:
    contact_id: int
    list_id: int
    account_id: int
    fields: dict[str, str]
    create_time: int = 0
    update_time: int = 0


@dataclass(frozen=True)
class CleanContact:
    """A contact checked for storing: its fields (number in E.164) and the values its keyed hashes are of."""

    fields: dict[str, str]
    phone: str  # E.164, "" none
    email: str  # lower case, "" none


@dataclass(frozen=True)
class ImportProblem:
    line: int
    reason: str  # INVALID_PHONE_NUMBER, MISSING_PHONE_NUMBER, INVALID_EMAIL, FIELD_TOO_LONG, DUPLICATE, ...


@dataclass(frozen=True)
class ContactImport:
    import_id: int
    list_id: int
    account_id: int
    state: str  # pending, running, done, failed
    rows_read: int = 0
    imported: int = 0
    duplicates: int = 0
    invalid: int = 0
    problems: tuple[ImportProblem, ...] = ()
    failure: str = ""
    create_time: int = 0
    finish_time: int = 0


@dataclass
class ParsedImport:
    """What a file holds: the contacts to insert with their line numbers, and the problems found."""

    rows_read: int = 0
    contacts: list[tuple[int, CleanContact]] = field(default_factory=list)
    duplicates: int = 0
    invalid: int = 0
    problems: list[ImportProblem] = field(default_factory=list)

    def problem(self, line: int, reason: str) -> None:
        if reason == "DUPLICATE":
            self.duplicates += 1
        else:
            self.invalid += 1
        if len(self.problems) < MAX_REPORTED_PROBLEMS:
            self.problems.append(ImportProblem(line, reason))


_EMAIL_INDEX_LABEL: Final = b"sendsafe.contact.email.v1\x00"


def email_index(key: bytes, email: str) -> bytes:
    """HMAC-SHA256 of a lower-cased email under the account's index key (as `privacy.number_index` is of a
    number): contacts without a number are de-duplicated without the database holding the address."""
    return hmac.new(key, _EMAIL_INDEX_LABEL + email.lower().encode("utf-8", "surrogatepass"), hashlib.sha256).digest()


def check_list_name(name: str) -> str:
    value = (name or "").strip()
    if not value or len(value) > MAX_LIST_NAME or any(ord(c) < 32 for c in value):
        raise InvalidListName(f"list_name must be 1-{MAX_LIST_NAME} printable characters.")
    return value


def check_id(value: int | str, what: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n <= 0:
        raise InvalidArgument(f"{what} must be a positive integer.")
    return n


def _problem(fields: Mapping[str, str]) -> str:
    """The stable reason a set of fields is not a contact ("" when it is one)."""
    for value in fields.values():
        if len(value) > MAX_FIELD:
            return "FIELD_TOO_LONG"
        if any(ord(c) < 32 and c != "\t" for c in value):
            return "CONTROL_CHARACTER"
    return ""


def clean_contact(fields: Mapping[str, str]) -> CleanContact:
    """The contact to store from ClickSend's fields (unknown names refused); raises InvalidContact with a message
    naming the field, never its value."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise InvalidContact(f"Unknown contact field {unknown[0]!r}.")
    out = {k: (v or "").strip() for k, v in fields.items() if (v or "").strip()}
    reason = _problem(out)
    if reason:
        raise InvalidContact(f"A contact field is {'too long' if reason == 'FIELD_TOO_LONG' else 'not text'}.",
                             reason=reason)
    country = out.get("address_country", "").upper()
    phone = ""
    if out.get("phone_number"):
        try:
            phone = parse_recipient(out["phone_number"], country[:2] if len(country) == 2 else None).e164
        except InvalidRecipient:
            raise InvalidContact("phone_number is not a valid phone number (E.164, or national with "
                                 "address_country).", reason="INVALID_PHONE_NUMBER") from None
        out["phone_number"] = phone
    email = out.get("email", "").lower()
    if email and not _EMAIL.fullmatch(email):
        raise InvalidContact("email is not an email address.", reason="INVALID_EMAIL")
    if not phone and not email:
        raise InvalidContact("A contact needs a phone_number or an email.", reason="MISSING_PHONE_NUMBER")
    return CleanContact(out, phone, email)


def field_order(value: str) -> list[str]:
    """ClickSend's `field_order` ("phone_number,first_name,..."); "" means the file's header line names them.
    A column to skip is named "" or "skip"."""
    names = [_FIELD_ALIASES.get(n.strip().lower(), n.strip().lower()) for n in value.split(",")] if value else []
    for n in names:
        if n and n != "skip" and n not in FIELDS:
            raise InvalidImport(f"field_order names an unknown field {n!r}; known: {', '.join(FIELDS)}.")
    named = [n for n in names if n and n != "skip"]
    if len(named) != len(set(named)):
        raise InvalidImport("field_order names a field twice.")
    if names and "phone_number" not in named and "email" not in named:
        raise InvalidImport("field_order must include phone_number or email.")
    return names


def _rows(data: bytes) -> Iterator[tuple[int, list[str]]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidImport("The file is not UTF-8 text.") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            yield reader.line_num, row
    except csv.Error:
        raise InvalidImport(f"The file is not CSV (line {reader.line_num}).") from None


def parse_import(data: bytes, order: list[str], has_header: bool) -> ParsedImport:
    """Every line of the file checked, in order; duplicates (by number, or email without one) after the first
    are reported, as are invalid lines. Blank lines are skipped. Contacts already in the list are found later
    (the store compares hashes)."""
    out = ParsedImport()
    rows = _rows(data)
    if has_header or not order:
        first = next(rows, None)
        if first is None:
            raise InvalidImport("The file is empty.")
        if not order:
            order = field_order(",".join(c.strip() for c in first[1]))
    seen: set[str] = set()
    for line, row in rows:
        if not any(c.strip() for c in row):
            continue
        out.rows_read += 1
        if out.rows_read > MAX_IMPORT_ROWS:
            raise InvalidImport(f"A file may hold at most {MAX_IMPORT_ROWS} contacts.")
        if len(row) > len(order):
            out.problem(line, "TOO_MANY_COLUMNS")
            continue
        fields = {name: value for name, value in zip(order, row, strict=False) if name and name != "skip"}
        try:
            contact = clean_contact(fields)
        except InvalidContact as exc:
            out.problem(line, exc.reason)
            continue
        key = contact.phone or f"@{contact.email}"
        if key in seen:
            out.problem(line, "DUPLICATE")
            continue
        seen.add(key)
        out.contacts.append((line, contact))
    return out
