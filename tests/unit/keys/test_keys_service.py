"""Keys use cases against in-memory fakes: API-key lifecycle, audit ordering, no-oracle verification, key rings
(rotation, retirement, destruction with receipts), rewrap, root-key rotation, caching and coalescing."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest

from sendsafe.audit.v1 import event_pb2
from services.keys.domain.api_key_format import ApiKeyParts, new_api_key, parse_api_key, random_base62
from services.keys.domain.api_keys import ApiKeyRecord, Caller, KeyRules
from services.keys.domain.envelope import kek_aad, parse_blob
from services.keys.domain.errors import (
    AccountKeysNotFound,
    AddressNotAllowed,
    ApiKeyAlreadyRolled,
    ApiKeyExpired,
    ApiKeyInactive,
    ApiKeyNotFound,
    ApiKeyRevoked,
    BatchTooLarge,
    ExceedsCallingKey,
    KeyPolicyInvalid,
    KeysDestroyed,
    KeysPendingDestruction,
    KeyVersionRetired,
    NotPendingDestruction,
    PlaintextTooLarge,
    RequestInvalid,
    ScopeNotHeld,
)
from services.keys.domain.key_rings import RingState
from services.keys.domain.receipts import verify_receipt
from services.keys.domain.restrictions import NO_LIMITS, check_send_limits
from services.keys.domain.root_key import LocalRootKey, RootKeyProvider
from services.keys.service import Service
from svckit.audit import AuditUnavailable
from svckit.config import ConfigError
from svckit.errors import DomainError, PermissionDenied, Unauthenticated
from svckit.keyevents import ACCOUNT_KEYS_CHANGED, API_KEYS_CHANGED, KeyNotice
from tests.unit.keys.fakes import FakeAudit, FakeLastUsed, FakeNotices, FakeStore

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ROOT = LocalRootKey({"r1": bytes(range(32))}, "r1")
RULES = KeyRules(
    declared_permissions=frozenset({"sms.send", "sms.read", "api_keys.read", "api_keys.write", "audit.read"}),
    max_lifetime=timedelta(days=366),
    default_lifetime=timedelta(days=90),
)
ALICE = Caller(5, 6, frozenset({"sms.send", "sms.read", "api_keys.read", "api_keys.write"}))


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


@dataclasses.dataclass
class Parts:
    service: Service
    store: FakeStore
    last_used: FakeLastUsed
    audit: FakeAudit
    notices: FakeNotices
    clock: Clock

    def again(self, root: RootKeyProvider = ROOT) -> Service:
        """Another replica (or a restarted process): same store, empty caches."""
        return _service(self.store, self.last_used, self.audit, self.notices, self.clock, root)


def _service(store: FakeStore, last_used: FakeLastUsed, audit: FakeAudit, notices: FakeNotices, clock: Clock,
             root: RootKeyProvider = ROOT, **kw: object) -> Service:
    return Service(store, last_used, root, audit, rules=RULES, now=clock, notices=notices,
                   min_pending_window=timedelta(days=7), **kw)  # type: ignore[arg-type]


@pytest.fixture
def p() -> Parts:
    store, last_used, audit, notices, clock = FakeStore(), FakeLastUsed(), FakeAudit(), FakeNotices(), Clock()
    return Parts(_service(store, last_used, audit, notices, clock), store, last_used, audit, notices, clock)


async def _create(p: Parts, caller: Caller = ALICE, **kw: object) -> tuple[ApiKeyRecord, str]:
    args: dict[str, object] = {"name": "ci", "scopes": ["sms.send"], "expire_time": None, "allowed_cidrs": [],
                               "send_limits": NO_LIMITS}
    args.update(kw)
    return await p.service.create_api_key(caller, **args)  # type: ignore[arg-type]


# -- API keys issued for other services --------------------------------------------------------------------


async def test_issue_then_verify(p: Parts) -> None:
    key_id, api_key, expires = await p.service.issue_api_key(5, 6, "ci", False)
    assert api_key.startswith("ss_live_") and key_id in api_key
    assert expires == NOW + RULES.max_lifetime  # even internally issued keys expire
    stored = p.store.api_keys[key_id]
    assert stored.account_id == 5 and stored.user_id == 6 and stored.scopes == ("*",)
    assert api_key not in repr(stored) and stored.secret_hmac.hex() not in repr(stored)
    verified = await p.service.verify_api_key(api_key, "203.0.113.9")
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
        await p.service.issue_api_key(5, 6, "ci", True)
    assert p.store.api_keys == {}
    # A superseding failure event says the (possibly still delivered) success event did not happen.
    (failed,) = p.audit.events
    assert (failed.action, failed.outcome, failed.error_reason) == (
        "keys.api_key.issued", event_pb2.OUTCOME_FAILURE, "AUDIT_UNAVAILABLE",
    )
    assert failed.actor.account_id == 5 and failed.resource.id and failed.details["supersedes_event_id"]


async def test_issue_rejects_bad_requests(p: Parts) -> None:
    with pytest.raises(RequestInvalid):
        await p.service.issue_api_key(0, 6, "ci", False)
    assert p.store.calls == [] and p.audit.events == []


async def test_verify_failures_before_and_after_the_secret_is_proven(p: Parts) -> None:
    _, good, _ = await p.service.issue_api_key(5, 6, "ci", False)
    _, revoked, _ = await p.service.issue_api_key(5, 6, "old", False)
    _, expired, _ = await p.service.issue_api_key(5, 6, "short", False)
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
            await p.service.verify_api_key(candidate)
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
    record, key = await _create(p, allowed_cidrs=["203.0.113.0/24", "2001:db8::/32"])
    assert (await p.service.verify_api_key(key, "203.0.113.200")).key_id == record.key_id
    assert (await p.service.verify_api_key(key, "2001:db8::1")).key_id == record.key_id
    for outside in ("198.51.100.7", ""):
        p.audit.events.clear()
        with pytest.raises(AddressNotAllowed) as info:
            await p.service.verify_api_key(key, outside)
        assert (info.value.code, info.value.reason) == ("PERMISSION_DENIED", "API_KEY_ADDRESS_NOT_ALLOWED")
        (ev,) = p.audit.events
        assert ev.outcome == event_pb2.OUTCOME_DENIED and ev.details["failure"] == "address_not_allowed"
        assert ev.actor.account_id == 5 and ev.details.get("client_address", "") == outside


async def test_verify_survives_a_broken_redis(p: Parts) -> None:
    _, key, _ = await p.service.issue_api_key(5, 6, "ci", False)
    p.last_used.broken = True
    assert (await p.service.verify_api_key(key)).account_id == 5


async def test_last_used_write_back(p: Parts) -> None:
    ids = [(await p.service.issue_api_key(5, 6, f"k{i}", False)) for i in range(5)]
    for _, key, _ in ids:
        await p.service.verify_api_key(key, "198.51.100.4")
    p.store.fail_last_used = True
    with pytest.raises(ConnectionError):
        await p.service.flush_last_used(batch=2)
    assert len(p.last_used.pending) == 5  # given back for the next round
    p.store.fail_last_used = False
    assert await p.service.flush_last_used(batch=2) == 5
    assert p.store.last_used == {k: (NOW, "198.51.100.4") for k, _, _ in ids}
    assert await p.service.flush_last_used() == 0


async def test_revoke_every_key_of_a_user(p: Parts) -> None:
    keys = [await p.service.issue_api_key(5, 6, f"k{i}", False) for i in range(3)]
    _, other_user, _ = await p.service.issue_api_key(5, 8, "other", False)
    keep_id, keep, _ = keys[2]
    p.audit.events.clear()
    revoked = await p.service.revoke_user_api_keys(5, 6, keep_id, "regenerated")
    assert revoked == sorted(k for k, _, _ in keys[:2])
    for _, key, _ in keys[:2]:
        with pytest.raises(ApiKeyRevoked):
            await p.service.verify_api_key(key)
    await p.service.verify_api_key(keep)
    await p.service.verify_api_key(other_user)
    assert p.notices.sent == [KeyNotice(API_KEYS_CHANGED, 5, tuple(revoked), "revoked")]
    done = [e for e in p.audit.events if e.action == "keys.api_key.revoked"]
    assert sorted(e.resource.id for e in done) == revoked
    assert all(e.details["reason"] == "regenerated" and e.actor.account_id == 5 for e in done)
    # Idempotent: nothing left to revoke, nothing published.
    assert await p.service.revoke_user_api_keys(5, 6, keep_id, "") == []
    assert len(p.notices.sent) == 1
    for bad in ((0, 6, "", ""), (5, 0, "", ""), (5, 6, "not a key id", ""), (5, 6, "", "Free Text!")):
        with pytest.raises(RequestInvalid):
            await p.service.revoke_user_api_keys(*bad)


# -- customer API keys -----------------------------------------------------------------------------------


async def test_create_is_audited_first_and_holds_its_settings(p: Parts) -> None:
    limits = check_send_limits(30, 500, ["AU"])
    record, key = await _create(p, scopes=["sms.send", "sms.read"], allowed_cidrs=["10.0.0.0/8"], send_limits=limits)
    assert key.startswith("ss_live_") and parse_api_key(key).key_id == record.key_id  # type: ignore[union-attr]
    assert (record.scopes, record.allowed_cidrs, record.send_limits) == (("sms.read", "sms.send"), ("10.0.0.0/8",),
                                                                         limits)
    assert record.expire_time == NOW + RULES.default_lifetime
    verified = await p.service.verify_api_key(key, "10.9.9.9")
    assert verified.send_limits == limits and verified.scopes == ("sms.read", "sms.send")
    (ev,) = p.audit.strict
    assert ev.action == "keys.api_key.created" and ev.details["scopes"] == "sms.read,sms.send"
    assert ev.details["send_limits"] == "30/min,500/day,AU" and key not in str(ev)
    p.audit.down = True
    with pytest.raises(AuditUnavailable):
        await _create(p)
    assert len(p.store.api_keys) == 1  # fail closed: no evidence, no key


async def test_a_key_cannot_mint_a_stronger_key(p: Parts) -> None:
    parent, _ = await _create(p, scopes=["sms.send", "api_keys.write"], expire_time=NOW + timedelta(days=3),
                              send_limits=check_send_limits(10, 0, []))
    via_key = Caller(5, 6, frozenset({"sms.send", "api_keys.write"}), api_key_id=parent.key_id)
    child, _ = await _create(p, via_key, send_limits=check_send_limits(5, 0, []))
    assert child.created_by == parent.key_id and child.expire_time == parent.expire_time
    for kw in ({"scopes": ["sms.read"]}, {"scopes": ["*"]}, {"expire_time": NOW + timedelta(days=4)},
               {"send_limits": check_send_limits(20, 0, [])}):
        with pytest.raises((ScopeNotHeld, ExceedsCallingKey)):
            await _create(p, via_key, **({"send_limits": check_send_limits(5, 0, [])} | kw))
    await p.service.revoke_api_key(ALICE, parent.key_id)
    with pytest.raises(ApiKeyInactive):
        await _create(p, via_key, send_limits=check_send_limits(5, 0, []))


async def test_send_limits_belong_to_the_lineage(p: Parts) -> None:
    """Rolling a limited key, or minting a key with it, never gives a fresh limits bucket (issue 12)."""
    limited, _ = await _create(p, scopes=["sms.send", "api_keys.write"], send_limits=check_send_limits(10, 100, []))
    assert limited.limits_root == "" and limited.limits_bucket == limited.key_id
    via_key = Caller(5, 6, frozenset({"sms.send", "api_keys.write"}), api_key_id=limited.key_id)
    child, child_key = await _create(p, via_key)  # asks for no limits: takes its creator's
    assert child.send_limits == limited.send_limits and child.limits_root == limited.key_id
    assert (await p.service.verify_api_key(child_key)).limits_bucket == limited.key_id
    grandchild, _ = await _create(p, Caller(5, 6, via_key.permissions, api_key_id=child.key_id),
                                  send_limits=check_send_limits(3, 0, []))
    assert grandchild.limits_root == limited.key_id and grandchild.send_limits.per_minute == 3
    rolled, _, _ = await p.service.roll_api_key(via_key, limited.key_id, 60, None)
    assert rolled.limits_root == limited.key_id
    again, again_key, _ = await p.service.roll_api_key(ALICE, rolled.key_id, 0, None)
    assert again.limits_root == limited.key_id
    assert (await p.service.verify_api_key(again_key)).limits_bucket == limited.key_id
    ev = p.audit.strict[-1]
    assert ev.action == "keys.api_key.rolled" and ev.details["limits_key_id"] == limited.key_id
    # A session's key, and one minted with an unlimited key, start their own lineage.
    free, _ = await _create(p, scopes=["sms.send", "api_keys.write"])
    fresh, fresh_key = await _create(p, Caller(5, 6, via_key.permissions, api_key_id=free.key_id))
    assert fresh.limits_root == "" and (await p.service.verify_api_key(fresh_key)).limits_bucket == fresh.key_id


async def test_owners_see_only_their_own_keys(p: Parts) -> None:
    made = []
    for i in range(5):
        made.append((await _create(p, name=f"k{i}"))[0])
        p.clock.advance(seconds=1)
    bob = Caller(5, 7, ALICE.permissions)
    mallory = Caller(9, 6, ALICE.permissions)
    bobs, _ = await _create(p, bob)
    page, token = await p.service.list_api_keys(ALICE, 2, "", False)
    seen = [r.key_id for r in page]
    while token:
        page, token = await p.service.list_api_keys(ALICE, 2, token, False)
        seen += [r.key_id for r in page]
    assert seen == [r.key_id for r in reversed(made)]
    await p.service.revoke_api_key(ALICE, made[0].key_id)
    assert made[0].key_id not in [r.key_id for r in (await p.service.list_api_keys(ALICE, 100, "", False))[0]]
    assert made[0].key_id in [r.key_id for r in (await p.service.list_api_keys(ALICE, 100, "", True))[0]]
    for caller, key_id in ((bob, made[1].key_id), (mallory, made[1].key_id), (ALICE, bobs.key_id), (ALICE, "x")):
        with pytest.raises(ApiKeyNotFound):
            await p.service.get_api_key(caller, key_id)
        with pytest.raises(ApiKeyNotFound):
            await p.service.revoke_api_key(caller, key_id)


async def test_revoke_publishes_and_is_idempotent(p: Parts) -> None:
    record, key = await _create(p)
    revoked = await p.service.revoke_api_key(ALICE, record.key_id)
    assert revoked.revoke_time == NOW and revoked.state(NOW) == "revoked"
    assert p.notices.sent == [KeyNotice(API_KEYS_CHANGED, 5, (record.key_id,), "revoked")]
    assert "keys.api_key.revoked" in p.audit.actions()
    await p.service.revoke_api_key(ALICE, record.key_id)
    assert len(p.notices.sent) == 1
    with pytest.raises(ApiKeyRevoked):
        await p.service.verify_api_key(key)


@pytest.mark.parametrize("overlap", [0, 1, 3600])
async def test_roll_overlap_is_honoured_to_the_second(p: Parts, overlap: int) -> None:
    old, old_key = await _create(p, allowed_cidrs=["10.0.0.0/8"], send_limits=check_send_limits(5, 0, ["NZ"]))
    p.clock.advance(hours=1)
    rolled_at = p.clock.now
    new, new_key, previous = await p.service.roll_api_key(ALICE, old.key_id, overlap, None)
    assert previous.expire_time == rolled_at + timedelta(seconds=overlap) and previous.rolled_to == new.key_id
    assert (new.rolled_from, new.scopes, new.allowed_cidrs, new.send_limits, new.name) == (
        old.key_id, old.scopes, old.allowed_cidrs, old.send_limits, old.name)
    assert new.expire_time == rolled_at + RULES.default_lifetime  # the old key's lifetime again, from now
    assert (await p.service.verify_api_key(new_key, "10.0.0.1")).key_id == new.key_id  # works at once
    if overlap:
        p.clock.now = rolled_at + timedelta(seconds=overlap) - timedelta(microseconds=1)
        assert (await p.service.verify_api_key(old_key, "10.0.0.1")).valid_for_seconds == pytest.approx(1e-6)
    p.clock.now = rolled_at + timedelta(seconds=overlap)
    with pytest.raises(ApiKeyExpired):
        await p.service.verify_api_key(old_key, "10.0.0.1")
    assert (await p.service.verify_api_key(new_key, "10.0.0.1")).key_id == new.key_id
    assert KeyNotice(API_KEYS_CHANGED, 5, (old.key_id,), "rolled") in p.notices.sent
    (ev,) = [e for e in p.audit.strict if e.action == "keys.api_key.rolled"]
    assert ev.resource.id == new.key_id and ev.details["rolled_from"] == old.key_id
    assert new_key not in str(ev) and old_key not in str(ev)


async def test_roll_refusals(p: Parts) -> None:
    old, _ = await _create(p)
    await p.service.roll_api_key(ALICE, old.key_id, 60, None)
    with pytest.raises(ApiKeyAlreadyRolled):
        await p.service.roll_api_key(ALICE, old.key_id, 60, None)
    gone, _ = await _create(p)
    await p.service.revoke_api_key(ALICE, gone.key_id)
    with pytest.raises(ApiKeyInactive):
        await p.service.roll_api_key(ALICE, gone.key_id, 0, None)
    with pytest.raises(RequestInvalid):
        await p.service.roll_api_key(ALICE, (await _create(p))[0].key_id, 86401, None)


async def test_leak_report_revokes_only_real_live_keys(p: Parts) -> None:
    live, live_key = await _create(p)
    dead, dead_key = await _create(p)
    await p.service.revoke_api_key(ALICE, dead.key_id)
    lp = parse_api_key(live_key)
    assert lp is not None
    forged = ApiKeyParts(False, lp.key_id, "A" * 22).format()  # right id and checksum, wrong secret
    p.notices.sent.clear()
    report = await p.service.report_leaked_api_keys(
        [live_key, live_key, dead_key, forged, "ss_live_nonsense", new_api_key(False).format()],
        "https://paste.example/abc",
    )
    assert (report.revoked, report.inactive, report.not_keys) == ([live.key_id], [dead.key_id], 3)
    with pytest.raises(ApiKeyRevoked):
        await p.service.verify_api_key(live_key)
    assert p.notices.sent == [KeyNotice(API_KEYS_CHANGED, 5, (live.key_id,), "leaked")]
    (ev,) = [e for e in p.audit.events if e.action == "keys.api_key.leaked"]
    assert ev.details["source"] == "https://paste.example/abc" and live_key not in str(ev)
    with pytest.raises(BatchTooLarge):
        await p.service.report_leaked_api_keys(["x"] * 1001, "")


# -- data keys and encryption -----------------------------------------------------------------------------------


async def test_data_key_round_trip_creates_the_ring_once(p: Parts) -> None:
    plain, wrapped, version = await p.service.generate_data_key(9)
    assert version == 1 and len(plain) == 32 and plain not in wrapped
    assert await p.service.decrypt_data_key(9, wrapped) == (plain, 1)
    for _ in range(20):
        await p.service.generate_data_key(9)
    assert p.store.calls.count("create_first_kek") == 1
    assert p.store.calls.count("ring") == 1  # then served from the cache
    assert p.audit.actions() == ["keys.kek.created"]
    stored = p.store.keks[(9, 1)]
    assert stored.wrapped is not None
    assert await ROOT.unwrap(stored.wrapped, kek_aad(9, 1)) not in stored.wrapped.blob
    wrapped_only, v = await p.service.generate_data_key_without_plaintext(9, {"k": "v"})
    assert v == 1 and len((await p.service.decrypt_data_key(9, wrapped_only, {"k": "v"}))[0]) == 32


async def test_concurrent_first_use_coalesces(p: Parts) -> None:
    p.store.gate = asyncio.Event()
    tasks = [asyncio.create_task(p.service.generate_data_key(11)) for _ in range(30)]
    await asyncio.sleep(0.01)
    p.store.gate.set()
    results = await asyncio.gather(*tasks)
    assert p.store.calls.count("ring") == 1
    assert p.store.calls.count("create_first_kek") == 1
    for plain, wrapped, _ in results:
        assert (await p.service.decrypt_data_key(11, wrapped))[0] == plain


async def test_fresh_process_decrypts_through_the_store(p: Parts) -> None:
    plain, wrapped, _ = await p.service.generate_data_key(9)
    p.store.calls.clear()
    assert (await p.again().decrypt_data_key(9, wrapped))[0] == plain
    assert p.store.calls == ["ring", "kek_version"]


async def test_decrypt_failures_are_clear(p: Parts) -> None:
    _, wrapped, _ = await p.service.generate_data_key(9, {"purpose": "body"})
    await p.service.generate_data_key(10)
    p.audit.events.clear()
    cases = [
        (10, wrapped, {"purpose": "body"}, "KEY_ACCOUNT_MISMATCH"),  # another account
        (12, wrapped, {"purpose": "body"}, "KEY_ACCOUNT_MISMATCH"),
        (9, wrapped, {"purpose": "Body"}, "DECRYPT_FAILED"),  # wrong associated data
        (9, wrapped, {}, "DECRYPT_FAILED"),
        (9, wrapped[:-1] + bytes([wrapped[-1] ^ 1]), {"purpose": "body"}, "DECRYPT_FAILED"),  # tampered
        (9, wrapped[:1] + (7).to_bytes(4, "big") + wrapped[5:], {"purpose": "body"}, "KEY_VERSION_UNKNOWN"),
        (9, b"garbage", {}, "DECRYPT_FAILED"),
    ]
    for account, blob, ctx, reason in cases:
        with pytest.raises(DomainError) as info:
            await p.service.decrypt_data_key(account, blob, ctx)
        assert info.value.reason == reason, (account, ctx)
    with pytest.raises(RequestInvalid):
        await p.service.decrypt_data_key(0, wrapped)
    assert [e.error_reason for e in p.audit.events] == [c[3] for c in cases] + ["INVALID_ARGUMENT"]
    assert all(e.action == "keys.data_key.decrypt_failed" for e in p.audit.events)


async def test_encrypt_decrypt_with_context(p: Parts) -> None:
    ct, version = await p.service.encrypt(9, b"JBSWY3DPEHPK3PXP", {"purpose": "totp", "user": "6"})
    assert version == 1 and b"JBSWY3DPEHPK3PXP" not in ct
    assert await p.service.decrypt(9, ct, {"user": "6", "purpose": "totp"}) == (b"JBSWY3DPEHPK3PXP", 1)
    for account, ctx, reason in ((9, {"purpose": "totp"}, "DECRYPT_FAILED"), (10, {}, "KEY_ACCOUNT_MISMATCH")):
        with pytest.raises(DomainError) as info:
            await p.service.decrypt(account, ct, ctx)
        assert info.value.reason == reason
    with pytest.raises(PlaintextTooLarge):
        await p.service.encrypt(9, bytes(4097))


async def test_kek_that_does_not_unwrap_is_an_internal_error(p: Parts) -> None:
    _, wrapped, _ = await p.service.generate_data_key(9)
    with pytest.raises(RuntimeError) as info:
        await p.again(LocalRootKey({"r1": bytes(32)}, "r1")).decrypt_data_key(9, wrapped)
    assert "account 9" in str(info.value)


async def test_start_up_refuses_root_keys_that_do_not_open_the_stored_keks(p: Parts) -> None:
    await p.again().prepare()  # nothing stored yet: nothing to check
    await p.service.generate_data_key(9)
    await p.again().prepare()  # the root key that wrote them
    for wrong in (LocalRootKey({"r1": bytes(32)}, "r1"),  # same id, other material (another checkout)
                  LocalRootKey({"r2": bytes(range(32))}, "r2")):  # the writing id not configured at all
        with pytest.raises(ConfigError) as info:
            await p.again(wrong).prepare()
        assert "'r1'" in str(info.value) and "account 9" in str(info.value)
        assert bytes(range(32)).hex() not in str(info.value)
    # After a root-key rotation that kept the old id for unwrapping, start-up is fine.
    await p.again(LocalRootKey({"r1": bytes(range(32)), "r2": bytes(range(1, 33))}, "r2")).prepare()


async def test_kek_cache_expires() -> None:
    store = FakeStore()
    service = Service(store, FakeLastUsed(), ROOT, FakeAudit(), kek_cache_seconds=0.0)
    await service.generate_data_key(9)
    await service.generate_data_key(9)
    assert store.calls.count("ring") == 2


# -- rotation, retirement, rewrap ---------------------------------------------------------------------------------


async def test_rotation_keeps_old_data_readable_and_is_announced(p: Parts) -> None:
    plain1, wrapped1, _ = await p.service.generate_data_key(9)
    ct1, _ = await p.service.encrypt(9, b"secret", {"a": "b"})
    status = await p.service.rotate_account_key(9)
    assert (status.ring.current_version, [v.version for v in status.versions]) == (2, [1, 2])
    assert p.notices.sent[-1] == KeyNotice(ACCOUNT_KEYS_CHANGED, 9, (), "rotated")
    (ev,) = [e for e in p.audit.strict if e.action == "keys.account_key.rotated"]
    assert ev.details["version"] == "2" and ev.details["trigger"] == "manual"
    _, wrapped2, version = await p.service.generate_data_key(9)
    assert version == 2 and parse_blob(wrapped2).version == 2
    assert await p.service.decrypt_data_key(9, wrapped1) == (plain1, 1)
    assert await p.service.decrypt(9, ct1, {"a": "b"}) == (b"secret", 1)
    p.audit.down = True
    with pytest.raises(AuditUnavailable):
        await p.service.rotate_account_key(9)
    assert (await p.service.account_key_status(9)).ring.current_version == 2  # fail closed
    with pytest.raises(AccountKeysNotFound):
        await p.service.rotate_account_key(404)


async def test_rewrap_preserves_plaintext_and_retirement_then_bites(p: Parts) -> None:
    items = []
    plains = {}
    for i in range(3):
        plain, wrapped, _ = await p.service.generate_data_key(9, {"row": str(i)})
        plains[f"dk{i}"] = plain
        items.append((f"dk{i}", wrapped, {"row": str(i)}))
    ct, _ = await p.service.encrypt(9, b"small secret", {"row": "ct"})
    items.append(("ct", ct, {"row": "ct"}))
    items.append(("bad", items[0][1], {"row": "wrong"}))
    await p.service.rotate_account_key(9)
    results, current = await p.service.rewrap(9, items)
    assert current == 2
    by_ref = {r.reference: r for r in results}
    assert by_ref["bad"].error_reason == "DECRYPT_FAILED" and by_ref["bad"].blob == b""
    for ref, plain in plains.items():
        r = by_ref[ref]
        assert r.changed and r.version == 2 and plain not in r.blob
        assert await p.service.decrypt_data_key(9, r.blob, {"row": ref[2:]}) == (plain, 2)
    assert await p.service.decrypt(9, by_ref["ct"].blob, {"row": "ct"}) == (b"small secret", 2)
    # A second pass changes nothing (resumable: run it again after a crash).
    again, _ = await p.service.rewrap(9, [(ref, by_ref[ref].blob, {"row": ref[2:]}) for ref in plains])
    assert [r.changed for r in again] == [False] * 3
    # Retire version 1: old blobs no longer decrypt, rewrapped ones do.
    status = await p.service.set_account_key_policy(9, None, 2)
    assert status.ring.min_decryption_version == 2
    assert [status.ring.version_state(v.version, False) for v in status.versions] == ["retired", "primary"]
    assert p.notices.sent[-1] == KeyNotice(ACCOUNT_KEYS_CHANGED, 9, (), "retired")
    with pytest.raises(KeyVersionRetired) as info:
        await p.service.decrypt_data_key(9, items[0][1], {"row": "0"})
    assert "minimum decryption version is 2" in info.value.message
    with pytest.raises(KeyVersionRetired):
        await p.service.decrypt(9, ct, {"row": "ct"})
    assert await p.service.decrypt_data_key(9, by_ref["dk0"].blob, {"row": "0"}) == (plains["dk0"], 2)
    (retired,) = (await p.service.rewrap(9, [items[0]]))[0]
    assert retired.error_reason == "KEY_VERSION_RETIRED"
    with pytest.raises(KeyPolicyInvalid):
        await p.service.set_account_key_policy(9, None, 3)
    with pytest.raises(BatchTooLarge):
        await p.service.rewrap(9, [items[0]] * 1001)


async def test_other_replicas_forget_on_notice(p: Parts) -> None:
    other = p.again()
    _, wrapped, _ = await p.service.generate_data_key(9)
    await other.decrypt_data_key(9, wrapped)  # cached in the other replica now
    await p.service.rotate_account_key(9)
    await p.service.set_account_key_policy(9, None, 2)
    with pytest.raises(KeyVersionRetired):  # our own cache was cleared at once
        await p.service.decrypt_data_key(9, wrapped)
    assert (await other.decrypt_data_key(9, wrapped))[1] == 1  # theirs still holds the old ring…
    for notice in p.notices.sent:
        other.on_notice(notice)
    with pytest.raises(KeyVersionRetired):  # …until the notice arrives
        await other.decrypt_data_key(9, wrapped)


async def test_scheduled_rotation(p: Parts) -> None:
    await p.service.generate_data_key(9)
    await p.service.generate_data_key(10)
    await p.service.set_account_key_policy(10, 3600, None)
    p.clock.advance(minutes=59)
    assert (await p.service.run_maintenance()).rotated == 0
    p.clock.advance(minutes=1)
    assert (await p.service.run_maintenance()).rotated == 1  # only account 10 (the default is 90 days)
    assert (await p.service.account_key_status(10)).ring.current_version == 2
    p.clock.advance(days=90)
    assert (await p.service.run_maintenance()).rotated == 2
    rotated = [e for e in p.audit.events if e.action == "keys.account_key.rotated"]
    assert {e.details["trigger"] for e in rotated} == {"scheduled"}


# -- destruction -------------------------------------------------------------------------------------------------


async def test_destruction_pending_window_cancel_and_receipt(p: Parts) -> None:
    plain, wrapped, _ = await p.service.generate_data_key(9)
    ct, _ = await p.service.encrypt(9, b"x", {})
    await p.service.rotate_account_key(9)
    with pytest.raises(KeyPolicyInvalid):
        await p.service.schedule_destruction(9, 3600, "identity")  # shorter than the 7-day minimum
    status = await p.service.schedule_destruction(9, 7 * 86400, "identity")
    assert status.ring.state is RingState.PENDING_DESTRUCTION
    assert status.ring.destroy_time == NOW + timedelta(days=7)
    for attempt in (p.service.decrypt_data_key(9, wrapped), p.service.generate_data_key(9), p.service.encrypt(9, b"")):
        with pytest.raises(KeysPendingDestruction):
            await attempt
    await p.service.cancel_destruction(9)
    assert await p.service.decrypt_data_key(9, wrapped) == (plain, 1)  # cancelled: everything works again
    with pytest.raises(NotPendingDestruction):
        await p.service.cancel_destruction(9)
    await p.service.schedule_destruction(9, 7 * 86400, "identity")
    p.clock.advance(days=7, seconds=-1)
    assert (await p.service.run_maintenance()).destroyed == 0
    p.clock.advance(seconds=1)
    assert (await p.service.run_maintenance()).destroyed == 1
    assert p.notices.sent[-1] == KeyNotice(ACCOUNT_KEYS_CHANGED, 9, (), "destroyed")
    for attempt in (
        p.service.decrypt_data_key(9, wrapped), p.service.decrypt(9, ct, {}), p.service.generate_data_key(9),
        p.again().decrypt_data_key(9, wrapped),  # a fresh process: the material is gone from the store too
    ):
        with pytest.raises(KeysDestroyed) as info:
            await attempt
        assert "never be decrypted" in info.value.message
    assert all(k.wrapped is None for (a, _), k in p.store.keks.items() if a == 9)
    with pytest.raises(KeysDestroyed):
        await p.service.cancel_destruction(9)
    # The receipt: signed, in the audit log (strict), naming each destroyed version.
    (ev,) = [e for e in p.audit.strict if e.action == "keys.account_keys.destroyed"]
    assert ev.actor.account_id == 9
    receipt = json.loads(ev.details["receipt"])
    assert [v["version"] for v in receipt["destroyed_key_versions"]] == [1, 2]
    assert receipt["requested_by"] == "identity" and receipt["signing_key_id"] == ev.details["signing_key_id"]
    (key_id, public, _), = await p.service.list_receipt_signing_keys()
    assert key_id == ev.details["signing_key_id"] and base64.b64decode(ev.details["public_key"]) == public
    assert verify_receipt(public, ev.details["receipt"].encode(), base64.b64decode(ev.details["signature"]))


async def test_destruction_waits_for_its_receipt(p: Parts) -> None:
    await p.service.generate_data_key(9)
    await p.service.schedule_destruction(9, 7 * 86400, "ops")
    p.clock.advance(days=8)
    p.audit.down = True
    assert (await p.service.run_maintenance()).destroyed == 0  # no receipt, no destruction (retried later)
    assert p.store.keks[(9, 1)].wrapped is not None
    p.audit.down = False
    assert (await p.service.run_maintenance()).destroyed == 1


# -- root-key rotation ----------------------------------------------------------------------------------------------


async def test_root_key_rotation_rewraps_everything_and_rehashes_on_use(p: Parts) -> None:
    plains = {}
    for account in (9, 10, 11):
        plain, wrapped, _ = await p.service.generate_data_key(account)
        plains[account] = (plain, wrapped)
    await p.service.rotate_account_key(9)
    _, key, _ = await p.service.issue_api_key(5, 6, "ci", False)
    old_signers = await p.service.list_receipt_signing_keys()
    rotated = LocalRootKey({"r1": bytes(range(32)), "r2": bytes(range(1, 33))}, "r2")
    service = _service(p.store, p.last_used, p.audit, p.notices, p.clock, rotated, rewrap_batch=2)
    current, usage = await service.root_key_status()
    assert current == "r2" and {(u.root_key_id, u.wrapped_keys, u.api_key_hashes) for u in usage} == {
        ("r1", 4, 1), ("r2", 0, 0)}
    reports = [await service.run_maintenance(), await service.run_maintenance(), await service.run_maintenance()]
    assert [(r.rewrapped, r.remaining) for r in reports] == [(2, 2), (2, 0), (0, 0)]
    assert all(k.wrapped is not None and k.wrapped.key_id == "r2" for k in p.store.keks.values())
    # Nothing needs r1 for data any more: a process holding only r2 reads everything.
    r2_only = LocalRootKey({"r2": bytes(range(1, 33))}, "r2")
    only_new = _service(p.store, p.last_used, p.audit, p.notices, p.clock, r2_only)
    for account, (plain, wrapped) in plains.items():
        assert (await only_new.decrypt_data_key(account, wrapped))[0] == plain
    # API-key hashes move to the new pepper the first time each key is used.
    await service.verify_api_key(key)
    assert {r.pepper_id for r in p.store.api_keys.values()} == {"r2"}
    assert (await only_new.verify_api_key(key)).account_id == 5
    # Receipts are signed with a key of the new root; the old public key stays listed.
    new_signers = await service.list_receipt_signing_keys()
    assert {k for k, _, _ in old_signers} < {k for k, _, _ in new_signers}
