"""The other services' parts of an account closure, as identity calls them (internal RPCs allowed to identity
alone): keys (revoke every API key, schedule/cancel destruction, purge with the receipt), messaging (stop/resume
sends, purge, email the receipt) and audit (purge the account's configuration). Every call is idempotent: the
closure sweep simply repeats a step that failed."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc

from sendsafe.audit.v1 import audit_service_pb2, audit_service_pb2_grpc
from sendsafe.keys.v1 import keys_service_pb2 as kpb
from sendsafe.keys.v1 import keys_service_pb2_grpc
from sendsafe.messaging.v1 import messaging_service_pb2 as mpb
from sendsafe.messaging.v1 import messaging_service_pb2_grpc, notification_service_pb2, notification_service_pb2_grpc
from services.identity.domain.errors import AccountClosed
from svckit.rpcstatus import error_reason


class ClosurePeerClients:
    def __init__(self, keys: grpc.aio.Channel, messaging: grpc.aio.Channel, audit: grpc.aio.Channel, *,
                 timeout: float = 10.0) -> None:
        self._keys = keys_service_pb2_grpc.KeysServiceStub(keys)
        self._messaging = messaging_service_pb2_grpc.MessagingServiceStub(messaging)
        self._notify = notification_service_pb2_grpc.NotificationServiceStub(messaging)
        self._audit = audit_service_pb2_grpc.AuditServiceStub(audit)
        self._timeout = timeout

    async def revoke_account_api_keys(self, account_id: int) -> int:
        resp = await self._keys.RevokeAccountApiKeys(
            kpb.RevokeAccountApiKeysRequest(account_id=account_id, reason="account_closing"), timeout=self._timeout)
        return len(resp.revoked_key_ids)

    async def stop_sends(self, account_id: int) -> int:
        resp = await self._messaging.StopAccountSends(
            mpb.StopAccountSendsRequest(account_id=account_id), timeout=self._timeout)
        return int(resp.cancelled)

    async def resume_sends(self, account_id: int) -> None:
        await self._messaging.ResumeAccountSends(mpb.ResumeAccountSendsRequest(account_id=account_id),
                                                 timeout=self._timeout)

    async def schedule_key_destruction(self, account_id: int, window_seconds: int) -> datetime | None:
        """When the keys will be destroyed (None: already scheduled). An account that never used its keys gets
        its ring made first, so that its destruction too ends with a signed receipt."""
        request = kpb.ScheduleAccountKeyDestructionRequest(account_id=account_id, pending_window_seconds=window_seconds)
        try:
            resp = await self._keys.ScheduleAccountKeyDestruction(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            reason = error_reason(err)
            if reason == "KEYS_PENDING_DESTRUCTION":
                return None
            if reason != "ACCOUNT_KEYS_NOT_FOUND":
                raise
            await self._keys.GenerateDataKeyWithoutPlaintext(
                kpb.GenerateDataKeyWithoutPlaintextRequest(account_id=account_id), timeout=self._timeout)
            resp = await self._keys.ScheduleAccountKeyDestruction(request, timeout=self._timeout)
        return resp.status.destroy_time.ToDatetime(tzinfo=UTC)

    async def cancel_key_destruction(self, account_id: int) -> None:
        try:
            await self._keys.CancelAccountKeyDestruction(
                kpb.CancelAccountKeyDestructionRequest(account_id=account_id), timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            reason = error_reason(err)
            if reason == "KEYS_DESTROYED":
                raise AccountClosed("too late: the account's keys are already destroyed") from None
            if reason not in ("NOT_PENDING_DESTRUCTION", "ACCOUNT_KEYS_NOT_FOUND"):
                raise

    async def purge_keys(self, account_id: int) -> tuple[bytes, bytes, str]:
        resp = await self._keys.PurgeAccountKeys(kpb.PurgeAccountKeysRequest(account_id=account_id),
                                                 timeout=self._timeout)
        return resp.receipt, resp.signature, resp.signing_key_id

    async def purge_messaging(self, account_id: int) -> int:
        resp = await self._messaging.PurgeAccountData(mpb.PurgeAccountDataRequest(account_id=account_id),
                                                      timeout=self._timeout)
        return int(resp.deleted_rows)

    async def purge_audit(self, account_id: int) -> int:
        resp = await self._audit.PurgeAccountConfig(
            audit_service_pb2.PurgeAccountConfigRequest(account_id=account_id), timeout=self._timeout)
        return int(resp.deleted_rows)

    async def send_receipt(self, account_id: int, to: str, receipt: tuple[bytes, bytes, str]) -> bool:
        """True when emailed; False when the platform has no email (nothing to retry)."""
        body, signature, key_id = receipt
        try:
            await self._notify.SendClosureReceipt(notification_service_pb2.SendClosureReceiptRequest(
                account_id=account_id, to=to, receipt=body, signature=signature, signing_key_id=key_id),
                timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            if error_reason(err) == "CHANNEL_NOT_AVAILABLE":
                return False
            raise
        return True
