"""A closing account does not stall the rewrap pass, with the real keys, messaging and identity services over
mTLS and PostgreSQL: the keys service refuses to rewrap (FAILED_PRECONDITION KEYS_PENDING_DESTRUCTION) for an
account whose destruction is scheduled, and the pass used to abort on that refusal, so no other account was
rewrapped and nothing was reported - retiring any account's old key version stayed refused. Now the closing
account is skipped (counted, logged once, its data left as it is: it is crypto-shredded anyway) and every
other account is moved and reported."""

from __future__ import annotations

import logging
import uuid

import pytest

from sendsafe.keys.v1 import keys_service_pb2 as kpb
from sendsafe.messaging.v1 import messaging_service_pb2 as pb
from svckit.app import App
from tests.integration.messaging.conftest import Messaging, principal_md
from tests.integration.messaging.test_api import REAL_NUMBER, sms, stub_for
from tests.integration.messaging.test_key_retirement import _ops, _versions
from tests.support import CertBundle


async def test_a_closing_account_is_skipped_and_every_other_account_rewrapped(
    messaging: Messaging, identity_app: App, keys_service: App, keys_addr: str, certs: CertBundle,
    caplog: pytest.LogCaptureFixture,
) -> None:
    base = 970_000 + uuid.uuid4().int % 10_000 * 2
    closing, other = base, base + 1
    ch, stub = stub_for(messaging, certs)
    ops_ch, ops = _ops(certs, keys_addr)
    async with ch, ops_ch:
        for account in (closing, other):
            request = pb.SendSmsRequest(messages=[sms(REAL_NUMBER, f"body {i}") for i in range(2)])  # type: ignore[attr-defined]
            await stub.SendSms(request, metadata=principal_md(account, test_mode=True))  # type: ignore[attr-defined]
            status = (await ops.RotateAccountKey(kpb.RotateAccountKeyRequest(account_id=account))).status
            assert status.current_version == 2
        held = {a: sum(len(v) for v in (await _versions(messaging, a)).values()) for a in (closing, other)}
        assert held[closing] == held[other] >= 4  # bodies and numbers at least, all under version 1
        # The customer closes `closing`: its keys enter destruction with the pending window.
        await ops.ScheduleAccountKeyDestruction(kpb.ScheduleAccountKeyDestructionRequest(
            account_id=closing, pending_window_seconds=7 * 86_400))

        caplog.set_level(logging.INFO, logger="svckit.envelope_rewrap")
        done = await messaging.api.extras["rewrap"]()  # used to raise FAILED_PRECONDITION here

        # The other account is moved; the closing one is left as it is, counted as skipped.
        assert all(v == [2] * len(v) for v in (await _versions(messaging, other)).values())
        assert all(v == [1] * len(v) for v in (await _versions(messaging, closing)).values())
        assert sum(p.changed for p in done.values()) == held[other]
        assert sum(p.skipped for p in done.values()) == held[closing]
        assert all(p.failed == 0 for p in done.values())
        assert {a: r for p in done.values() for a, r in p.refused.items()} == {closing: "KEYS_PENDING_DESTRUCTION"}
        # Logged once for the pass (not per table or batch), with the account id and reason only.
        skips = [r.getMessage() for r in caplog.records if "skips account" in r.getMessage()]
        assert skips == [f"rewrap skips account {closing}: its keys take no rewrap (KEYS_PENDING_DESTRUCTION);"
                         " its data is left as it is"]
        assert all(r.levelno == logging.INFO for r in caplog.records if "skips account" in r.getMessage())

        # And the pass was reported: retiring the other account's version 1 goes through once identity's and
        # keys' own passes (they hold nothing of these accounts) have run since the rotation too.
        await identity_app.extras["rewrap"]()
        await keys_service.extras["rewrap"]()
        retired = await ops.SetAccountKeyPolicy(kpb.SetAccountKeyPolicyRequest(
            account_id=other, min_decryption_version=2))
        assert retired.status.min_decryption_version == 2
        page = await stub.ListSmsHistory(pb.ListSmsHistoryRequest(), metadata=principal_md(other, test_mode=True))  # type: ignore[attr-defined]
        assert sorted(h.body for h in page.data) == ["body 0", "body 1"]

        # Closure cancelled: the next pass moves the account's data too (its items were never hidden from keys).
        await ops.CancelAccountKeyDestruction(kpb.CancelAccountKeyDestructionRequest(account_id=closing))
        again = await messaging.api.extras["rewrap"]()
        assert sum(p.skipped for p in again.values()) == 0
        assert all(v == [2] * len(v) for v in (await _versions(messaging, closing)).values())
