"""Unit tests for services.messaging.domain (pure: no network, no database)."""

from __future__ import annotations

import itertools
import math
import random
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from services.messaging.domain.encoding import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    Encoding,
    SmsParts,
    count_parts,
    is_gsm7,
    split_parts,
    validate_body,
)
from services.messaging.domain.errors import (
    EmptyMessage,
    InvalidMessageBody,
    InvalidRecipient,
    InvalidSchedule,
    InvalidSenderId,
    InvalidStatusTransition,
    MessageStatusCode,
    MessageTooLong,
)
from services.messaging.domain.outbound import Rejected, ValidatedMessage, validate_outbound
from services.messaging.domain.pricing import PriceTable, format_balance, format_price
from services.messaging.domain.recipients import (
    TEST_RECIPIENTS,
    Recipient,
    is_test_recipient,
    normalize_recipient,
    parse_recipient,
    validate_schedule,
    validate_sender,
)
from services.messaging.domain.statuses import (
    CARRIER_ERROR_TEXT,
    HistoryStatus,
    MessageStatus,
    ReceiptStatus,
    can_transition,
    check_transition,
    clicksend_history_view,
    clicksend_receipt_code,
    clicksend_receipt_view,
    is_noop,
    is_terminal,
)
from svckit.errors import DomainError

NOW = 1_700_000_000
DAY = 86_400

# --------------------------------------------------------------------------------------------------------
# Purity
# --------------------------------------------------------------------------------------------------------


def test_domain_imports_no_transport_or_storage_library() -> None:
    root = Path(__file__).resolve().parents[3]
    code = (
        "import sys, services.messaging.domain\n"
        "bad = sorted(m for m in ('grpc', 'asyncpg', 'redis', 'aiohttp', 'google.protobuf') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == ""


# --------------------------------------------------------------------------------------------------------
# GSM 03.38 alphabet
# --------------------------------------------------------------------------------------------------------

BRIEF_GSM_CHARS = "@£$¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ ÄÖÑÜ§¿äöñüà\r\n¡¤!\"#%&'()*+,-./:;<=>?"


def test_gsm7_tables_have_the_standard_sizes() -> None:
    assert len(GSM7_BASIC) == 127  # 128 code points minus the escape
    assert frozenset("\f^{}\\[~]|€") == GSM7_EXTENSION
    assert not GSM7_BASIC & GSM7_EXTENSION
    assert set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") <= GSM7_BASIC


@pytest.mark.parametrize("ch", list(BRIEF_GSM_CHARS))
def test_basic_charset_char_is_one_septet(ch: str) -> None:
    assert ch in GSM7_BASIC
    assert count_parts(ch * 160) == SmsParts(Encoding.GSM7, 160, 1)


@pytest.mark.parametrize("ch", list("^{}\\[~]|€\f"))
def test_extension_char_is_two_septets(ch: str) -> None:
    assert count_parts(ch) == SmsParts(Encoding.GSM7, 2, 1)
    assert count_parts(ch * 80) == SmsParts(Encoding.GSM7, 160, 1)
    assert count_parts(ch * 81) == SmsParts(Encoding.GSM7, 162, 2)


@pytest.mark.parametrize(
    "ch",
    [
        "ç",  # GSM has capital Ç only
        "á",
        "`",
        "\t",
        "\x1b",  # the escape itself is not a character
        "\u2206",  # INCREMENT, looks like Δ
        "\u2126",  # OHM SIGN, looks like Ω
        "\u00a0",  # no-break space
        "\u2019",  # typographic apostrophe
        "ж",
        "😀",
    ],
)
def test_non_gsm_char_forces_ucs2(ch: str) -> None:
    assert not is_gsm7("hello " + ch)
    assert count_parts("hello " + ch).encoding is Encoding.UCS2


# --------------------------------------------------------------------------------------------------------
# Part counting
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "encoding", "units", "parts"),
    [
        ("", Encoding.GSM7, 0, 0),
        ("a", Encoding.GSM7, 1, 1),
        ("a" * 160, Encoding.GSM7, 160, 1),
        ("a" * 161, Encoding.GSM7, 161, 2),
        ("a" * 306, Encoding.GSM7, 306, 2),
        ("a" * 307, Encoding.GSM7, 307, 3),
        ("a" * 459, Encoding.GSM7, 459, 3),
        ("a" * 460, Encoding.GSM7, 460, 4),
        ("a" * 1224, Encoding.GSM7, 1224, 8),
        ("a" * 1225, Encoding.GSM7, 1225, 9),
        ("a" * 158 + "€", Encoding.GSM7, 160, 1),
        ("a" * 159 + "€", Encoding.GSM7, 161, 2),
        ("a" * 159 + "\r\n", Encoding.GSM7, 161, 2),
        ("ж", Encoding.UCS2, 1, 1),
        ("ж" * 70, Encoding.UCS2, 70, 1),
        ("ж" * 71, Encoding.UCS2, 71, 2),
        ("ж" * 134, Encoding.UCS2, 134, 2),
        ("ж" * 135, Encoding.UCS2, 135, 3),
        ("ж" * 536, Encoding.UCS2, 536, 8),
        ("ж" * 537, Encoding.UCS2, 537, 9),
        ("a" * 159 + "ж", Encoding.UCS2, 160, 3),  # one non-GSM char turns 160 septets into 3 UCS-2 parts
        ("€" + "ж", Encoding.UCS2, 2, 1),  # in UCS-2 the euro is one unit, not two
        ("😀", Encoding.UCS2, 2, 1),
        ("😀" * 35, Encoding.UCS2, 70, 1),
        ("😀" * 35 + "a", Encoding.UCS2, 71, 2),
        ("😀" * 36, Encoding.UCS2, 72, 2),
    ],
)
def test_count_parts(body: str, encoding: Encoding, units: int, parts: int) -> None:
    assert count_parts(body) == SmsParts(encoding, units, parts)


