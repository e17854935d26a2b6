"""Alpha tag rules (services/messaging/domain/alpha_tags.py): the tag's shape, the normalised form, the protected-name
skeleton and its matching rule against the usual evasions, the review state machine, and the migration's seeded
skeletons agreeing with the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.messaging.domain.alpha_tags import (
    AlphaTag,
    AlphaTagState,
    AlphaTagWrongState,
    InvalidAlphaTag,
    InvalidProtectedName,
    ProtectedName,
    ProtectedSenderName,
    ReasonRequired,
    check_alpha_tag_id,
    check_protected_name,
    check_tag,
    matches,
    normalize,
    protected_match,
    review,
    skeleton,
)

MIGRATION = Path(__file__).resolve().parents[3] / "services/messaging/migrations/0013_alpha_tags.sql"


def _seeded() -> list[ProtectedName]:
    rows = re.findall(r"\('([^']+)', '([^']+)', '([a-z]+)'\)", MIGRATION.read_text())
    return [ProtectedName(name, skel, cat) for name, skel, cat in rows]


SEEDED = _seeded()


def _tag(tag: str, state: AlphaTagState = AlphaTagState.REQUESTED) -> AlphaTag:
    return AlphaTag(id="00000000-0000-4000-8000-000000000001", account_id=5, user_id=7, tag=tag,
                    normalized=normalize(tag), request_reason="why", state=state)


@pytest.mark.parametrize("tag", ["A", "MyShop", "Cafe Roma", "ACME 2024", "dr who", "A1234567890"])
def test_tags_of_letters_digits_and_spaces_up_to_11_are_accepted(tag: str) -> None:
    assert check_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", "123456", "+61400000000", "TwelveChars!", "ABCDEFGHIJKL", " Shop", "Shop ",
                                 "Caf\u00e9", "Shop\n", "a/b", "<script>", "ACME-2024", "B&B", "dr.who"])
def test_tags_that_are_numbers_too_long_padded_or_odd_are_refused(tag: str) -> None:
    with pytest.raises(InvalidAlphaTag):
        check_tag(tag)


def test_normalised_form_ignores_case_spaces_and_marks() -> None:
    assert normalize("My-Shop") == normalize("MY SHOP") == normalize("my.shop") == "MYSHOP"
    assert normalize("Shop1") != normalize("ShopI")  # the normal form keeps digits: two different tags


def test_skeleton_reads_digits_as_letters_and_folds_look_alikes() -> None:
    assert skeleton("C0mm Bank") == skeleton("COMM BANK") == "COMMBANK"
    assert skeleton("PAYPA1") == skeleton("PayPal") == skeleton("PAYPAI") == "PAYPAI"
    assert skeleton("W3STP4C") == skeleton("Westpac") == "WESTPAC"
    assert skeleton("5anta 8ank") == skeleton("Santa Bank")
    assert skeleton("T-Mobile") == skeleton("TM0BI1E")


@pytest.mark.parametrize("tag, name", [
    ("Westpac", "Westpac"),            # as is
    ("WESTPAC", "Westpac"),            # case
    ("westpac", "Westpac"),
    ("W e s t p a c", "Westpac"),      # spaces
    ("W-E.S_T pac", "Westpac"),        # marks
    ("W3stp4c", "Westpac"),            # digits for letters
    ("WE5TPAC", "Westpac"),
    ("MyWestpacSMS", "Westpac"),       # inside a longer tag
    ("Westpac Info", "Westpac"),
    ("C0mmBank", "CommBank"),
    ("PayPa1", "PayPal"),              # 1 for L
    ("PAYPAI", "PayPal"),              # I for L
    ("Te1stra", "Telstra"),
    ("ANZ", "ANZ"),                    # a short name: the whole tag
    ("ANZ Alerts", "ANZ"),             # ... a word of it
    ("ANZBank", "ANZ"),                # ... its start
    ("MyANZ", "ANZ"),                  # ... its end
    ("A N Z", "ANZ"),                  # ... spelled out
    ("N.A.B Info", "NAB"),             # single-letter runs are joined into a word
    ("N4B", "NAB"),
    ("AT0", "ATO"),
    ("HMRC Tax", "HMRC"),
    ("GOV.UK", "GOV.UK"),
    ("G0VUK", "GOV.UK"),
    ("Centre1ink", "Centrelink"),
    ("AusP0st", "AusPost"),
])
def test_protected_names_match_through_the_usual_evasions(tag: str, name: str) -> None:
    found = protected_match(tag, SEEDED)
    assert found is not None and matches(tag, skeleton(name)), (tag, name, found)


@pytest.mark.parametrize("tag", ["Cafe Roma", "BananaZone", "Stairs Co", "Potato Hut", "Dental Care",
                                 "Plumbing", "Bookings", "Groups"])
def test_ordinary_tags_match_no_protected_name(tag: str) -> None:
    assert protected_match(tag, SEEDED) is None, protected_match(tag, SEEDED)


def test_the_most_specific_protected_name_is_named() -> None:
    names = [ProtectedName("Bank", "BANK", "bank"), ProtectedName("CommBank", "COMMBANK", "bank")]
    found = protected_match("C0mmBank", names)
    assert found is not None and found.name == "CommBank"


def test_seeded_skeletons_are_what_the_code_computes_and_unique() -> None:
    assert len(SEEDED) > 40
    assert all(n.skeleton == skeleton(n.name) for n in SEEDED), [n for n in SEEDED if n.skeleton != skeleton(n.name)]
    assert len({n.skeleton for n in SEEDED}) == len(SEEDED)
    assert {n.category for n in SEEDED} >= {"bank", "government", "carrier"}


def test_protected_names_are_checked_when_staff_add_them() -> None:
    assert check_protected_name(" Acme Energy ", "Brand") == ProtectedName("Acme Energy", "ACMEENERGY", "brand")
    for name, category in [("A", "brand"), ("1234", "brand"), ("Acme", "planet"), ("x" * 41, "brand")]:
        with pytest.raises(InvalidProtectedName):
            check_protected_name(name, category)


def test_approval_of_a_protected_name_needs_evidence_and_records_it() -> None:
    with pytest.raises(ProtectedSenderName) as err:
        review(_tag("N4B Alerts"), AlphaTagState.APPROVED, 9, "looks fine", "", SEEDED)
    assert "NAB" in str(err.value) and "evidence" in str(err.value)
    done = review(_tag("N4B Alerts"), AlphaTagState.APPROVED, 9, "the bank itself", "APRA licence 1", SEEDED)
    assert (done.protected_name, done.evidence, done.staff_id) == ("NAB", "APRA licence 1", 9)
    plain = review(_tag("Cafe Roma"), AlphaTagState.APPROVED, 9, "ok", "", SEEDED)
    assert (plain.protected_name, plain.evidence) == ("", "")
    # Rejecting a protected name needs no evidence.
    assert review(_tag("N4B Alerts"), AlphaTagState.REJECTED, 9, "impersonation", "", SEEDED).protected_name == ""


def test_every_decision_needs_a_reason() -> None:
    for reason in ("", "   "):
        with pytest.raises(ReasonRequired):
            review(_tag("Cafe Roma"), AlphaTagState.APPROVED, 9, reason, "", SEEDED)
    with pytest.raises(ReasonRequired):
        review(_tag("Cafe Roma"), AlphaTagState.REJECTED, 9, "x" * 501, "", SEEDED)


@pytest.mark.parametrize("state, decision", [
    (AlphaTagState.APPROVED, AlphaTagState.APPROVED), (AlphaTagState.REJECTED, AlphaTagState.APPROVED),
    (AlphaTagState.REVOKED, AlphaTagState.APPROVED), (AlphaTagState.CANCELLED, AlphaTagState.APPROVED),
    (AlphaTagState.REQUESTED, AlphaTagState.REVOKED), (AlphaTagState.APPROVED, AlphaTagState.REJECTED),
    (AlphaTagState.REQUESTED, AlphaTagState.CANCELLED),
])
def test_decisions_only_from_the_state_they_change(state: AlphaTagState, decision: AlphaTagState) -> None:
    with pytest.raises(AlphaTagWrongState):
        review(_tag("Cafe Roma", state), decision, 9, "reason", "", SEEDED)


def test_the_customer_sees_the_reviewers_reason_once_reviewed() -> None:
    t = _tag("Cafe Roma")
    assert (t.status, t.shown_reason) == ("PENDING", "why")
    from dataclasses import replace
    done = replace(t, state=AlphaTagState.REJECTED, review_reason="not your business name")
    assert (done.status, done.shown_reason) == ("REJECTED", "not your business name")


def test_alpha_tag_ids_are_uuids() -> None:
    assert check_alpha_tag_id("00000000-0000-4000-8000-00000000000A") == "00000000-0000-4000-8000-00000000000a"
    for bad in ("", "1", "../x", "00000000-0000-4000-8000-00000000000"):
        with pytest.raises(Exception, match="No such alpha tag"):
            check_alpha_tag_id(bad)
