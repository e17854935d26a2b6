"""Account closure, messaging's part, with the real messaging API over mTLS, real PostgreSQL and the real keys and
audit services (issue 15): only identity may call the closure RPCs; stopping cancels and refunds the scheduled
message and refuses new sends (ACCOUNT_CLOSING) while another account is untouched; resuming lifts that; purging is
refused unless the account is closing, then deletes every row of the account in every table (the marker stays) and
nothing of another account, idempotently."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest

from sendsafe.messaging.v1 import messaging_service_pb2 as pb
from sendsafe.messaging.v1 import messaging_service_pb2_grpc
from svckit.rpcstatus import error_reason
from tests.conftest import channel_as
from tests.integration.messaging.conftest import Messaging, principal_md
from tests.integration.messaging.test_api import REAL_NUMBER, sms, stub_for
from tests.support import CertBundle


async def _rows(m: Messaging, account_id: int) -> dict[str, int]:
    async with m.pool.acquire() as conn:
        tables = [r[0] for r in await conn.fetch(
            "SELECT c.table_name FROM information_schema.columns c JOIN information_schema.tables t"
            " ON t.table_schema = c.table_schema AND t.table_name = c.table_name AND t.table_type = 'BASE TABLE'"
            " WHERE c.table_schema = current_schema() AND c.column_name = 'account_id'")]
        counts = {t: int(await conn.fetchval(f'SELECT count(*) FROM "{t}" WHERE account_id = $1', account_id))
                  for t in tables}
        counts["outbox"] = int(await conn.fetchval(
            "SELECT count(*) FROM outbox o JOIN messages m ON m.id = o.message_id WHERE m.account_id = $1",
            account_id))
    return {t: n for t, n in counts.items() if n}


async def test_stop_resume_and_purge_an_accounts_messaging_data(messaging: Messaging, certs: CertBundle) -> None:
    closing, other = 900_000 + uuid.uuid4().int % 90_000, 990_000 + uuid.uuid4().int % 9_000
    gw_ch, gateway = stub_for(messaging, certs)
    id_ch = channel_as(certs, "identity", messaging.api.port, "messaging")
    identity = messaging_service_pb2_grpc.MessagingServiceStub(id_ch)
    async with gw_ch, id_ch:
        later = int(time.time()) + 86400
        for account in (closing, other):
            sent = await gateway.SendSms(  # type: ignore[attr-defined]
                pb.SendSmsRequest(messages=[sms(REAL_NUMBER, "tomorrow", schedule=later), sms(REAL_NUMBER, "now")]),
                metadata=principal_md(account))
            assert [m.status for m in sent.messages] == ["SUCCESS", "SUCCESS"]
        before = (await identity.GetBalance(pb.GetBalanceRequest(account_id=closing))).balance

        # Only identity drives a closure.
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await gateway.StopAccountSends(pb.StopAccountSendsRequest(account_id=closing))  # type: ignore[attr-defined]
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # Purging an account that is not closing is refused.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await identity.PurgeAccountData(pb.PurgeAccountDataRequest(account_id=closing))
        assert error_reason(refused.value) == "ACCOUNT_NOT_CLOSING"

        stopped = await identity.StopAccountSends(pb.StopAccountSendsRequest(account_id=closing))
        assert stopped.cancelled >= 1  # the scheduled one (the other may already be on its way)
        after = (await identity.GetBalance(pb.GetBalanceRequest(account_id=closing))).balance
        assert float(after) > float(before)  # refunded, as CancelSms does
        assert (await identity.StopAccountSends(pb.StopAccountSendsRequest(account_id=closing))).cancelled == 0
        with pytest.raises(grpc.aio.AioRpcError) as closed:
            await gateway.SendSms(pb.SendSmsRequest(messages=[sms(REAL_NUMBER, "more")]),  # type: ignore[attr-defined]
                                  metadata=principal_md(closing))
        assert error_reason(closed.value) == "ACCOUNT_CLOSING"
        ok = await gateway.SendSms(pb.SendSmsRequest(messages=[sms(REAL_NUMBER, "other")]),  # type: ignore[attr-defined]
                                   metadata=principal_md(other))
        assert ok.messages[0].status == "SUCCESS"

        # A cancelled closure: sends work again; then closing again and purging.
        await identity.ResumeAccountSends(pb.ResumeAccountSendsRequest(account_id=closing))
        again = await gateway.SendSms(pb.SendSmsRequest(messages=[sms(REAL_NUMBER, "again")]),  # type: ignore[attr-defined]
                                      metadata=principal_md(closing))
        assert again.messages[0].status == "SUCCESS"
        await identity.StopAccountSends(pb.StopAccountSendsRequest(account_id=closing))
        other_rows = await _rows(messaging, other)
        assert set(await _rows(messaging, closing)) >= {"messages", "balances", "account_closures"}
        purged = await identity.PurgeAccountData(pb.PurgeAccountDataRequest(account_id=closing))
        assert purged.deleted_rows >= 4
        assert await _rows(messaging, closing) == {"account_closures": 1}  # the marker alone
        assert await _rows(messaging, other) == other_rows  # nothing of another account
        assert (await identity.PurgeAccountData(pb.PurgeAccountDataRequest(account_id=closing))).deleted_rows == 0
        with pytest.raises(grpc.aio.AioRpcError) as purged_already:
            await identity.ResumeAccountSends(pb.ResumeAccountSendsRequest(account_id=closing))
        assert error_reason(purged_already.value) == "ACCOUNT_PURGED"