def _gsm_units(part: str) -> int:
    return sum(2 if ch in GSM7_EXTENSION else 1 for ch in part)


def _ucs2_units(part: str) -> int:
    return len(part.encode("utf-16-le")) // 2


def _reference_parts(body: str) -> tuple[Encoding, int, int]:
    """Part counting straight from its definition, one character at a time (the slow, obvious way)."""
    gsm = all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in body)
    if gsm:
        costs, single, multi = [2 if ch in GSM7_EXTENSION else 1 for ch in body], 160, 153
    else:
        costs, single, multi = [2 if ord(ch) > 0xFFFF else 1 for ch in body], 70, 67
    units = sum(costs)
    if units == 0:
        return (Encoding.GSM7 if gsm else Encoding.UCS2), 0, 0
    parts, used = 1, 0
    for c in costs:
        if units > single and used + c > multi:
            parts, used = parts + 1, 0
        used += c
    return (Encoding.GSM7 if gsm else Encoding.UCS2), units, parts


def test_count_parts_matches_the_character_by_character_definition_on_random_bodies() -> None:
    rng = random.Random(20261129)
    alphabets = [
        sorted(GSM7_BASIC),
        sorted(GSM7_BASIC | GSM7_EXTENSION),
        sorted(GSM7_EXTENSION),
        [*sorted(GSM7_BASIC)[:20], "ж", "\u2019"],
        ["a", "😀", "é", "€", "\u00a0"],
    ]
    for _ in range(3000):
        alphabet = rng.choice(alphabets)
        body = "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 69, 70, 71, 153, 160, 161, 307, 600])))
        got = count_parts(body)
        assert (got.encoding, got.units, got.parts) == _reference_parts(body), repr(body)
        assert "".join(split_parts(body)) == body and len(split_parts(body)) == got.parts


def test_split_moves_an_escape_pair_to_the_next_part_instead_of_cutting_it() -> None:
    body = "a" * 152 + "€" + "b" * 10  # 164 septets; the euro would occupy septets 153 and 154
    parts = split_parts(body)
    assert parts == ["a" * 152, "€" + "b" * 10]
    assert [_gsm_units(p) for p in parts] == [152, 12]
    assert count_parts(body).parts == 2


