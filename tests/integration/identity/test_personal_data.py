"""Users' personal data at rest: sealed under the account's keys in the identity database, opened on every read
(API answers, staff views, the owners messaging emails), and rows kept in clear before migration 0004 sealed by
the startup backfill."""

from __future__ import annotations

import uuid

from sendsafe.identity.v1 import identity_service_pb2 as pb
from sendsafe.identity.v1 import identity_service_pb2_grpc
from svckit.app import App
from tests.conftest import channel_as
from tests.integration.identity.test_identity_api import _create, _principal, _unique
from tests.support import CertBundle

_PERSONAL = ("email", "phone_number", "first_name", "last_name", "notes")


async def _row_text(app: App, user_id: int) -> str:
    """The user's whole row as PostgreSQL prints it (bytea as hex, so no ciphertext spells a value)."""
    store = app.extras["store"]
    async with store._pool.acquire() as conn:  # type: ignore[attr-defined]
        return str(await conn.fetchval("SELECT u::text FROM users u WHERE id = $1", user_id))


async def test_personal_data_is_sealed_at_rest_and_opened_on_every_read(identity_app: App, certs: CertBundle) -> None:
    marker = uuid.uuid4().hex[:12]
    name = _unique()
    created = await _create(identity_app, certs, name, first_name=f"Main{marker}", last_name=f"Owner{marker}",
                            email=f"{name}@owner{marker}.example", phone_number="0412 345 678")
    admin = _principal(created.account_id, created.user.user_id, *created.user.permissions)
    async with channel_as(certs, "gateway", identity_app.port, "identity") as gw:
        stub = identity_service_pb2_grpc.IdentityServiceStub(gw)
        sub = (await stub.CreateSubaccount(pb.CreateSubaccountRequest(
            api_username=_unique("sub"), password="quartz meadow ladder 42 ripple", email=f"sub{marker}@example.com",
            phone_number="+61498765432", first_name=f"Grace{marker}", last_name=f"Hopper{marker}",
            notes=f"note {marker}"), metadata=admin)).subaccount
        changed = (await stub.UpdateSubaccount(pb.UpdateSubaccountRequest(
            subaccount_id=sub.subaccount_id, last_name=f"Changed{marker}"), metadata=admin)).subaccount
        listed = {s.subaccount_id: s for s in (await stub.ListSubaccounts(
            pb.ListSubaccountsRequest(page=1, limit=100), metadata=admin)).data}
    assert (changed.email, changed.phone_number, changed.first_name, changed.last_name, changed.notes) == (
        f"sub{marker}@example.com", "+61498765432", f"Grace{marker}", f"Changed{marker}", f"note {marker}")
    main = listed[created.user.user_id]
    assert (main.email, main.phone_number, main.first_name) == (
        f"{name}@owner{marker}.example", "+61412345678", f"Main{marker}")
    assert listed[sub.subaccount_id].last_name == f"Changed{marker}"
    async with channel_as(certs, "messaging", identity_app.port, "identity") as ch:
        owners = await identity_service_pb2_grpc.IdentityServiceStub(ch).GetAccountOwners(
            pb.GetAccountOwnersRequest(account_id=created.account_id))
    assert [o.email for o in owners.owners] == [f"{name}@owner{marker}.example"]
    for user_id in (created.user.user_id, sub.subaccount_id):
        text = await _row_text(identity_app, user_id)
        for clear in (marker, "412345678", "498765432"):
            assert clear not in text, f"{clear!r} in clear in users row {user_id}"


async def test_backfill_seals_rows_written_in_clear_before_the_migration(identity_app: App, certs: CertBundle) -> None:
    marker = uuid.uuid4().hex[:12]
    created = await _create(identity_app, certs, _unique())
    store = identity_app.extras["store"]
    legacy = {"email": f"old{marker}@example.com", "phone_number": "+61411222333", "first_name": f"Old{marker}",
              "last_name": f"Row{marker}", "notes": f"legacy {marker}"}
    async with store._pool.acquire() as conn:  # type: ignore[attr-defined]
        # A row as identity wrote it before 0004: values in the clear columns, no ciphertexts.
        user_id = await conn.fetchval(
            "INSERT INTO users (account_id, api_username, email, phone_number, first_name, last_name, notes)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            created.account_id, _unique("old"), *legacy.values())
    # Readable before the backfill (the legacy columns), and sealed by it.
    _, before = await store.get_user(user_id)  # type: ignore[attr-defined]
    assert {f: getattr(before, f) for f in _PERSONAL} == legacy
    assert await store.seal_personal_in_clear() >= 1  # type: ignore[attr-defined]
    text = await _row_text(identity_app, user_id)
    assert marker not in text and "411222333" not in text
    _, after = await store.get_user(user_id)  # type: ignore[attr-defined]
    assert {f: getattr(after, f) for f in _PERSONAL} == legacy
    async with store._pool.acquire() as conn:  # type: ignore[attr-defined]
        clear = await conn.fetchrow(f"SELECT {', '.join(_PERSONAL)} FROM users WHERE id = $1", user_id)
    assert all(clear[f] is None for f in _PERSONAL)
    assert await store.seal_personal_in_clear() == 0  # type: ignore[attr-defined]  # nothing left: idempotent
