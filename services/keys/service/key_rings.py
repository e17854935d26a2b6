"""Key-ring use cases: data keys and encryption under per-account KEKs, and their management (rotation,
retirement, destruction with signed receipts, root-key rotation), plus the periodic maintenance.

Every change to a ring clears this process's cache at once and publishes a key notice, on which the other
replicas (and the callers' envelope caches) clear theirs."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sendsafe.audit.v1 import event_pb2
from services.keys.domain.crypto import new_key
from services.keys.domain.envelope import (
    FORMAT_CIPHERTEXT,
    FORMAT_DATA_KEY,
    MAX_BATCH,
    check_blob_account,
    decrypt_small,
    encrypt_small,
    kek_aad,
    parse_blob,
    unwrap_data_key,
    wrap_data_key,
)
from services.keys.domain.errors import (
    AccountKeysNotFound,
    BatchTooLarge,
    DecryptFailed,
    KeysDestroyed,
    KeysNotDestroyed,
    KeyVersionUnknown,
    NotPendingDestruction,
)
from services.keys.domain.key_rings import (
    AccountRing,
    RingState,
    StoredKek,
    check_account_id,
    check_pending_window,
    check_policy,
)
from services.keys.domain.receipts import RECEIPT_SIGNING_INFO, ReceiptSigner, destruction_receipt, receipt_signer
from services.keys.service.audit_trail import ring_event, strict
from services.keys.service.kek_cache import KekCache
from services.keys.service.key_usage import KeyUsage
from services.keys.service.ports import Audit, KeyRingStore, NoNotices, Notices, RootKeyProvider, utcnow
from svckit.audit import new_event
from svckit.config import ConfigError
from svckit.errors import DomainError
from svckit.keyevents import ACCOUNT_KEYS_CHANGED, KeyNotice

_LOG = logging.getLogger(__name__)
Context = Mapping[str, str]


class RootKeyMismatch(ConfigError):
    """The configured root keys do not open the stored keys (raised at start-up)."""


@dataclass(frozen=True)
class AccountStatus:
    ring: AccountRing
    versions: list[StoredKek]
    next_rotation_time: datetime | None


@dataclass(frozen=True)
class RewrapOutcome:
    reference: str
    blob: bytes
    version: int
    changed: bool
    error_reason: str = ""


@dataclass(frozen=True)
class RootKeyUsage:
    root_key_id: str
    current: bool
    wrapped_keys: int
    api_key_hashes: int


@dataclass(frozen=True)
class MaintenanceReport:
    rotated: int = 0
    destroyed: int = 0
    rewrapped: int = 0
    remaining: int = 0


class KeyRingService:
    """Data keys and small-secret encryption under per-account key rings, rewrap, rotation (manual and periodic),
    retirement (minimum decryption version), destruction with a pending window and a signed receipt, root-key
    rotation (a rewrap job that moves every KEK to the current root key)."""

    def __init__(
        self,
        store: KeyRingStore,
        root: RootKeyProvider,
        audit: Audit,
        *,
        kek_cache_seconds: float = 60.0,
        kek_cache_entries: int = 10_000,
        rotation_period: timedelta = timedelta(days=90),
        min_pending_window: timedelta = timedelta(days=7),
        rewrap_batch: int = 500,
        service_name: str = "keys",
        now: Callable[[], datetime] = utcnow,
        notices: Notices | None = None,
        usage: KeyUsage | None = None,
    ) -> None:
        self._store = store
        self._usage = usage
        self._root = root
        self._audit = audit
        self._rotation_period = rotation_period
        self._min_pending = min_pending_window
        self._rewrap_batch = rewrap_batch
        self._name = service_name
        self._now = now
        self._notices: Notices = notices or NoNotices()
        self._cache = KekCache(store, root, audit, seconds=kek_cache_seconds, entries=kek_cache_entries,
                               service_name=service_name, now=now)
        self._signer: ReceiptSigner | None = None

    async def prepare(self) -> None:
        """Check that the configured root keys open what is stored, then derive the receipt signing key and
        publish its public half (once per root key)."""
        await self._check_root_keys()
        await self._receipt_signer()

    async def _check_root_keys(self) -> None:
        """Refuse to start when the newest stored KEK does not unwrap under the configured root keys: every
        account's data would then fail to decrypt, one request at a time, as internal errors. It happens
        when the root key was replaced or lost, or the database was written by another deployment (or
        another checkout's `make run`)."""
        newest = await self._store.newest_kek()
        if newest is None or newest.wrapped is None:
            return
        try:
            await self._root.unwrap(newest.wrapped, kek_aad(newest.account_id, newest.version))
        except (DecryptFailed, KeyVersionUnknown):
            raise RootKeyMismatch([
                f"the keys database holds KEKs wrapped under root key {newest.wrapped.key_id!r}, and the configured"
                f" root keys ({', '.join(self._root.key_ids)}) do not open them (account {newest.account_id}"
                f" version {newest.version}): configure the root key that wrote them"
            ]) from None

    async def list_receipt_signing_keys(self) -> list[tuple[str, bytes, datetime]]:
        await self._receipt_signer()
        return await self._store.signing_keys()

    # -- data keys and encryption ------------------------------------------------------------------------------

    async def generate_data_key(self, account_id: int, context: Context | None = None) -> tuple[bytes, bytes, int]:
        """(plaintext, wrapped, KEK version) of a fresh data key; creates the account's ring on first use."""
        kek = await self._cache.current_kek(account_id)
        data_key = new_key()
        return data_key, wrap_data_key(kek, data_key, context), kek.version

    async def generate_data_key_without_plaintext(
        self, account_id: int, context: Context | None = None
    ) -> tuple[bytes, int]:
        _, wrapped, version = await self.generate_data_key(account_id, context)
        return wrapped, version

    async def decrypt_data_key(
        self, account_id: int, wrapped: bytes, context: Context | None = None
    ) -> tuple[bytes, int]:
        """(plaintext, KEK version) of a wrapped data key of `account_id`."""
        try:
            kek = await self._cache.kek_for(account_id, wrapped)
            return unwrap_data_key(kek, wrapped, context), kek.version
        except DomainError as err:
            await self._decrypt_failed(account_id, err, "keys.data_key.decrypt_failed")
            raise

    async def encrypt(self, account_id: int, plaintext: bytes, context: Context | None = None) -> tuple[bytes, int]:
        kek = await self._cache.current_kek(account_id)
        return encrypt_small(kek, plaintext, context), kek.version

    async def decrypt(self, account_id: int, ciphertext: bytes, context: Context | None = None) -> tuple[bytes, int]:
        try:
            kek = await self._cache.kek_for(account_id, ciphertext)
            return decrypt_small(kek, ciphertext, context), kek.version
        except DomainError as err:
            await self._decrypt_failed(account_id, err, "keys.decrypt_failed")
            raise

    async def rewrap(
        self, account_id: int, items: Sequence[tuple[str, bytes, Context]]
    ) -> tuple[list[RewrapOutcome], int]:
        """Each item (wrapped data key or ciphertext) under the account's current version. The plaintext never
        leaves this method; a failing item fails alone (its error reason is in its outcome)."""
        if len(items) > MAX_BATCH:
            raise BatchTooLarge(f"at most {MAX_BATCH} items per call")
        current = await self._cache.current_kek(account_id)
        out: list[RewrapOutcome] = []
        failures: dict[str, int] = {}
        for reference, blob, context in items:
            try:
                header = parse_blob(blob)
                check_blob_account(header, account_id)
                if header.version == current.version and header.fmt in (FORMAT_DATA_KEY, FORMAT_CIPHERTEXT):
                    kek = await self._cache.kek_for(account_id, blob)  # still proves it is sound and usable
                    if header.is_data_key:
                        unwrap_data_key(kek, blob, context)
                    else:
                        decrypt_small(kek, blob, context)
                    out.append(RewrapOutcome(reference, blob, current.version, False))
                    continue
                kek = await self._cache.kek_for(account_id, blob)
                if header.is_data_key:
                    fresh = wrap_data_key(current, unwrap_data_key(kek, blob, context), context)
                else:
                    fresh = encrypt_small(current, decrypt_small(kek, blob, context), context)
                out.append(RewrapOutcome(reference, fresh, current.version, True))
            except DomainError as err:
                failures[err.reason] = failures.get(err.reason, 0) + 1
                out.append(RewrapOutcome(reference, b"", 0, False, err.reason))
        changed = sum(o.changed for o in out)
        if not changed and not failures:  # a data owner's periodic pass over data already current: no event
            return out, current.version
        await self._audit.record(
            new_event(
                self._name, "keys.rewrapped",
                outcome=event_pb2.OUTCOME_SUCCESS if not failures else event_pb2.OUTCOME_FAILURE,
                resource_type="account_keys", resource_id=str(account_id), account_id=account_id,
                details={"items": str(len(items)), "changed": str(changed), "to_version": str(current.version)}
                | {f"failed_{k.lower()}": str(v) for k, v in failures.items()},
            )
        )
        return out, current.version

    # -- key management -----------------------------------------------------------------------------------------

    async def account_key_status(self, account_id: int) -> AccountStatus:
        check_account_id(account_id)
        ring = await self._store.ring(account_id)
        if ring is None:
            raise AccountKeysNotFound()
        return await self._status(ring)

    async def rotate_account_key(self, account_id: int, why: str = "manual") -> AccountStatus:
        """Add a version and make it current. Privileged: the event is stored before the rotation commits."""
        check_account_id(account_id)
        ring = await self._store.ring(account_id)
        if ring is None:
            raise AccountKeysNotFound()
        ring.check_usable()
        version = ring.current_version + 1
        wrapped = await self._root.wrap(new_key(), kek_aad(account_id, version))
        event = ring_event(self._name, "keys.account_key.rotated", account_id, {
            "from_version": str(ring.current_version), "version": str(version), "trigger": why,
            "root_key_id": wrapped.key_id,
        })
        new = StoredKek(account_id, version, wrapped, self._now())
        rotated = await strict(
            self._audit, self._name, event,
            lambda evidence: self._store.add_kek_version(new, ring.current_version, evidence),
        )
        if rotated is None:  # rotated (or changed state) by someone else meanwhile: report what is there now
            return await self.account_key_status(account_id)
        await self._ring_changed(account_id, "rotated")
        return await self._status(rotated)

    async def set_account_key_policy(
        self, account_id: int, rotation_period_seconds: int | None, min_decryption_version: int | None
    ) -> AccountStatus:
        check_account_id(account_id)
        ring = await self._store.ring(account_id)
        if ring is None:
            raise AccountKeysNotFound()
        period, minimum = check_policy(ring, rotation_period_seconds, min_decryption_version)
        if minimum > ring.min_decryption_version and self._usage is not None:
            await self._usage.check_retirable(account_id, minimum, await self._store.kek_versions(account_id))
        event = ring_event(self._name, "keys.account_key.policy_changed", account_id, {
            "rotation_period_seconds": str(period), "min_decryption_version": str(minimum),
            "previous_min_decryption_version": str(ring.min_decryption_version),
        })
        changed = await strict(
            self._audit, self._name, event,
            lambda evidence: self._store.set_policy(account_id, period, minimum, evidence),
        )
        if changed is None:
            return await self.account_key_status(account_id)
        await self._ring_changed(account_id, "retired" if minimum != ring.min_decryption_version else "policy")
        return await self._status(changed)

    async def schedule_destruction(self, account_id: int, window_seconds: int, requested_by: str) -> AccountStatus:
        """From now on every use fails; at the end of the window maintenance destroys the keys."""
        check_account_id(account_id)
        window = check_pending_window(window_seconds, self._min_pending)
        ring = await self._store.ring(account_id)
        if ring is None:
            raise AccountKeysNotFound()
        ring.check_usable()
        now = self._now()
        event = ring_event(self._name, "keys.account_keys.destruction_scheduled", account_id, {
            "destroy_time": (now + window).isoformat(), "pending_window_seconds": str(window_seconds),
            "requested_by": requested_by,
        })
        scheduled = await strict(self._audit, self._name, event, lambda evidence: self._store.schedule_destruction(
            account_id, now + window, now, requested_by, evidence))
        if scheduled is None:
            return await self.account_key_status(account_id)
        await self._ring_changed(account_id, "destruction_scheduled")
        return await self._status(scheduled)

    async def cancel_destruction(self, account_id: int) -> AccountStatus:
        check_account_id(account_id)
        ring = await self._store.ring(account_id)
        if ring is None:
            raise AccountKeysNotFound()
        if ring.state is RingState.DESTROYED:
            raise KeysDestroyed()
        if ring.state is not RingState.PENDING_DESTRUCTION:
            raise NotPendingDestruction("the account's keys are not scheduled for destruction")
        event = ring_event(self._name, "keys.account_keys.destruction_cancelled", account_id, {})
        cancelled = await strict(
            self._audit, self._name, event, lambda evidence: self._store.cancel_destruction(account_id, evidence)
        )
        if cancelled is None:
            return await self.account_key_status(account_id)
        await self._ring_changed(account_id, "destruction_cancelled")
        return await self._status(cancelled)

    async def purge_account(self, account_id: int) -> tuple[tuple[bytes, bytes, str], int]:
        """A closed account, its keys destroyed: its API key rows go, the ring's tombstone and the signed receipt
        stay; returns (receipt, signature, signing key id) and the API keys deleted. KeysNotDestroyed before."""
        check_account_id(account_id)
        ring = await self._store.ring(account_id)
        if ring is None or ring.state is not RingState.DESTROYED:
            raise KeysNotDestroyed("the account's keys are not destroyed")
        receipt, deleted = await self._store.purge_account(account_id)
        if receipt is None:
            raise KeysNotDestroyed("the account's keys were destroyed before receipts were kept")
        await self._audit.record(new_event(self._name, "keys.account.purged", resource_type="account_keys",
                                           resource_id=str(account_id), account_id=account_id,
                                           details={"api_keys_deleted": str(deleted)}))
        return receipt, deleted

    async def root_key_status(self) -> tuple[str, list[RootKeyUsage]]:
        keks, peppers = await self._store.root_key_usage()
        current = self._root.current_key_id
        ids = dict.fromkeys([current, *self._root.key_ids, *sorted(keks), *sorted(peppers)])
        return current, [
            RootKeyUsage(kid, kid == current, keks.get(kid, 0), peppers.get(kid, 0)) for kid in ids
        ]

    async def run_maintenance(self, batch: int = 100) -> MaintenanceReport:
        """Due destructions, due rotations, one batch of root-key rewrapping. Safe on many replicas at once."""
        now = self._now()
        destroyed = 0
        for account_id in await self._store.due_destructions(now, batch):
            if await self._destroy(account_id, now):
                destroyed += 1
        rotated = 0
        period = int(self._rotation_period.total_seconds())
        for ring in await self._store.due_rotations(now, period, batch):
            try:
                await self.rotate_account_key(ring.account_id, "scheduled")
                rotated += 1
            except DomainError as err:
                _LOG.warning("scheduled rotation of account %d failed: %s", ring.account_id, err.reason)
        rewrapped, remaining = await self._rewrap_root_batch()
        return MaintenanceReport(rotated, destroyed, rewrapped, remaining)

    # -- key notices -------------------------------------------------------------------------------------------

    def cache_lookups(self) -> tuple[int, int]:
        """(hits, misses) of this process's ring and KEK cache."""
        return self._cache.lookups()

    def forget_account(self, account_id: int) -> None:
        """Drop what this process caches about an account's keys (on a notice from another replica)."""
        self._cache.forget_account(account_id)

    def forget_all(self) -> None:
        self._cache.forget_all()

    def on_notice(self, notice: KeyNotice) -> None:
        if notice.kind == ACCOUNT_KEYS_CHANGED:
            self.forget_account(notice.account_id)

    # -- internals: key rings -----------------------------------------------------------------------------------

    async def _status(self, ring: AccountRing) -> AccountStatus:
        versions = await self._store.kek_versions(ring.account_id)
        return AccountStatus(ring, versions, ring.next_rotation_time(self._rotation_period))

    async def _ring_changed(self, account_id: int, change: str) -> None:
        self.forget_account(account_id)
        await self._notices.publish(KeyNotice(ACCOUNT_KEYS_CHANGED, account_id, (), change))

    async def _decrypt_failed(self, account_id: int, err: DomainError, action: str) -> None:
        await self._audit.record(
            new_event(
                self._name, action, outcome=event_pb2.OUTCOME_FAILURE, resource_type="account_keys",
                resource_id=str(account_id), error_reason=err.reason, account_id=account_id if account_id > 0 else None,
            )
        )

    async def _receipt_signer(self) -> ReceiptSigner:
        if self._signer is None or not self._signer.key_id.startswith(self._root.current_key_id + "."):
            root_id, seed = await self._root.derive_secret(RECEIPT_SIGNING_INFO)
            signer = receipt_signer(root_id, seed)
            await self._store.add_signing_key(signer.key_id, signer.public_bytes, self._now())
            self._signer = signer
        return self._signer

    async def _destroy(self, account_id: int, now: datetime) -> bool:
        signer = await self._receipt_signer()

        async def receipt(
            destroyed: list[tuple[int, bytes]], scheduled: datetime | None, requested_by: str
        ) -> tuple[bytes, bytes, str]:
            body = destruction_receipt(
                account_id=account_id, destroyed=destroyed, scheduled_time=scheduled, destroy_time=now,
                requested_by=requested_by, signing_key_id=signer.key_id,
            )
            event = ring_event(self._name, "keys.account_keys.destroyed", account_id, {
                "receipt": body.decode(),
                "signature": base64.b64encode(signer.sign(body)).decode(),
                "signing_key_id": signer.key_id,
                "public_key": base64.b64encode(signer.public_bytes).decode(),
                "versions": ",".join(str(v) for v, _ in destroyed),
            })
            await self._audit.record_strict(event)
            return body, signer.sign(body), signer.key_id

        try:
            done = await self._store.destroy(account_id, now, receipt)
        except Exception as exc:  # retried by the next maintenance run; nothing was destroyed
            _LOG.warning("destruction of account %d keys failed (%s); retrying later", account_id,
                         getattr(exc, "reason", type(exc).__name__))
            return False
        if done:
            await self._ring_changed(account_id, "destroyed")
        return done

    async def _rewrap_root_batch(self) -> tuple[int, int]:
        """Move one batch of KEKs wrapped under older root keys to the current one. Resumable by design:
        each run picks whatever is still under an old key. Returns (rewrapped, still remaining)."""
        current = self._root.current_key_id
        done = 0
        batch = await self._store.keks_to_rewrap(current, self._rewrap_batch)
        if not batch:  # the steady state: one indexed query, no counting
            return 0, 0
        for stored in batch:
            assert stored.wrapped is not None
            aad = kek_aad(stored.account_id, stored.version)
            try:
                raw = await self._root.unwrap(stored.wrapped, aad)
            except (KeyVersionUnknown, DecryptFailed):
                _LOG.error("root key %r is needed to rewrap account %d version %d but is not configured or wrong",
                           stored.wrapped.key_id, stored.account_id, stored.version)
                continue
            if await self._store.replace_wrapped(stored.account_id, stored.version, stored.wrapped.key_id,
                                                 await self._root.wrap(raw, aad)):
                done += 1
        keks, _ = await self._store.root_key_usage()
        remaining = sum(n for kid, n in keks.items() if kid != current)
        if done:
            await self._audit.record(new_event(self._name, "keys.root_key.rewrapped", resource_type="root_key",
                                               resource_id=current,
                                               details={"rewrapped": str(done), "remaining": str(remaining)}))
        return done, remaining