def test_split_fills_a_part_exactly_when_the_pair_fits() -> None:
    body = "a" * 151 + "€" + "b" * 10  # euro is septets 152-153: still part one
    assert split_parts(body) == ["a" * 151 + "€", "b" * 10]


def test_unsplittable_pair_on_a_boundary_costs_an_extra_part_and_we_count_it() -> None:
    # 306 septets would be 2 parts by ceil(306/153), but the euro cannot straddle parts 1 and 2.
    body = "a" * 152 + "€" + "b" * 152
    assert count_parts(body) == SmsParts(Encoding.GSM7, 306, 3)
    assert split_parts(body) == ["a" * 152, "€" + "b" * 151, "b"]


def test_split_never_cuts_a_surrogate_pair() -> None:
    body = "ж" * 66 + "😀" + "ж" * 10  # the emoji would occupy code units 67 and 68
    parts = split_parts(body)
    assert parts == ["ж" * 66, "😀" + "ж" * 10]
    for part in parts:
        part.encode("utf-16-le")  # strict: raises on a lone surrogate
        part.encode("utf-8")


def test_all_emoji_body_fits_33_per_part() -> None:
    assert count_parts("😀" * 264) == SmsParts(Encoding.UCS2, 528, 8)
    assert count_parts("😀" * 265) == SmsParts(Encoding.UCS2, 530, 9)
    assert all(p == "😀" * 33 for p in split_parts("😀" * 264))


def test_single_part_is_not_split_at_153() -> None:
    body = "a" * 155 + "{}"  # 159 septets: one part even though a 153 boundary would cut the brace
    assert split_parts(body) == [body]


def test_split_empty_body() -> None:
    assert split_parts("") == []


_ALPHABETS = ["a", "b", " ", "€", "{", "^", "\n", "ж", "😀", "é", "Ω"]


@pytest.mark.parametrize("seed", range(40))
def test_split_properties_on_random_bodies(seed: int) -> None:
    rng = random.Random(seed)
    gsm_only = seed % 2 == 0
    alphabet = [c for c in _ALPHABETS if c in GSM7_BASIC | GSM7_EXTENSION] if gsm_only else _ALPHABETS
    body = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 700)))
    info = count_parts(body)
    parts = split_parts(body)

    assert "".join(parts) == body
    assert len(parts) == info.parts
    assert all(parts)
    if info.encoding is Encoding.GSM7:
        assert is_gsm7(body)
        assert info.units == _gsm_units(body)
        single, multi, units = 160, 153, _gsm_units
    else:
        assert info.units == _ucs2_units(body)
        single, multi, units = 70, 67, _ucs2_units
    if info.parts == 1:
        assert info.units <= single
    else:
        assert info.units > single
        assert all(units(p) <= multi for p in parts)
        # Greedy: a part only ends early if the next character would not fit.
        assert all(units(p) + units(nxt[0]) > multi for p, nxt in itertools.pairwise(parts))
        assert math.ceil(info.units / multi) <= info.parts <= math.ceil(info.units / (multi - 1))


# --------------------------------------------------------------------------------------------------------
# Body validation
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", ["", " ", "\n", " \r\n\t ", "\u00a0", "\u3000"])
def test_empty_body_rejected(body: str) -> None:
    with pytest.raises(EmptyMessage) as info:
        validate_body(body)
    assert info.value.reason == "EMPTY_MESSAGE"
    assert info.value.code == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("a" * 1224, SmsParts(Encoding.GSM7, 1224, 8)),
        ("€" * 608, SmsParts(Encoding.GSM7, 1216, 8)),  # 76 euros (152 septets) per part
        ("ж" * 536, SmsParts(Encoding.UCS2, 536, 8)),
        (" x ", SmsParts(Encoding.GSM7, 3, 1)),
    ],
)
def test_longest_bodies_accepted(body: str, expected: SmsParts) -> None:
    assert validate_body(body) == expected


@pytest.mark.parametrize(
    "body",
    ["a" * 1225, "€" * 609, "€" * 612, "ж" * 537, "😀" * 265, "a" * 152 + "€" + "a" * 1070, "x" * 100_000],
)
def test_body_over_eight_parts_rejected(body: str) -> None:
    with pytest.raises(MessageTooLong) as info:
        validate_body(body)
    assert info.value.reason == "MESSAGE_TOO_LONG"
    assert info.value.metadata["max_parts"] == "8"
    assert all(isinstance(v, str) for v in info.value.metadata.values())


