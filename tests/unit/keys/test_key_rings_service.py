"""Key-ring use cases against in-memory fakes: data keys, rotation, retirement, destruction with receipts, rewrap,
root-key rotation, caching and coalescing."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import timedelta

import pytest

from services.keys.adapters.root_key import LocalRootKey
from services.keys.domain.envelope import kek_aad, parse_blob
from services.keys.domain.errors import (
    AccountKeysNotFound,
    BatchTooLarge,
    KeyPolicyInvalid,
    KeysDestroyed,
    KeysPendingDestruction,
    KeyVersionRetired,
    NotPendingDestruction,
    PlaintextTooLarge,
    RequestInvalid,
)
from services.keys.domain.key_rings import AccountRing, RingState
from services.keys.domain.receipts import verify_receipt
from services.keys.service.key_rings import KeyRingService
from svckit.audit import AuditUnavailable
from svckit.config import ConfigError
from svckit.errors import DomainError
from svckit.keyevents import ACCOUNT_KEYS_CHANGED, KeyNotice
from tests.unit.keys.fakes import FakeAudit, FakeStore
from tests.unit.keys.harness import NOW, ROOT, Parts, services

# -- data keys and encryption -----------------------------------------------------------------------------------


async def test_data_key_round_trip_creates_the_ring_once(p: Parts) -> None:
    plain, wrapped, version = await p.rings.generate_data_key(9)
    assert version == 1 and len(plain) == 32 and plain not in wrapped
    assert await p.rings.decrypt_data_key(9, wrapped) == (plain, 1)
    for _ in range(20):
        await p.rings.generate_data_key(9)
    assert p.store.calls.count("create_first_kek") == 1
    assert p.store.calls.count("ring") == 1  # then served from the cache
    assert p.audit.actions() == ["keys.kek.created"]
    stored = p.store.keks[(9, 1)]
    assert stored.wrapped is not None
    assert await ROOT.unwrap(stored.wrapped, kek_aad(9, 1)) not in stored.wrapped.blob
    wrapped_only, v = await p.rings.generate_data_key_without_plaintext(9, {"k": "v"})
    assert v == 1 and len((await p.rings.decrypt_data_key(9, wrapped_only, {"k": "v"}))[0]) == 32


async def test_concurrent_first_use_coalesces(p: Parts) -> None:
    p.store.gate = asyncio.Event()
    tasks = [asyncio.create_task(p.rings.generate_data_key(11)) for _ in range(30)]
    await asyncio.sleep(0.01)
    p.store.gate.set()
    results = await asyncio.gather(*tasks)
    assert p.store.calls.count("ring") == 1
    assert p.store.calls.count("create_first_kek") == 1
    for plain, wrapped, _ in results:
        assert (await p.rings.decrypt_data_key(11, wrapped))[0] == plain


async def test_fresh_process_decrypts_through_the_store(p: Parts) -> None:
    plain, wrapped, _ = await p.rings.generate_data_key(9)
    p.store.calls.clear()
    assert (await p.again().rings.decrypt_data_key(9, wrapped))[0] == plain
    assert p.store.calls == ["ring", "kek_version"]


async def test_decrypt_failures_are_clear(p: Parts) -> None:
    _, wrapped, _ = await p.rings.generate_data_key(9, {"purpose": "body"})
    await p.rings.generate_data_key(10)
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
            await p.rings.decrypt_data_key(account, blob, ctx)
        assert info.value.reason == reason, (account, ctx)
    with pytest.raises(RequestInvalid):
        await p.rings.decrypt_data_key(0, wrapped)
    assert [e.error_reason for e in p.audit.events] == [c[3] for c in cases] + ["INVALID_ARGUMENT"]
    assert all(e.action == "keys.data_key.decrypt_failed" for e in p.audit.events)


async def test_encrypt_decrypt_with_context(p: Parts) -> None:
    ct, version = await p.rings.encrypt(9, b"JBSWY3DPEHPK3PXP", {"purpose": "totp", "user": "6"})
    assert version == 1 and b"JBSWY3DPEHPK3PXP" not in ct
    assert await p.rings.decrypt(9, ct, {"user": "6", "purpose": "totp"}) == (b"JBSWY3DPEHPK3PXP", 1)
    for account, ctx, reason in ((9, {"purpose": "totp"}, "DECRYPT_FAILED"), (10, {}, "KEY_ACCOUNT_MISMATCH")):
        with pytest.raises(DomainError) as info:
            await p.rings.decrypt(account, ct, ctx)
        assert info.value.reason == reason
    with pytest.raises(PlaintextTooLarge):
        await p.rings.encrypt(9, bytes(4097))


async def test_kek_that_does_not_unwrap_is_an_internal_error(p: Parts) -> None:
    _, wrapped, _ = await p.rings.generate_data_key(9)
    with pytest.raises(RuntimeError) as info:
        await p.again(LocalRootKey({"r1": bytes(32)}, "r1")).rings.decrypt_data_key(9, wrapped)
    assert "account 9" in str(info.value)


async def test_start_up_refuses_root_keys_that_do_not_open_the_stored_keks(p: Parts) -> None:
    await p.again().rings.prepare()  # nothing stored yet: nothing to check
    await p.rings.generate_data_key(9)
    await p.again().rings.prepare()  # the root key that wrote them
    for wrong in (LocalRootKey({"r1": bytes(32)}, "r1"),  # same id, other material (another checkout)
                  LocalRootKey({"r2": bytes(range(32))}, "r2")):  # the writing id not configured at all
        with pytest.raises(ConfigError) as info:
            await p.again(wrong).rings.prepare()
        assert "'r1'" in str(info.value) and "account 9" in str(info.value)
        assert bytes(range(32)).hex() not in str(info.value)
    # After a root-key rotation that kept the old id for unwrapping, start-up is fine.
    await p.again(LocalRootKey({"r1": bytes(range(32)), "r2": bytes(range(1, 33))}, "r2")).rings.prepare()


async def test_kek_cache_expires() -> None:
    store = FakeStore()
    service = KeyRingService(store, ROOT, FakeAudit(), kek_cache_seconds=0.0)
    await service.generate_data_key(9)
    await service.generate_data_key(9)
    assert store.calls.count("ring") == 2


# -- rotation, retirement, rewrap ---------------------------------------------------------------------------------


async def test_rotation_keeps_old_data_readable_and_is_announced(p: Parts) -> None:
    plain1, wrapped1, _ = await p.rings.generate_data_key(9)
    ct1, _ = await p.rings.encrypt(9, b"secret", {"a": "b"})
    status = await p.rings.rotate_account_key(9)
    assert (status.ring.current_version, [v.version for v in status.versions]) == (2, [1, 2])
    assert p.notices.sent[-1] == KeyNotice(ACCOUNT_KEYS_CHANGED, 9, (), "rotated")
    (ev,) = [e for e in p.audit.strict if e.action == "keys.account_key.rotated"]
    assert ev.details["version"] == "2" and ev.details["trigger"] == "manual"
    _, wrapped2, version = await p.rings.generate_data_key(9)
    assert version == 2 and parse_blob(wrapped2).version == 2
    assert await p.rings.decrypt_data_key(9, wrapped1) == (plain1, 1)
    assert await p.rings.decrypt(9, ct1, {"a": "b"}) == (b"secret", 1)
    p.audit.down = True
    with pytest.raises(AuditUnavailable):
        await p.rings.rotate_account_key(9)
    assert (await p.rings.account_key_status(9)).ring.current_version == 2  # fail closed
    with pytest.raises(AccountKeysNotFound):
        await p.rings.rotate_account_key(404)


async def test_rewrap_preserves_plaintext_and_retirement_then_bites(p: Parts) -> None:
    items = []
    plains = {}
    for i in range(3):
        plain, wrapped, _ = await p.rings.generate_data_key(9, {"row": str(i)})
        plains[f"dk{i}"] = plain
        items.append((f"dk{i}", wrapped, {"row": str(i)}))
    ct, _ = await p.rings.encrypt(9, b"small secret", {"row": "ct"})
    items.append(("ct", ct, {"row": "ct"}))
    items.append(("bad", items[0][1], {"row": "wrong"}))
    await p.rings.rotate_account_key(9)
    results, current = await p.rings.rewrap(9, items)
    assert current == 2
    by_ref = {r.reference: r for r in results}
    assert by_ref["bad"].error_reason == "DECRYPT_FAILED" and by_ref["bad"].blob == b""
    for ref, plain in plains.items():
        r = by_ref[ref]
        assert r.changed and r.version == 2 and plain not in r.blob
        assert await p.rings.decrypt_data_key(9, r.blob, {"row": ref[2:]}) == (plain, 2)
    assert await p.rings.decrypt(9, by_ref["ct"].blob, {"row": "ct"}) == (b"small secret", 2)
    # A second pass changes nothing (resumable: run it again after a crash).
    again, _ = await p.rings.rewrap(9, [(ref, by_ref[ref].blob, {"row": ref[2:]}) for ref in plains])
    assert [r.changed for r in again] == [False] * 3
    # Retire version 1: old blobs no longer decrypt, rewrapped ones do.
    status = await p.rings.set_account_key_policy(9, None, 2)
    assert status.ring.min_decryption_version == 2
    assert [status.ring.version_state(v.version, False) for v in status.versions] == ["retired", "primary"]
    assert p.notices.sent[-1] == KeyNotice(ACCOUNT_KEYS_CHANGED, 9, (), "retired")
    with pytest.raises(KeyVersionRetired) as info:
        await p.rings.decrypt_data_key(9, items[0][1], {"row": "0"})
    assert "minimum decryption version is 2" in info.value.message
    with pytest.raises(KeyVersionRetired):
        await p.rings.decrypt(9, ct, {"row": "ct"})
    assert await p.rings.decrypt_data_key(9, by_ref["dk0"].blob, {"row": "0"}) == (plains["dk0"], 2)
    (retired,) = (await p.rings.rewrap(9, [items[0]]))[0]
    assert retired.error_reason == "KEY_VERSION_RETIRED"
    with pytest.raises(KeyPolicyInvalid):
        await p.rings.set_account_key_policy(9, None, 3)
    with pytest.raises(BatchTooLarge):
        await p.rings.rewrap(9, [items[0]] * 1001)


async def test_other_replicas_forget_on_notice(p: Parts) -> None:
    other = p.again()
    _, wrapped, _ = await p.rings.generate_data_key(9)
    await other.rings.decrypt_data_key(9, wrapped)  # cached in the other replica now
    await p.rings.rotate_account_key(9)
    await p.rings.set_account_key_policy(9, None, 2)
    with pytest.raises(KeyVersionRetired):  # our own cache was cleared at once
        await p.rings.decrypt_data_key(9, wrapped)
    assert (await other.rings.decrypt_data_key(9, wrapped))[1] == 1  # theirs still holds the old ring…
    for notice in p.notices.sent:
        other.rings.on_notice(notice)
    with pytest.raises(KeyVersionRetired):  # …until the notice arrives
        await other.rings.decrypt_data_key(9, wrapped)


async def test_scheduled_rotation(p: Parts) -> None:
    await p.rings.generate_data_key(9)
    await p.rings.generate_data_key(10)
    await p.rings.set_account_key_policy(10, 3600, None)
    p.clock.advance(minutes=59)
    assert (await p.rings.run_maintenance()).rotated == 0
    p.clock.advance(minutes=1)
    assert (await p.rings.run_maintenance()).rotated == 1  # only account 10 (the default is 90 days)
    assert (await p.rings.account_key_status(10)).ring.current_version == 2
    p.clock.advance(days=90)
    assert (await p.rings.run_maintenance()).rotated == 2
    rotated = [e for e in p.audit.events if e.action == "keys.account_key.rotated"]
    assert {e.details["trigger"] for e in rotated} == {"scheduled"}


# -- destruction -------------------------------------------------------------------------------------------------


async def test_destruction_pending_window_cancel_and_receipt(p: Parts) -> None:
    plain, wrapped, _ = await p.rings.generate_data_key(9)
    ct, _ = await p.rings.encrypt(9, b"x", {})
    await p.rings.rotate_account_key(9)
    with pytest.raises(KeyPolicyInvalid):
        await p.rings.schedule_destruction(9, 3600, "identity")  # shorter than the 7-day minimum
    status = await p.rings.schedule_destruction(9, 7 * 86400, "identity")
    assert status.ring.state is RingState.PENDING_DESTRUCTION
    assert status.ring.destroy_time == NOW + timedelta(days=7)
    for attempt in (p.rings.decrypt_data_key(9, wrapped), p.rings.generate_data_key(9), p.rings.encrypt(9, b"")):
        with pytest.raises(KeysPendingDestruction):
            await attempt
    await p.rings.cancel_destruction(9)
    assert await p.rings.decrypt_data_key(9, wrapped) == (plain, 1)  # cancelled: everything works again
    with pytest.raises(NotPendingDestruction):
        await p.rings.cancel_destruction(9)
    await p.rings.schedule_destruction(9, 7 * 86400, "identity")
    p.clock.advance(days=7, seconds=-1)
    assert (await p.rings.run_maintenance()).destroyed == 0
    p.clock.advance(seconds=1)
    assert (await p.rings.run_maintenance()).destroyed == 1
    assert p.notices.sent[-1] == KeyNotice(ACCOUNT_KEYS_CHANGED, 9, (), "destroyed")
    for attempt in (
        p.rings.decrypt_data_key(9, wrapped), p.rings.decrypt(9, ct, {}), p.rings.generate_data_key(9),
        p.again().rings.decrypt_data_key(9, wrapped),  # a fresh process: the material is gone from the store too
    ):
        with pytest.raises(KeysDestroyed) as info:
            await attempt
        assert "never be decrypted" in info.value.message
    assert all(k.wrapped is None for (a, _), k in p.store.keks.items() if a == 9)
    with pytest.raises(KeysDestroyed):
        await p.rings.cancel_destruction(9)
    # The receipt: signed, in the audit log (strict), naming each destroyed version.
    (ev,) = [e for e in p.audit.strict if e.action == "keys.account_keys.destroyed"]
    assert ev.actor.account_id == 9
    receipt = json.loads(ev.details["receipt"])
    assert [v["version"] for v in receipt["destroyed_key_versions"]] == [1, 2]
    assert receipt["requested_by"] == "identity" and receipt["signing_key_id"] == ev.details["signing_key_id"]
    (key_id, public, _), = await p.rings.list_receipt_signing_keys()
    assert key_id == ev.details["signing_key_id"] and base64.b64decode(ev.details["public_key"]) == public
    assert verify_receipt(public, ev.details["receipt"].encode(), base64.b64decode(ev.details["signature"]))


async def test_destruction_waits_for_its_receipt(p: Parts) -> None:
    await p.rings.generate_data_key(9)
    await p.rings.schedule_destruction(9, 7 * 86400, "ops")
    p.clock.advance(days=8)
    p.audit.down = True
    assert (await p.rings.run_maintenance()).destroyed == 0  # no receipt, no destruction (retried later)
    assert p.store.keks[(9, 1)].wrapped is not None
    p.audit.down = False
    assert (await p.rings.run_maintenance()).destroyed == 1


# -- root-key rotation ----------------------------------------------------------------------------------------------


async def test_root_key_rotation_rewraps_everything_and_rehashes_on_use(p: Parts) -> None:
    plains = {}
    for account in (9, 10, 11):
        plain, wrapped, _ = await p.rings.generate_data_key(account)
        plains[account] = (plain, wrapped)
    await p.rings.rotate_account_key(9)
    _, key, _ = await p.api_keys.issue_api_key(5, 6, "ci", False)
    old_signers = await p.rings.list_receipt_signing_keys()
    rotated = LocalRootKey({"r1": bytes(range(32)), "r2": bytes(range(1, 33))}, "r2")
    service = services(p.store, p.last_used, p.audit, p.notices, p.clock, rotated, rewrap_batch=2)
    current, usage = await service.rings.root_key_status()
    assert current == "r2" and {(u.root_key_id, u.wrapped_keys, u.api_key_hashes) for u in usage} == {
        ("r1", 4, 1), ("r2", 0, 0)}
    reports = [await service.rings.run_maintenance(), await service.rings.run_maintenance(),
               await service.rings.run_maintenance()]
    assert [(r.rewrapped, r.remaining) for r in reports] == [(2, 2), (2, 0), (0, 0)]
    assert all(k.wrapped is not None and k.wrapped.key_id == "r2" for k in p.store.keks.values())
    # Nothing needs r1 for data any more: a process holding only r2 reads everything.
    r2_only = LocalRootKey({"r2": bytes(range(1, 33))}, "r2")
    only_new = services(p.store, p.last_used, p.audit, p.notices, p.clock, r2_only)
    for account, (plain, wrapped) in plains.items():
        assert (await only_new.rings.decrypt_data_key(account, wrapped))[0] == plain
    # API-key hashes move to the new pepper the first time each key is used.
    await service.api_keys.verify_api_key(key)
    assert {r.pepper_id for r in p.store.api_keys.values()} == {"r2"}
    assert (await only_new.api_keys.verify_api_key(key)).account_id == 5
    # Receipts are signed with a key of the new root; the old public key stays listed.
    new_signers = await service.rings.list_receipt_signing_keys()
    assert {k for k, _, _ in old_signers} < {k for k, _, _ in new_signers}


async def test_a_ring_read_before_destruction_is_scheduled_is_not_cached_after_it(p: Parts) -> None:
    """A data-key call that read the ring just before another call scheduled its destruction must not put
    that old, enabled ring back in the cache: the next call sees the destruction at once."""
    plain, wrapped, _ = await p.rings.generate_data_key(9)
    p.rings.forget_all()
    read, release = asyncio.Event(), asyncio.Event()
    inner = p.store.ring

    async def ring_then_wait(account_id: int) -> AccountRing | None:
        ring = await inner(account_id)  # the state from before the change
        read.set()
        await release.wait()
        return ring

    p.store.ring = ring_then_wait  # type: ignore[method-assign]
    racing = asyncio.create_task(p.rings.decrypt_data_key(9, wrapped))
    await read.wait()
    p.store.ring = inner  # type: ignore[method-assign]
    await p.rings.schedule_destruction(9, 7 * 24 * 3600, "owner")
    release.set()
    assert (await racing)[0] == plain  # it started before the change: it may finish with what it read
    with pytest.raises(DomainError) as info:
        await p.rings.decrypt_data_key(9, wrapped)
    assert info.value.reason == "KEYS_PENDING_DESTRUCTION"
