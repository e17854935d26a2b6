"""Carrier route tables: parsing (clear refusals) and matching (most specific wins)."""

from __future__ import annotations

import pytest

from services.messaging.domain.routes import RouteTableError, parse_routes, single

KNOWN = ("simulator", "http", "smpp")
AU, NZ, US, CA_TORONTO, GB = "+61412345678", "+6421234567", "+12025550123", "+14165550123", "+447400123456"


def test_countries_prefixes_and_default() -> None:
    t = parse_routes("AU,NZ=smpp;1=http;*=simulator", known=KNOWN)
    assert t.carrier_for(AU) == "smpp"
    assert t.carrier_for(NZ) == "smpp"
    assert t.carrier_for(US) == "http"
    assert t.carrier_for(CA_TORONTO) == "http"
    assert t.carrier_for(GB) == "simulator"
    assert t.carriers == {"smpp", "http", "simulator"}
    assert t.fallback == "" and t.fallback_for("smpp") == ""


def test_most_specific_match_wins() -> None:
    t = parse_routes("1=http;CA=smpp;1202=simulator;61=http;AU=smpp;6141=simulator;*=http", known=KNOWN)
    assert t.carrier_for(CA_TORONTO) == "smpp"  # a country beats a prefix no longer than its calling code
    assert t.carrier_for("+12125550123") == "http"  # US: only the '1' prefix matches
    assert t.carrier_for(US) == "simulator"  # a 4-digit prefix beats the country
    assert t.carrier_for("+61298765432") == "smpp"  # AU beats 61
    assert t.carrier_for(AU) == "simulator"  # 6141 beats AU


def test_longest_prefix_and_unplaceable_numbers() -> None:
    t = parse_routes("4=http;44=smpp;447=simulator;*=http", known=KNOWN)
    assert t.carrier_for(GB) == "simulator"
    assert t.carrier_for("+442071234567") == "smpp"
    assert t.carrier_for("+49301234567") == "http"
    t2 = parse_routes("GB=smpp;*=http", known=KNOWN)
    assert t2.carrier_for("+999") == "http"  # no region: default, not an error
    assert t2.carrier_for("447400123456") == "smpp"  # without the '+'


def test_fallback() -> None:
    t = parse_routes("AU=smpp;*=http", "simulator", known=KNOWN)
    assert t.fallback_for("smpp") == "simulator"
    assert t.fallback_for("simulator") == ""  # the fallback has no fallback of its own
    assert t.carriers == {"smpp", "http", "simulator"}
    assert single("http").carrier_for(AU) == "http" and single("http").fallback == ""


def test_whitespace_case_and_trailing_separator() -> None:
    t = parse_routes(" au , +64 = smpp ; * = http ;", known=KNOWN)
    assert t.carrier_for(AU) == "smpp" and t.carrier_for(NZ) == "smpp" and t.carrier_for(GB) == "http"


@pytest.mark.parametrize(("spec", "fallback", "problem"), [
    ("", "", "is empty"),
    ("AU=smpp", "", "no default route"),
    ("AU=smpp;*=http;*=simulator", "", "'*' twice"),
    ("AU=smpp;au=http;*=http", "", "AU twice"),
    ("61=smpp;+61=http;*=http", "", "prefix 61 twice"),
    ("AU=smpp;;*=http", "", "route 2 is empty"),
    ("AU smpp;*=http", "", "must be KEY"),
    ("=smpp;*=http", "", "must be KEY"),
    ("XX=smpp;*=http", "", "'XX' is not a country"),
    ("Australia=smpp;*=http", "", "neither a country"),
    ("06=smpp;*=http", "", "neither a country"),
    ("AU=carrier-pigeon;*=http", "", "unknown carrier 'carrier-pigeon'; known: http, simulator, smpp"),
    ("AU=SMPP;*=http", "", "must be lower-case"),
    ("AU=smpp;*=http", "pigeon", "MESSAGING_CARRIER_FALLBACK: unknown carrier 'pigeon'"),
])
def test_bad_tables_are_refused_with_the_problem_named(spec: str, fallback: str, problem: str) -> None:
    with pytest.raises(RouteTableError) as info:
        parse_routes(spec, fallback, known=KNOWN)
    assert problem in str(info.value)


def test_unknown_names_pass_when_no_list_is_given() -> None:
    assert parse_routes("*=anything").default == "anything"