@pytest.mark.parametrize("body", ["hi \ud83d", "\udc00", "a\ud800b"])
def test_lone_surrogate_rejected(body: str) -> None:
    with pytest.raises(InvalidMessageBody) as info:
        validate_body(body)
    assert info.value.reason == "INVALID_MESSAGE_BODY"


# --------------------------------------------------------------------------------------------------------
# Recipients
# --------------------------------------------------------------------------------------------------------

TEST_NUMBERS = {
    "+61411111111": "AU",
    "+61422222222": "AU",
    "+61433333333": "AU",
    "+61444444444": "AU",
    "+14055555555": "US",
    "+14055555666": "US",
    "+447777777777": "GB",
    "+8615555555555": "CN",
}


def test_test_recipient_set_is_exactly_clicksends() -> None:
    assert frozenset(TEST_NUMBERS) == TEST_RECIPIENTS


@pytest.mark.parametrize(("number", "region"), sorted(TEST_NUMBERS.items()))
def test_test_recipients_accepted(number: str, region: str) -> None:
    for given, country in [(number, None), (f"  {number} ", None), (number, "FR")]:
        recipient = parse_recipient(given, country)
        assert recipient == Recipient(number, region)
        assert recipient.is_test
    assert is_test_recipient(number)


def test_test_recipient_in_national_format_is_still_a_test_recipient() -> None:
    recipient = parse_recipient("0411 111 111", "AU")
    assert recipient == Recipient("+61411111111", "AU")
    assert recipient.is_test


@pytest.mark.parametrize(
    ("to", "country", "e164", "region"),
    [
        ("+61412345678", None, "+61412345678", "AU"),
        ("+61 412 345 678", None, "+61412345678", "AU"),
        ("+61.412.345.678", "", "+61412345678", "AU"),
        ("0412 345 678", "AU", "+61412345678", "AU"),
        ("0412345678", "au", "+61412345678", "AU"),
        ("0412345678", " AU ", "+61412345678", "AU"),
        ("(201) 555-0123", "US", "+12015550123", "US"),
        ("07400 123456", "GB", "+447400123456", "GB"),
        ("0151 23456789", "DE", "+4915123456789", "DE"),
        ("06 12 34 56 78", "FR", "+33612345678", "FR"),
        ("+8613912345678", None, "+8613912345678", "CN"),
        # An E.164 number keeps its own country whatever the hint says.
        ("+16135550123", "AU", "+16135550123", "CA"),
    ],
)
def test_valid_recipients_normalised(to: str, country: str | None, e164: str, region: str) -> None:
    assert parse_recipient(to, country) == Recipient(e164, region)
    assert normalize_recipient(to, country) == e164
    assert not is_test_recipient(e164)


@pytest.mark.parametrize(
    ("to", "country"),
    [
        ("", None),
        ("   ", "AU"),
        ("abc", "AU"),
        ("+", None),
        ("++61412345678", None),
        ("+61 4123", None),  # too short
        ("+999123456789", None),  # no such country code
        ("+447700900123", None),  # Ofcom drama range: possible but not valid
        ("0412345678", None),  # national without a country
        ("0412345678", ""),
        ("0412345678", "XX"),  # not a region
        ("0412345678", "AUS"),
        ("0412345678", "1"),
        ("61412345678", None),  # no plus, no country: we do not guess
        ("1-800-FLOWERS", "US"),  # vanity letters
        ("+61412345678 ext. 12", None),
        ("tel:+61412345678", None),
        ("+61412345678;x", None),
        ("+80012345678", None),  # valid but non-geographic (region 001)
        ("00 61 412 345 678", "AU"),  # AU's international prefix is 0011
        ("+6141234567\uff18", None),  # fullwidth digit
        ("+" + "1" * 60, None),
    ],
)
def test_invalid_recipients_rejected(to: str, country: str | None) -> None:
    with pytest.raises(InvalidRecipient) as info:
        parse_recipient(to, country)
    assert info.value.reason == "INVALID_RECIPIENT"
    assert info.value.code == "INVALID_ARGUMENT"
    assert isinstance(info.value, DomainError)
    with pytest.raises(InvalidRecipient):
        normalize_recipient(to, country)


