"""The rules of an account's sign-in policy (services/identity/domain/account_policy.py): networks as given and
as checked, the lifetime's bounds and what it cuts, the main user's lock-out guard, which sessions a change ends
at once, and what the audit record says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.identity.domain.account_policy import (
    MAX_NETWORKS,
    AccountPolicy,
    CallerOutsideNetworks,
    NetworkInvalid,
    SessionLifetimeInvalid,
    TooManyNetworks,
    check_not_locking_out,
    describe_change,
    new_policy,
    parse_networks,
    sessions_to_end,
)
from services.identity.domain.caller import Caller
from services.identity.domain.errors import PrincipalRequired
from services.identity.service.account_policy import AccountPolicies
from svckit.errors import Unavailable

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def test_networks_are_ipv4_or_ipv6_cidrs_or_single_addresses_normalised_and_deduplicated() -> None:
    nets = parse_networks(["192.0.2.0/24", "2001:DB8:0ff1::/48", "198.51.100.7", "2001:db8::1", "192.0.2.0/24"])
    assert [str(n) for n in nets] == ["192.0.2.0/24", "2001:db8:ff1::/48", "198.51.100.7/32", "2001:db8::1/128"]
    assert parse_networks([]) == ()


@pytest.mark.parametrize("bad", ["10.0.0.1/8", "not a network", "", "300.1.1.1", "192.0.2.0/33", "::ffff:10.0.0.0/104"])
def test_a_bad_network_is_refused_naming_its_place(bad: str) -> None:
    with pytest.raises(NetworkInvalid) as err:
        parse_networks(["192.0.2.0/24", bad])
    assert err.value.reason == "NETWORK_INVALID" and err.value.metadata["field"] == "allowed_networks[1]"


def test_the_number_of_networks_is_bounded() -> None:
    assert len(parse_networks([f"192.0.2.{i}" for i in range(MAX_NETWORKS)])) == MAX_NETWORKS
    with pytest.raises(TooManyNetworks):
        parse_networks([f"192.0.2.{i}" for i in range(MAX_NETWORKS + 1)])


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("192.0.2.55", True),
        ("::ffff:192.0.2.55", True),  # IPv4-mapped IPv6 is its IPv4 address
        ("2001:db8:ff1:7::25", True),
        ("fe80::1%eth0", False),
        ("192.0.3.1", False),
        ("2001:db8:ff2::1", False),
        ("", False),  # no address: outside every list
        ("unix:/tmp/socket", False),
    ],
)
def test_an_address_is_allowed_only_inside_a_listed_network(address: str, allowed: bool) -> None:
    policy = AccountPolicy(allowed_networks=parse_networks(["192.0.2.0/24", "2001:db8:ff1::/48"]))
    assert policy.allows_address(address) is allowed
    assert AccountPolicy().allows_address(address)  # no list: anywhere


def test_the_lifetime_is_zero_or_within_bounds() -> None:
    assert new_policy(False, [], 0).session_lifetime_seconds == 0
    assert new_policy(False, [], 300).session_lifetime_seconds == 300
    assert new_policy(False, [], 2, min_session_lifetime_seconds=2).session_lifetime_seconds == 2
    for bad in (1, 299, 30 * 86400 + 1, -5):
        with pytest.raises(SessionLifetimeInvalid):
            new_policy(False, [], bad)


def test_the_lifetime_cuts_the_platforms_expiry_and_ends_older_sessions() -> None:
    platform_end = NOW + timedelta(hours=12)
    assert AccountPolicy().session_expiry(NOW, platform_end) == platform_end
    policy = AccountPolicy(session_lifetime_seconds=1800)
    assert policy.session_expiry(NOW, platform_end) == NOW + timedelta(minutes=30)
    assert policy.session_expiry(NOW, NOW + timedelta(minutes=5)) == NOW + timedelta(minutes=5)  # never longer
    assert not policy.outlived(NOW, NOW + timedelta(minutes=29, seconds=59))
    assert policy.outlived(NOW, NOW + timedelta(minutes=30))
    assert not AccountPolicy().outlived(NOW - timedelta(days=300), NOW)


def test_only_sessions_without_a_verified_second_factor_are_held_to_enrolment() -> None:
    assert AccountPolicy(require_second_factor=True).restricts(has_verified_second_factor=False)
    assert not AccountPolicy(require_second_factor=True).restricts(has_verified_second_factor=True)
    assert not AccountPolicy().restricts(has_verified_second_factor=False)


def test_the_main_user_cannot_leave_out_their_own_address() -> None:
    policy = new_policy(False, ["192.0.2.0/24"], 0)
    check_not_locking_out(policy, "192.0.2.10")
    with pytest.raises(CallerOutsideNetworks) as err:
        check_not_locking_out(policy, "203.0.113.5")
    assert err.value.reason == "CALLER_OUTSIDE_NETWORKS"
    with pytest.raises(CallerOutsideNetworks):
        check_not_locking_out(policy, "")  # nowhere known is not inside
    check_not_locking_out(new_policy(False, [], 0), "")  # an empty list allows anywhere


def test_a_change_ends_sessions_from_outside_and_past_the_lifetime_at_once() -> None:
    live = [
        ("inside", "192.0.2.10", NOW - timedelta(minutes=5)),
        ("outside", "203.0.113.5", NOW - timedelta(minutes=5)),
        ("old", "192.0.2.11", NOW - timedelta(hours=2)),
        ("unknown", "", NOW),
    ]
    assert sessions_to_end(new_policy(False, ["192.0.2.0/24"], 3600), live, NOW) == ["outside", "old", "unknown"]
    assert sessions_to_end(new_policy(True, [], 0), live, NOW) == []  # requiring a factor ends nothing


def test_the_audit_record_says_what_changed_as_facts() -> None:
    old = AccountPolicy()
    new = new_policy(True, ["192.0.2.0/24"], 3600)
    assert describe_change(old, new).details == {
        "changed": "require_second_factor,allowed_networks,session_lifetime_seconds",
        "require_second_factor": "true", "allowed_networks": "192.0.2.0/24", "session_lifetime_seconds": "3600",
        "previous_allowed_networks": "", "previous_session_lifetime_seconds": "0",
    }
    same = describe_change(new, new_policy(True, ["192.0.2.0/24"], 3600))
    assert not same.changed and same.details["changed"] == ""


# -- the use case (service/account_policy.py) over an in-memory store --------------------------------------------


class FakePolicyStore:
    def __init__(self, sessions: list[tuple[str, str, datetime]]) -> None:
        self.policies: dict[int, AccountPolicy] = {}
        self.sessions = sessions
        self.revoked: list[tuple[str, str]] = []

    async def account_policy(self, account_id: int) -> AccountPolicy:
        return self.policies.get(account_id, AccountPolicy())

    async def put_account_policy(self, account_id, policy, updated_by, before_commit):  # type: ignore[no-untyped-def]
        old = await self.account_policy(account_id)
        stored = AccountPolicy(policy.require_second_factor, policy.allowed_networks, policy.session_lifetime_seconds,
                               NOW)
        await before_commit(old, stored)  # a failure here stores nothing
        self.policies[account_id] = stored
        return old, stored

    async def live_account_sessions(self, account_id: int) -> list[tuple[str, str, datetime]]:
        return list(self.sessions)

    async def revoke_account_sessions(self, account_id: int, session_ids: list[str], reason: str) -> list[str]:
        self.revoked += [(sid, reason) for sid in session_ids]
        return session_ids


class FakeAudit:
    def __init__(self, fail: bool = False) -> None:
        self.strict: list[object] = []
        self.events: list[object] = []
        self.fail = fail

    async def record(self, event: object) -> None:
        self.events.append(event)

    async def record_strict(self, event: object, timeout: float = 5.0) -> None:
        if self.fail:
            raise Unavailable("no audit log", reason="AUDIT_UNAVAILABLE")
        self.strict.append(event)


async def test_update_records_the_change_first_then_ends_the_sessions_it_governs() -> None:
    store = FakePolicyStore([("in", "192.0.2.10", NOW), ("out", "203.0.113.5", NOW)])
    audit = FakeAudit()
    policies = AccountPolicies(store, audit, now=lambda: NOW)  # type: ignore[arg-type]
    main = Caller(account_id=5, user_id=9, client_address="192.0.2.1")
    policy, ended = await policies.update(main, True, ["192.0.2.0/24"], 3600)
    assert (policy.require_second_factor, policy.network_texts, ended) == (True, ["192.0.2.0/24"], 1)
    assert store.revoked == [("out", "account_policy")]
    [event] = audit.strict
    assert event.action == "account.policy.update" and event.details["changed"]  # type: ignore[attr-defined]
    assert (await policies.get(Caller(account_id=5, user_id=11))).require_second_factor  # a sub-account reads it


async def test_update_refused_or_unrecorded_changes_nothing() -> None:
    store = FakePolicyStore([("out", "203.0.113.5", NOW)])
    main = Caller(account_id=5, user_id=9, client_address="203.0.113.5")
    with pytest.raises(CallerOutsideNetworks):
        await AccountPolicies(store, FakeAudit()).update(main, False, ["192.0.2.0/24"], 0)  # type: ignore[arg-type]
    with pytest.raises(Exception, match="no audit log"):
        await AccountPolicies(store, FakeAudit(fail=True)).update(main, True, [], 0)  # type: ignore[arg-type]
    with pytest.raises(PrincipalRequired):
        await AccountPolicies(store, FakeAudit()).get(Caller(account_id=1, user_id=2, staff=True))  # type: ignore[arg-type]
    assert store.policies == {} and store.revoked == []
