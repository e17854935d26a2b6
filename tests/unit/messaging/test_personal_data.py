"""Keyed hashes of custom strings and what a de-identified number still shows (issue 15)."""

from __future__ import annotations

from services.messaging.domain.privacy import custom_string_index, deidentified_number, number_index


def test_custom_string_hash_is_keyed_exact_and_apart_from_number_hashes() -> None:
    key, other = b"k" * 32, b"o" * 32
    assert custom_string_index(key, "order-42") == custom_string_index(key, "order-42")
    assert custom_string_index(key, "order-42") != custom_string_index(key, "Order-42")
    assert custom_string_index(key, "order-42") != custom_string_index(other, "order-42")
    # The same text hashed as a number and as a custom string never collide (separate labels).
    assert custom_string_index(key, "+61412345678") != number_index(key, "+61412345678")
    assert b"order-42" not in custom_string_index(key, "order-42")


def test_a_deidentified_number_is_its_country_calling_code_alone() -> None:
    assert deidentified_number("AU") == "+61"
    assert deidentified_number("us") == "+1"
    assert deidentified_number("") == "" and deidentified_number("ZZ") == ""