# --------------------------------------------------------------------------------------------------------
# Sender ids
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("", ""),
        ("   ", ""),
        ("Acme", "Acme"),
        (" Acme ", "Acme"),
        ("A", "A"),
        ("ACME Ltd", "ACME Ltd"),
        ("Shop 24", "Shop 24"),
        ("2FA", "2FA"),
        ("ABCDEFGHIJK", "ABCDEFGHIJK"),  # 11
        ("A" + "1" * 10, "A" + "1" * 10),
        ("61411111111", "61411111111"),
        ("+61411111111", "+61411111111"),
        ("123456789012345", "123456789012345"),  # 15 digits
        ("+123456789012345", "+123456789012345"),
        ("12345", "12345"),  # short code
    ],
)
def test_valid_senders(sender: str, expected: str) -> None:
    assert validate_sender(sender) == expected


@pytest.mark.parametrize(
    "sender",
    [
        "ABCDEFGHIJKL",  # 12
        "Acme Company",  # 12 with the space
        "12 34",  # no letter, not a number
        "1234567890123456",  # 16 digits
        "+1234567890123456",
        "+",
        "+Acme",
        "Acme!",
        "Acme-Co",
        "Acme_Co",
        "Café",
        "Ünï",
        "Acme\u200b",
        "Ac\tme",
        "Ac\nme",
        "\u0661\u0662\u0663",  # Arabic-Indic digits
        "\uff11\uff12\uff13",  # fullwidth digits
        "Acme\x00",
    ],
)
def test_invalid_senders(sender: str) -> None:
    with pytest.raises(InvalidSenderId) as info:
        validate_sender(sender)
    assert info.value.reason == "INVALID_SENDER_ID"


# --------------------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        (0, None),
        (NOW, NOW),
        (NOW - 60, NOW - 60),
        (NOW + 1, NOW + 1),
        (NOW + 365 * DAY, NOW + 365 * DAY),
    ],
)
def test_valid_schedules(schedule: int, expected: int | None) -> None:
    assert validate_schedule(schedule, NOW) == expected


@pytest.mark.parametrize("schedule", [NOW - 61, NOW - DAY, 1, -1, NOW + 365 * DAY + 1, 2**63, True])
def test_invalid_schedules(schedule: int) -> None:
    with pytest.raises(InvalidSchedule) as info:
        validate_schedule(schedule, NOW)
    assert info.value.reason == "INVALID_SCHEDULE"


# --------------------------------------------------------------------------------------------------------
# Prices
# --------------------------------------------------------------------------------------------------------

TABLE = PriceTable.from_mapping({"au": Decimal("0.0770"), "US": Decimal("0.0350")}, Decimal("0.1000"))


@pytest.mark.parametrize(
    ("country", "parts", "expected"),
    [
        ("AU", 1, Decimal("0.0770")),
        ("AU", 3, Decimal("0.2310")),
        ("au", 2, Decimal("0.1540")),
        ("US", 8, Decimal("0.2800")),
        ("NZ", 2, Decimal("0.2000")),  # default
        ("AU", 0, Decimal("0")),
    ],
)
def test_price_for(country: str, parts: int, expected: Decimal) -> None:
    assert TABLE.price_for(country, parts) == expected


def test_price_for_negative_parts_is_a_bug() -> None:
    with pytest.raises(ValueError, match="parts"):
        TABLE.price_for("AU", -1)


def test_price_table_is_a_frozen_copy() -> None:
    source = {"AU": Decimal("0.05")}
    table = PriceTable.from_mapping(source, Decimal("0.1"))
    source["AU"] = Decimal("9")
    source["NZ"] = Decimal("9")
    assert table.price_per_part("AU") == Decimal("0.05")
    assert table.price_per_part("NZ") == Decimal("0.1")
    with pytest.raises(TypeError):
        table.per_country["AU"] = Decimal("1")  # type: ignore[index]
    with pytest.raises(AttributeError):
        table.default = Decimal("0")  # type: ignore[misc]


