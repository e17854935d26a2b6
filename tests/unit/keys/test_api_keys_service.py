"""API-key use cases against in-memory fakes: lifecycle, audit ordering, no-oracle verification, limits,
rolling, leak reports."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from sendsafe.audit.v1 import event_pb2
from services.keys.domain.api_key_format import ApiKeyParts, new_api_key, parse_api_key, random_base62
from services.keys.domain.api_keys import Caller
from services.keys.domain.errors import (
    AddressNotAllowed,
    ApiKeyAlreadyRolled,
    ApiKeyExpired,
    ApiKeyInactive,
    ApiKeyNotFound,
    ApiKeyRevoked,
    BatchTooLarge,
    ExceedsCallingKey,
    RequestInvalid,
    ScopeNotHeld,
)
from services.keys.domain.restrictions import check_send_limits
from svckit.audit import AuditUnavailable
from svckit.errors import PermissionDenied, Unauthenticated
from svckit.keyevents import API_KEYS_CHANGED, KeyNotice
from tests.unit.keys.harness import ALICE, NOW, RULES, Parts, create

# -- API keys issued for other services --------------------------------------------------------------------


async def test_issue_then_verify(p: Parts) -> None:
    key_id, api_key, expires = await p.api_keys.issue_api_key(5, 6, "ci", False)
    assert api_key.startswith("ss_live_") and key_id in api_key
    assert expires == NOW + RULES.max_lifetime  # even internally issued keys expire
    stored = p.store.api_keys[key_id]
    assert stored.account_id == 5 and stored.user_id == 6 and stored.scopes == ("*",)
    assert api_key not in repr(stored) and stored.secret_hmac.hex() not in repr(stored)
    verified = await p.api_keys.verify_api_key(api_key, "203.0.113.9")
    assert (verified.key_id, verified.account_id, verified.user_id, verified.scopes) == (key_id, 5, 6, ("*",))
    assert verified.valid_for_seconds == RULES.max_lifetime.total_seconds()
    assert p.last_used.uses[key_id] == (NOW.timestamp(), "203.0.113.9")
    (issued,) = p.audit.strict
    assert issued.action == "keys.api_key.issued"
    assert (issued.resource.type, issued.resource.id, issued.actor.account_id) == ("api_key", key_id, 5)
    assert api_key not in str(issued) and parse_api_key(api_key).secret not in str(issued)  # type: ignore[union-attr]


async def test_issue_fails_closed_when_audit_is_down(p: Parts) -> None:
    p.audit.down = True
    with pytest.raises(AuditUnavailable):
        await p.api_keys.issue_api_key(5, 6, "ci", True)
    assert p.store.api_keys == {}
    # A superseding failure event says the (possibly still delivered) success event did not happen.
    (failed,) = p.audit.events
    assert (failed.action, failed.outcome, failed.error_reason) == (
        "keys.api_key.issued", event_pb2.OUTCOME_FAILURE, "AUDIT_UNAVAILABLE",
    )
    assert failed.actor.account_id == 5 and failed.resource.id and failed.details["supersedes_event_id"]


async def test_issue_rejects_bad_requests(p: Parts) -> None:
    with pytest.raises(RequestInvalid):
        await p.api_keys.issue_api_key(0, 6, "ci", False)
    assert p.store.calls == [] and p.audit.events == []


async def test_verify_failures_before_and_after_the_secret_is_proven(p: Parts) -> None:
    _, good, _ = await p.api_keys.issue_api_key(5, 6, "ci", False)
    _, revoked, _ = await p.api_keys.issue_api_key(5, 6, "old", False)
    _, expired, _ = await p.api_keys.issue_api_key(5, 6, "short", False)
    rid, eid = parse_api_key(revoked).key_id, parse_api_key(expired).key_id  # type: ignore[union-attr]
    p.store.api_keys[rid] = dataclasses.replace(p.store.api_keys[rid], revoke_time=NOW - timedelta(seconds=1))
    p.store.api_keys[eid] = dataclasses.replace(p.store.api_keys[eid], expire_time=NOW)
    g = parse_api_key(good)
    assert g is not None
    wrong_secret = ApiKeyParts(False, g.key_id, random_base62(22)).format()
    unknown = new_api_key(False).format()
    garbled = good[:-1] + ("A" if good[-1] != "A" else "B")
    p.last_used.pending.clear()
    unproven = set()
    for candidate, failure, reason in (
        (wrong_secret, "secret_mismatch", "INVALID_CREDENTIALS"),
        (unknown, "unknown_key", "INVALID_CREDENTIALS"),
        (garbled, "malformed", "INVALID_CREDENTIALS"),
        ("", "malformed", "INVALID_CREDENTIALS"),
        (revoked, "revoked", "API_KEY_REVOKED"),
        (expired, "expired", "API_KEY_EXPIRED"),
    ):
        p.audit.events.clear()
        p.store.calls.clear()
        with pytest.raises((Unauthenticated, PermissionDenied)) as info:
            await p.api_keys.verify_api_key(candidate)
        assert info.value.reason == reason and info.value.code == "UNAUTHENTICATED"
        if reason == "INVALID_CREDENTIALS":
            unproven.add((info.value.code, info.value.reason, info.value.message))
        (ev,) = p.audit.events
        assert ev.action == "keys.api_key.verify_failed" and ev.details["failure"] == failure
        assert ev.error_reason == reason
        if failure == "malformed":
            assert p.store.calls == []  # no database lookup for garbage
            assert ev.resource.id == ""
        else:
            assert ev.resource.id == parse_api_key(candidate).key_id  # type: ignore[union-attr]
        parsed = parse_api_key(candidate)
        secret = parsed.secret if parsed else candidate
        assert not secret or secret not in str(ev)
    # Nothing distinguishes the failures of someone who does not hold a real key (no oracle).
    assert unproven == {("UNAUTHENTICATED", "INVALID_CREDENTIALS", "the API key is not valid")}
    assert not p.last_used.pending  # failures are not uses


async def test_allow_list_refuses_other_addresses_and_audits_it(p: Parts) -> None:
    record, key = await create(p, allowed_cidrs=["203.0.113.0/24", "2001:db8::/32"])
    assert (await p.api_keys.verify_api_key(key, "203.0.113.200")).key_id == record.key_id
    assert (await p.api_keys.verify_api_key(key, "2001:db8::1")).key_id == record.key_id
    for outside in ("198.51.100.7", ""):
        p.audit.events.clear()
        with pytest.raises(AddressNotAllowed) as info:
            await p.api_keys.verify_api_key(key, outside)
        assert (info.value.code, info.value.reason) == ("PERMISSION_DENIED", "API_KEY_ADDRESS_NOT_ALLOWED")
        (ev,) = p.audit.events
        assert ev.outcome == event_pb2.OUTCOME_DENIED and ev.details["failure"] == "address_not_allowed"
        assert ev.actor.account_id == 5 and ev.details.get("client_address", "") == outside


async def test_verify_survives_a_broken_redis(p: Parts) -> None:
    _, key, _ = await p.api_keys.issue_api_key(5, 6, "ci", False)
    p.last_used.broken = True
    assert (await p.api_keys.verify_api_key(key)).account_id == 5


async def test_last_used_write_back(p: Parts) -> None:
    ids = [(await p.api_keys.issue_api_key(5, 6, f"k{i}", False)) for i in range(5)]
    for _, key, _ in ids:
        await p.api_keys.verify_api_key(key, "198.51.100.4")
    p.store.fail_last_used = True
    with pytest.raises(ConnectionError):
        await p.api_keys.flush_last_used(batch=2)
    assert len(p.last_used.pending) == 5  # given back for the next round
    p.store.fail_last_used = False
    assert await p.api_keys.flush_last_used(batch=2) == 5
    assert p.store.last_used == {k: (NOW, "198.51.100.4") for k, _, _ in ids}
    assert await p.api_keys.flush_last_used() == 0


async def test_revoke_every_key_of_a_user(p: Parts) -> None:
    keys = [await p.api_keys.issue_api_key(5, 6, f"k{i}", False) for i in range(3)]
    _, other_user, _ = await p.api_keys.issue_api_key(5, 8, "other", False)
    keep_id, keep, _ = keys[2]
    p.audit.events.clear()
    revoked = await p.api_keys.revoke_user_api_keys(5, 6, keep_id, "regenerated")
    assert revoked == sorted(k for k, _, _ in keys[:2])
    for _, key, _ in keys[:2]:
        with pytest.raises(ApiKeyRevoked):
            await p.api_keys.verify_api_key(key)
    await p.api_keys.verify_api_key(keep)
    await p.api_keys.verify_api_key(other_user)
    assert p.notices.sent == [KeyNotice(API_KEYS_CHANGED, 5, tuple(revoked), "revoked")]
    done = [e for e in p.audit.events if e.action == "keys.api_key.revoked"]
    assert sorted(e.resource.id for e in done) == revoked
    assert all(e.details["reason"] == "regenerated" and e.actor.account_id == 5 for e in done)
    # Idempotent: nothing left to revoke, nothing published.
    assert await p.api_keys.revoke_user_api_keys(5, 6, keep_id, "") == []
    assert len(p.notices.sent) == 1
    for bad in ((0, 6, "", ""), (5, 0, "", ""), (5, 6, "not a key id", ""), (5, 6, "", "Free Text!")):
        with pytest.raises(RequestInvalid):
            await p.api_keys.revoke_user_api_keys(*bad)


# -- customer API keys -----------------------------------------------------------------------------------


async def test_create_is_audited_first_and_holds_its_settings(p: Parts) -> None:
    limits = check_send_limits(30, 500, ["AU"])
    record, key = await create(p, scopes=["sms.send", "sms.read"], allowed_cidrs=["10.0.0.0/8"], send_limits=limits)
    assert key.startswith("ss_live_") and parse_api_key(key).key_id == record.key_id  # type: ignore[union-attr]
    assert (record.scopes, record.allowed_cidrs, record.send_limits) == (("sms.read", "sms.send"), ("10.0.0.0/8",),
                                                                         limits)
    assert record.expire_time == NOW + RULES.default_lifetime
    verified = await p.api_keys.verify_api_key(key, "10.9.9.9")
    assert verified.send_limits == limits and verified.scopes == ("sms.read", "sms.send")
    (ev,) = p.audit.strict
    assert ev.action == "keys.api_key.created" and ev.details["scopes"] == "sms.read,sms.send"
    assert ev.details["send_limits"] == "30/min,500/day,AU" and key not in str(ev)
    p.audit.down = True
    with pytest.raises(AuditUnavailable):
        await create(p)
    assert len(p.store.api_keys) == 1  # fail closed: no evidence, no key


async def test_a_key_cannot_mint_a_stronger_key(p: Parts) -> None:
    parent, _ = await create(p, scopes=["sms.send", "api_keys.write"], expire_time=NOW + timedelta(days=3),
                              send_limits=check_send_limits(10, 0, []))
    via_key = Caller(5, 6, frozenset({"sms.send", "api_keys.write"}), api_key_id=parent.key_id)
    child, _ = await create(p, via_key, send_limits=check_send_limits(5, 0, []))
    assert child.created_by == parent.key_id and child.expire_time == parent.expire_time
    for kw in ({"scopes": ["sms.read"]}, {"scopes": ["*"]}, {"expire_time": NOW + timedelta(days=4)},
               {"send_limits": check_send_limits(20, 0, [])}):
        with pytest.raises((ScopeNotHeld, ExceedsCallingKey)):
            await create(p, via_key, **({"send_limits": check_send_limits(5, 0, [])} | kw))
    await p.api_keys.revoke_api_key(ALICE, parent.key_id)
    with pytest.raises(ApiKeyInactive):
        await create(p, via_key, send_limits=check_send_limits(5, 0, []))


async def test_send_limits_belong_to_the_lineage(p: Parts) -> None:
    """Rolling a limited key, or minting a key with it, never gives a fresh limits bucket (issue 12)."""
    limited, _ = await create(p, scopes=["sms.send", "api_keys.write"], send_limits=check_send_limits(10, 100, []))
    assert limited.limits_root == "" and limited.limits_bucket == limited.key_id
    via_key = Caller(5, 6, frozenset({"sms.send", "api_keys.write"}), api_key_id=limited.key_id)
    child, child_key = await create(p, via_key)  # asks for no limits: takes its creator's
    assert child.send_limits == limited.send_limits and child.limits_root == limited.key_id
    assert (await p.api_keys.verify_api_key(child_key)).limits_bucket == limited.key_id
    grandchild, _ = await create(p, Caller(5, 6, via_key.permissions, api_key_id=child.key_id),
                                  send_limits=check_send_limits(3, 0, []))
    assert grandchild.limits_root == limited.key_id and grandchild.send_limits.per_minute == 3
    rolled, _, _ = await p.api_keys.roll_api_key(via_key, limited.key_id, 60, None)
    assert rolled.limits_root == limited.key_id
    again, again_key, _ = await p.api_keys.roll_api_key(ALICE, rolled.key_id, 0, None)
    assert again.limits_root == limited.key_id
    assert (await p.api_keys.verify_api_key(again_key)).limits_bucket == limited.key_id
    ev = p.audit.strict[-1]
    assert ev.action == "keys.api_key.rolled" and ev.details["limits_key_id"] == limited.key_id
    # A session's key, and one minted with an unlimited key, start their own lineage.
    free, _ = await create(p, scopes=["sms.send", "api_keys.write"])
    fresh, fresh_key = await create(p, Caller(5, 6, via_key.permissions, api_key_id=free.key_id))
    assert fresh.limits_root == "" and (await p.api_keys.verify_api_key(fresh_key)).limits_bucket == fresh.key_id


async def test_sender_limits_ride_the_lineage_and_the_audit_trail(p: Parts) -> None:
    """A rolled key keeps its sender limit, a key minted with it stays within it, and the audit details name the
    limit with numbers only counted (issue 21)."""
    limited, key = await create(p, scopes=["sms.send", "api_keys.write"],
                                send_limits=check_send_limits(0, 0, [], ["+61411111111", "Brand"]))
    made = p.audit.strict[-1]
    assert made.details["allowed_senders"] == "Brand,1 number" and "61411111111" not in str(made)
    stored = p.store.api_keys[limited.key_id]  # the number sealed under the account's key, the tag in clear
    assert stored.send_limits.senders == ("Brand",) and stored.sealed_numbers and b"614111" not in stored.sealed_numbers
    assert (await p.api_keys.verify_api_key(key)).send_limits.senders == ("+61411111111", "Brand")
    rolled, rolled_key, _ = await p.api_keys.roll_api_key(ALICE, limited.key_id, 0, None)
    assert rolled.send_limits.senders == limited.send_limits.senders
    assert (await p.api_keys.verify_api_key(rolled_key)).send_limits.senders == ("+61411111111", "Brand")
    assert p.audit.strict[-1].details["allowed_senders"] == "Brand,1 number"
    via_key = Caller(5, 6, frozenset({"sms.send", "api_keys.write"}), api_key_id=rolled.key_id)
    assert (await create(p, via_key))[0].send_limits.senders == ("+61411111111", "Brand")
    with pytest.raises(ExceedsCallingKey):
        await create(p, via_key, send_limits=check_send_limits(0, 0, [], ["Brand", "Other"]))


async def test_owners_see_only_their_own_keys(p: Parts) -> None:
    made = []
    for i in range(5):
        made.append((await create(p, name=f"k{i}"))[0])
        p.clock.advance(seconds=1)
    bob = Caller(5, 7, ALICE.permissions)
    mallory = Caller(9, 6, ALICE.permissions)
    bobs, _ = await create(p, bob)
    page, token = await p.api_keys.list_api_keys(ALICE, 2, "", False)
    seen = [r.key_id for r in page]
    while token:
        page, token = await p.api_keys.list_api_keys(ALICE, 2, token, False)
        seen += [r.key_id for r in page]
    assert seen == [r.key_id for r in reversed(made)]
    await p.api_keys.revoke_api_key(ALICE, made[0].key_id)
    assert made[0].key_id not in [r.key_id for r in (await p.api_keys.list_api_keys(ALICE, 100, "", False))[0]]
    assert made[0].key_id in [r.key_id for r in (await p.api_keys.list_api_keys(ALICE, 100, "", True))[0]]
    for caller, key_id in ((bob, made[1].key_id), (mallory, made[1].key_id), (ALICE, bobs.key_id), (ALICE, "x")):
        with pytest.raises(ApiKeyNotFound):
            await p.api_keys.get_api_key(caller, key_id)
        with pytest.raises(ApiKeyNotFound):
            await p.api_keys.revoke_api_key(caller, key_id)


async def test_revoke_publishes_and_is_idempotent(p: Parts) -> None:
    record, key = await create(p)
    revoked = await p.api_keys.revoke_api_key(ALICE, record.key_id)
    assert revoked.revoke_time == NOW and revoked.state(NOW) == "revoked"
    assert p.notices.sent == [KeyNotice(API_KEYS_CHANGED, 5, (record.key_id,), "revoked")]
    assert "keys.api_key.revoked" in p.audit.actions()
    await p.api_keys.revoke_api_key(ALICE, record.key_id)
    assert len(p.notices.sent) == 1
    with pytest.raises(ApiKeyRevoked):
        await p.api_keys.verify_api_key(key)


@pytest.mark.parametrize("overlap", [0, 1, 3600])
async def test_roll_overlap_is_honoured_to_the_second(p: Parts, overlap: int) -> None:
    old, old_key = await create(p, allowed_cidrs=["10.0.0.0/8"], send_limits=check_send_limits(5, 0, ["NZ"]))
    p.clock.advance(hours=1)
    rolled_at = p.clock.now
    new, new_key, previous = await p.api_keys.roll_api_key(ALICE, old.key_id, overlap, None)
    assert previous.expire_time == rolled_at + timedelta(seconds=overlap) and previous.rolled_to == new.key_id
    assert (new.rolled_from, new.scopes, new.allowed_cidrs, new.send_limits, new.name) == (
        old.key_id, old.scopes, old.allowed_cidrs, old.send_limits, old.name)
    assert new.expire_time == rolled_at + RULES.default_lifetime  # the old key's lifetime again, from now
    assert (await p.api_keys.verify_api_key(new_key, "10.0.0.1")).key_id == new.key_id  # works at once
    if overlap:
        p.clock.now = rolled_at + timedelta(seconds=overlap) - timedelta(microseconds=1)
        assert (await p.api_keys.verify_api_key(old_key, "10.0.0.1")).valid_for_seconds == pytest.approx(1e-6)
    p.clock.now = rolled_at + timedelta(seconds=overlap)
    with pytest.raises(ApiKeyExpired):
        await p.api_keys.verify_api_key(old_key, "10.0.0.1")
    assert (await p.api_keys.verify_api_key(new_key, "10.0.0.1")).key_id == new.key_id
    assert KeyNotice(API_KEYS_CHANGED, 5, (old.key_id,), "rolled") in p.notices.sent
    (ev,) = [e for e in p.audit.strict if e.action == "keys.api_key.rolled"]
    assert ev.resource.id == new.key_id and ev.details["rolled_from"] == old.key_id
    assert new_key not in str(ev) and old_key not in str(ev)


async def test_roll_refusals(p: Parts) -> None:
    old, _ = await create(p)
    await p.api_keys.roll_api_key(ALICE, old.key_id, 60, None)
    with pytest.raises(ApiKeyAlreadyRolled):
        await p.api_keys.roll_api_key(ALICE, old.key_id, 60, None)
    gone, _ = await create(p)
    await p.api_keys.revoke_api_key(ALICE, gone.key_id)
    with pytest.raises(ApiKeyInactive):
        await p.api_keys.roll_api_key(ALICE, gone.key_id, 0, None)
    with pytest.raises(RequestInvalid):
        await p.api_keys.roll_api_key(ALICE, (await create(p))[0].key_id, 86401, None)


async def test_leak_report_revokes_only_real_live_keys(p: Parts) -> None:
    live, live_key = await create(p)
    dead, dead_key = await create(p)
    await p.api_keys.revoke_api_key(ALICE, dead.key_id)
    lp = parse_api_key(live_key)
    assert lp is not None
    forged = ApiKeyParts(False, lp.key_id, "A" * 22).format()  # right id and checksum, wrong secret
    p.notices.sent.clear()
    report = await p.api_keys.report_leaked_api_keys(
        [live_key, live_key, dead_key, forged, "ss_live_nonsense", new_api_key(False).format()],
        "https://paste.example/abc",
    )
    assert (report.revoked, report.inactive, report.not_keys) == ([live.key_id], [dead.key_id], 3)
    with pytest.raises(ApiKeyRevoked):
        await p.api_keys.verify_api_key(live_key)
    assert p.notices.sent == [KeyNotice(API_KEYS_CHANGED, 5, (live.key_id,), "leaked")]
    (ev,) = [e for e in p.audit.events if e.action == "keys.api_key.leaked"]
    assert ev.details["source"] == "https://paste.example/abc" and live_key not in str(ev)
    with pytest.raises(BatchTooLarge):
        await p.api_keys.report_leaked_api_keys(["x"] * 1001, "")