@pytest.mark.parametrize(
    ("prices", "default"),
    [
        ({"AU": 0.077}, Decimal("0.1")),  # float
        ({"AU": Decimal("-0.01")}, Decimal("0.1")),
        ({"AU": Decimal("NaN")}, Decimal("0.1")),
        ({"AU": Decimal("Infinity")}, Decimal("0.1")),
        ({"AUS": Decimal("0.1")}, Decimal("0.1")),
        ({"A1": Decimal("0.1")}, Decimal("0.1")),
        ({"au": Decimal("0.1"), "AU": Decimal("0.2")}, Decimal("0.1")),
        ({}, Decimal("-1")),
        ({}, 1),
    ],
)
def test_bad_price_tables_rejected(prices: dict[str, Decimal], default: Decimal) -> None:
    with pytest.raises(ValueError):
        PriceTable.from_mapping(prices, default)


@pytest.mark.parametrize(
    ("value", "price", "balance"),
    [
        (Decimal("0.077"), "0.0770", "0.077000"),
        (Decimal("0.07695"), "0.0770", "0.076950"),  # half up
        (Decimal("0.07694"), "0.0769", "0.076940"),
        (Decimal("0.00005"), "0.0001", "0.000050"),
        (Decimal("0.0000005"), "0.0000", "0.000001"),
        (Decimal("12.5"), "12.5000", "12.500000"),
        (Decimal("0"), "0.0000", "0.000000"),
        (Decimal("-0"), "0.0000", "0.000000"),
        (Decimal("-0.00001"), "0.0000", "-0.000010"),
        (Decimal("-3.25"), "-3.2500", "-3.250000"),
        (Decimal("1E+2"), "100.0000", "100.000000"),
        (Decimal("1E-10"), "0.0000", "0.000000"),
        (Decimal("123456789.123456789"), "123456789.1235", "123456789.123457"),
    ],
)
def test_price_and_balance_formats(value: Decimal, price: str, balance: str) -> None:
    assert format_price(value) == price
    assert format_balance(value) == balance


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity"), 0.077, 1])
def test_format_rejects_non_finite_and_non_decimal(value: Decimal) -> None:
    with pytest.raises(ValueError):
        format_price(value)
    with pytest.raises(ValueError):
        format_balance(value)


# --------------------------------------------------------------------------------------------------------
# State machine
# --------------------------------------------------------------------------------------------------------

S = MessageStatus
ALLOWED = {
    (S.QUEUED, S.SENDING),
    (S.QUEUED, S.CANCELLED),
    (S.SCHEDULED, S.QUEUED),
    (S.SCHEDULED, S.SENDING),
    (S.SCHEDULED, S.CANCELLED),
    (S.SENDING, S.SENT),
    (S.SENDING, S.DELIVERED),
    (S.SENDING, S.FAILED),
    (S.SENT, S.DELIVERED),
    (S.SENT, S.FAILED),
}


@pytest.mark.parametrize(("old", "new"), list(itertools.product(S, S)))
def test_transition_matrix(old: MessageStatus, new: MessageStatus) -> None:
    assert can_transition(old, new) == ((old, new) in ALLOWED)
    assert is_noop(old, new) == (old == new)
    if old == new:
        assert check_transition(old, new) is False
    elif (old, new) in ALLOWED:
        assert check_transition(old, new) is True
    else:
        with pytest.raises(InvalidStatusTransition) as info:
            check_transition(old, new)
        assert info.value.code == "FAILED_PRECONDITION"
        assert info.value.reason == "INVALID_STATUS_TRANSITION"
        assert info.value.metadata == {"from_status": old.value, "to_status": new.value}


def test_terminal_states() -> None:
    assert {s for s in S if is_terminal(s)} == {S.DELIVERED, S.FAILED, S.CANCELLED}


@pytest.mark.parametrize(
    "bad",
    [
        (S.DELIVERED, S.FAILED),
        (S.FAILED, S.DELIVERED),
        (S.SENT, S.CANCELLED),
        (S.SENDING, S.QUEUED),
        (S.CANCELLED, S.QUEUED),
        (S.QUEUED, S.SCHEDULED),
        (S.QUEUED, S.SENT),
    ],
)
def test_backward_or_skipping_moves_refused(bad: tuple[MessageStatus, MessageStatus]) -> None:
    assert not can_transition(*bad)


# --------------------------------------------------------------------------------------------------------
# ClickSend vocabulary
# --------------------------------------------------------------------------------------------------------

DELIVERED_TEXT = "Success: Message received on handset."


@pytest.mark.parametrize(
    ("status", "error_code", "expected"),
    [
        (S.DELIVERED, None, HistoryStatus("Sent", "201", DELIVERED_TEXT, None, None)),
        (S.DELIVERED, 8, HistoryStatus("Sent", "201", DELIVERED_TEXT, None, None)),  # code ignored
        (S.SENT, None, HistoryStatus("Sent", "200", "Message sent to the network for delivery", None, None)),
        (S.QUEUED, None, HistoryStatus("Queued", "200", "Message is queued for delivery", None, None)),
        (S.SENDING, None, HistoryStatus("Queued", "200", "Message is queued for delivery", None, None)),
        (S.SCHEDULED, None, HistoryStatus("Scheduled", "200", "Message is scheduled for delivery", None, None)),
        (S.CANCELLED, None, HistoryStatus("Cancelled", "301", "Message is cancelled", None, None)),
        (
            S.FAILED,
            16,
            HistoryStatus(
                "Failed",
                "300",
                "Temporary network error - will be retried",
                "16",
                "Temporary network error - will be retried",
            ),
        ),
        (
            S.FAILED,
            8,
            HistoryStatus(
                "Failed",
                "301",
                "Unknown subscriber. Number is inactive or invalid",
                "8",
                "Unknown subscriber. Number is inactive or invalid",
            ),
        ),
        (
            S.FAILED,
            20,
            HistoryStatus(
                "Failed", "301", "Message delivery receipt expired", "20", "Message delivery receipt expired"
            ),
        ),
        (S.FAILED, None, HistoryStatus("Failed", "301", "Unknown failure", "7", "Unknown failure")),
        (S.FAILED, 4, HistoryStatus("Failed", "301", "Unknown failure", "7", "Unknown failure")),  # not a failure
        (S.FAILED, 999, HistoryStatus("Failed", "301", "Unknown failure", "7", "Unknown failure")),
    ],
)
def test_history_view(status: MessageStatus, error_code: int | None, expected: HistoryStatus) -> None:
    assert clicksend_history_view(status, error_code) == expected


@pytest.mark.parametrize("status", list(S))
@pytest.mark.parametrize("error_code", [None, 7, 16, 19])
def test_history_and_receipt_views_agree_with_sdk_types(status: MessageStatus, error_code: int | None) -> None:
    history = clicksend_history_view(status, error_code)
    receipt = clicksend_receipt_view(status, error_code)
    assert isinstance(history.status_code, str)
    assert isinstance(receipt.status_code, int)
    assert history.error_code is None or isinstance(history.error_code, str)
    assert receipt.error_code is None or type(receipt.error_code) is int
    assert receipt == ReceiptStatus(
        int(history.status_code),
        history.status_text,
        None if history.error_code is None else int(history.error_code),
        history.error_text,
    )
    assert clicksend_receipt_code(status, error_code) == receipt.status_code
    assert history.status in {"Queued", "Scheduled", "Sent", "Failed", "Cancelled"}


@pytest.mark.parametrize(
    ("status", "error_code", "code"),
    [
        (S.DELIVERED, None, 201),
        (S.FAILED, None, 301),
        (S.FAILED, 16, 300),
        (S.FAILED, 15, 301),
        (S.CANCELLED, None, 301),
        (S.SENT, None, 200),
        (S.QUEUED, None, 200),
    ],
)
def test_receipt_code(status: MessageStatus, error_code: int | None, code: int) -> None:
    assert clicksend_receipt_code(status, error_code) == code


def test_receipt_code_without_error_code() -> None:
    assert clicksend_receipt_code(S.FAILED) == 301
    assert clicksend_receipt_code(S.DELIVERED) == 201


def test_carrier_error_table_covers_7_to_20() -> None:
    assert set(CARRIER_ERROR_TEXT) == set(range(7, 21))


# --------------------------------------------------------------------------------------------------------
# Whole outbound message
# --------------------------------------------------------------------------------------------------------


def test_validate_outbound_success() -> None:
    result = validate_outbound("Hello {name}", "0412 345 678", "AU", " Acme ", NOW + 3600, NOW)
    assert result == ValidatedMessage(
        body="Hello {name}",
        recipient=Recipient("+61412345678", "AU"),
        sender="Acme",
        schedule=NOW + 3600,
        sms=SmsParts(Encoding.GSM7, 14, 1),
    )
    assert isinstance(result, ValidatedMessage)
    assert result.to == "+61412345678"
    assert not result.is_test


def test_validate_outbound_defaults_and_test_recipient() -> None:
    result = validate_outbound("hi", "+61411111111", None, None, None, NOW)
    assert isinstance(result, ValidatedMessage)
    assert result.sender == ""
    assert result.schedule is None
    assert result.is_test


@pytest.mark.parametrize(
    ("body", "to", "country", "sender", "schedule", "status"),
    [
        ("hi", "nope", None, "Acme", 0, MessageStatusCode.INVALID_RECIPIENT),
        ("hi", "+61412345678", None, "Acme Company Ltd", 0, MessageStatusCode.INVALID_SENDER_ID),
        (" ", "+61412345678", None, "Acme", 0, MessageStatusCode.EMPTY_MESSAGE),
        ("a" * 1225, "+61412345678", None, "Acme", 0, MessageStatusCode.MESSAGE_TOO_LONG),
        ("\ud800", "+61412345678", None, "Acme", 0, MessageStatusCode.INVALID_MESSAGE_BODY),
        ("hi", "+61412345678", None, "Acme", NOW - 3600, MessageStatusCode.INVALID_SCHEDULE),
        # Order: recipient, then sender, then body, then schedule.
        ("", "nope", None, "!!", NOW - 3600, MessageStatusCode.INVALID_RECIPIENT),
        ("", "+61412345678", None, "!!", NOW - 3600, MessageStatusCode.INVALID_SENDER_ID),
        ("", "+61412345678", None, "Acme", NOW - 3600, MessageStatusCode.EMPTY_MESSAGE),
        ("a" * 2000, "+61412345678", None, "", NOW - 3600, MessageStatusCode.MESSAGE_TOO_LONG),
    ],
)
def test_validate_outbound_rejections(
    body: str, to: str, country: str | None, sender: str, schedule: int, status: MessageStatusCode
) -> None:
    result = validate_outbound(body, to, country, sender, schedule, NOW)
    assert isinstance(result, Rejected)
    assert result.status_code is status
    assert result.status_code == status.value  # a plain wire string too
    assert result.message


def test_validate_outbound_never_raises_on_garbage() -> None:
    rng = random.Random(7)
    pool = ["", " ", "+", "0", "+61411111111", "\ud800", "😀" * 300, "€" * 700, "x" * 20, "+80012345678"]
    countries: list[str | None] = [None, "", "AU", "zz", "AUS", "\u00c5U"]
    schedules: list[int | None] = [None, 0, -1, NOW, NOW * 10, 2**70]
    for _ in range(500):
        result = validate_outbound(
            rng.choice(pool), rng.choice(pool), rng.choice(countries), rng.choice(pool), rng.choice(schedules), NOW
        )
        assert isinstance(result, ValidatedMessage | Rejected)


def test_status_code_values_are_wire_strings() -> None:
    for code in MessageStatusCode:
        assert code.value == code.name
    for err in (
        EmptyMessage,
        MessageTooLong,
        InvalidMessageBody,
        InvalidRecipient,
        InvalidSenderId,
        InvalidSchedule,
    ):
        assert MessageStatusCode(err.reason).value == err.reason
        assert err.code == "INVALID_ARGUMENT"
