"""gRPC edge of the keys service: protobuf <-> domain, nothing else."""

from __future__ import annotations

from datetime import datetime

import grpc
from google.protobuf import timestamp_pb2

from sendsafe.context.v1 import principal_pb2
from sendsafe.keys.v1 import keys_service_pb2 as pb
from sendsafe.keys.v1 import keys_service_pb2_grpc
from services.keys.domain.api_key_format import key_prefix
from services.keys.domain.api_keys import ApiKeyRecord, Caller
from services.keys.domain.errors import PrincipalRequired
from services.keys.domain.restrictions import SendLimits, check_send_limits
from services.keys.service.api_keys import ApiKeyService
from services.keys.service.key_rings import AccountStatus, KeyRingService
from services.keys.service.key_usage import KeyUsage, KeyUsageInvalid
from svckit import context as callctx
from svckit.times import to_datetime

_KEY_STATES = {
    "active": pb.API_KEY_STATE_ACTIVE,
    "expired": pb.API_KEY_STATE_EXPIRED,
    "revoked": pb.API_KEY_STATE_REVOKED,
}
_RING_STATES = {
    "enabled": pb.ACCOUNT_KEY_STATE_ENABLED,
    "pending_destruction": pb.ACCOUNT_KEY_STATE_PENDING_DESTRUCTION,
    "destroyed": pb.ACCOUNT_KEY_STATE_DESTROYED,
}
_VERSION_STATES = {
    "primary": pb.KEY_VERSION_STATE_PRIMARY,
    "enabled": pb.KEY_VERSION_STATE_ENABLED,
    "retired": pb.KEY_VERSION_STATE_RETIRED,
    "destroyed": pb.KEY_VERSION_STATE_DESTROYED,
}


def _ts(when: datetime | None) -> timestamp_pb2.Timestamp | None:
    if when is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


def _dt(msg: object, field: str) -> datetime | None:
    if not msg.HasField(field):  # type: ignore[attr-defined]
        return None
    ts: timestamp_pb2.Timestamp = getattr(msg, field)
    return to_datetime(ts, field)


def caller() -> Caller:
    """The end user behind this call, from the principal the gateway forwarded."""
    p = callctx.principal()
    if p is None or p.account_id <= 0 or p.user_id <= 0:
        raise PrincipalRequired("this call needs an authenticated customer")
    key_id = p.api_key_id if p.auth_method == principal_pb2.AUTH_METHOD_API_KEY else ""
    return Caller(p.account_id, p.user_id, frozenset(p.permissions), p.test_mode, key_id)


def limits_to_proto(limits: SendLimits) -> pb.SendLimits:
    return pb.SendLimits(
        messages_per_minute=limits.per_minute,
        messages_per_day=limits.per_day,
        allowed_countries=list(limits.countries),
        allowed_senders=list(limits.senders),
    )


def limits_from_proto(msg: pb.SendLimits) -> SendLimits:
    return check_send_limits(msg.messages_per_minute, msg.messages_per_day, msg.allowed_countries,
                             msg.allowed_senders)


def api_key_to_proto(r: ApiKeyRecord, now: datetime) -> pb.ApiKey:
    return pb.ApiKey(
        key_id=r.key_id,
        name=r.name,
        prefix=key_prefix(r.test_mode, r.key_id),
        test_mode=r.test_mode,
        user_id=r.user_id,
        scopes=list(r.scopes),
        state=_KEY_STATES[r.state(now)],
        create_time=_ts(r.create_time),
        expire_time=_ts(r.expire_time),
        revoke_time=_ts(r.revoke_time),
        last_used_time=_ts(r.last_used_time),
        last_used_address=r.last_used_address,
        allowed_cidrs=list(r.allowed_cidrs),
        send_limits=limits_to_proto(r.send_limits),
        rolled_from_key_id=r.rolled_from,
        rolled_to_key_id=r.rolled_to,
        created_by_key_id=r.created_by,
    )


def status_to_proto(s: AccountStatus) -> pb.AccountKeyStatus:
    ring = s.ring
    return pb.AccountKeyStatus(
        account_id=ring.account_id,
        state=_RING_STATES[ring.state.value],
        current_version=ring.current_version,
        min_decryption_version=ring.min_decryption_version,
        rotation_period_seconds=ring.rotation_period_seconds,
        next_rotation_time=_ts(s.next_rotation_time),
        versions=[
            pb.KeyVersion(
                version=v.version,
                state=_VERSION_STATES[ring.version_state(v.version, v.wrapped is None)],
                create_time=_ts(v.create_time),
                root_key_id=v.wrapped.key_id if v.wrapped is not None else "",
            )
            for v in s.versions
        ],
        destroy_time=_ts(ring.destroy_time),
    )


class KeysServicer(keys_service_pb2_grpc.KeysServiceServicer):
    def __init__(self, api_keys: ApiKeyService, rings: KeyRingService, usage: KeyUsage) -> None:
        self.api_keys = api_keys
        self.rings = rings
        self.usage = usage

    # -- customer API keys ---------------------------------------------------------------------------------

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateApiKeyResponse:
        record, secret = await self.api_keys.create_api_key(
            caller(),
            name=request.name,
            scopes=list(request.scopes),
            expire_time=_dt(request, "expire_time"),
            allowed_cidrs=list(request.allowed_cidrs),
            send_limits=limits_from_proto(request.send_limits),
        )
        return pb.CreateApiKeyResponse(api_key=api_key_to_proto(record, self.api_keys.now()), secret=secret)

    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListApiKeysResponse:
        records, token = await self.api_keys.list_api_keys(
            caller(), request.page_size, request.page_token, request.show_inactive
        )
        now = self.api_keys.now()
        return pb.ListApiKeysResponse(api_keys=[api_key_to_proto(r, now) for r in records], next_page_token=token)

    async def ListAccountApiKeys(
        self, request: pb.ListAccountApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAccountApiKeysResponse:
        records, token = await self.api_keys.list_account_api_keys(
            request.account_id, request.page_size, request.page_token)
        now = self.api_keys.now()
        return pb.ListAccountApiKeysResponse(api_keys=[api_key_to_proto(r, now) for r in records],
                                             next_page_token=token)

    async def GetApiKey(self, request: pb.GetApiKeyRequest, context: grpc.aio.ServicerContext) -> pb.GetApiKeyResponse:
        record = await self.api_keys.get_api_key(caller(), request.key_id)
        return pb.GetApiKeyResponse(api_key=api_key_to_proto(record, self.api_keys.now()))

    async def RevokeApiKey(
        self, request: pb.RevokeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.RevokeApiKeyResponse:
        record = await self.api_keys.revoke_api_key(caller(), request.key_id)
        return pb.RevokeApiKeyResponse(api_key=api_key_to_proto(record, self.api_keys.now()))

    async def RollApiKey(
        self, request: pb.RollApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.RollApiKeyResponse:
        new, secret, old = await self.api_keys.roll_api_key(
            caller(), request.key_id, request.overlap_seconds, _dt(request, "expire_time")
        )
        now = self.api_keys.now()
        return pb.RollApiKeyResponse(
            api_key=api_key_to_proto(new, now), secret=secret, previous=api_key_to_proto(old, now)
        )

    async def ListReceiptSigningKeys(
        self, request: pb.ListReceiptSigningKeysRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListReceiptSigningKeysResponse:
        keys = await self.rings.list_receipt_signing_keys()
        return pb.ListReceiptSigningKeysResponse(
            keys=[
                pb.ReceiptSigningKey(key_id=k, algorithm="ed25519", public_key=pub, create_time=_ts(t))
                for k, pub, t in keys
            ]
        )

    # -- API keys, internal ----------------------------------------------------------------------------------

    async def IssueApiKey(
        self, request: pb.IssueApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.IssueApiKeyResponse:
        key_id, api_key, expire_time = await self.api_keys.issue_api_key(
            request.account_id, request.user_id, request.name, request.test_mode
        )
        return pb.IssueApiKeyResponse(key_id=key_id, api_key=api_key, expire_time=_ts(expire_time))

    async def VerifyApiKey(
        self, request: pb.VerifyApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.VerifyApiKeyResponse:
        v = await self.api_keys.verify_api_key(request.api_key, request.client_address)
        return pb.VerifyApiKeyResponse(
            key_id=v.key_id,
            account_id=v.account_id,
            user_id=v.user_id,
            scopes=list(v.scopes),
            send_limits=limits_to_proto(v.send_limits),
            expire_time=_ts(v.expire_time),
            valid_for_seconds=v.valid_for_seconds,
            limits_key_id=v.limits_bucket,
        )

    async def CheckApiKey(self, request: pb.CheckApiKeyRequest, context: grpc.aio.ServicerContext
                          ) -> pb.CheckApiKeyResponse:
        record = await self.api_keys.check_api_key(request.account_id, request.user_id, request.key_id)
        if record is None:
            return pb.CheckApiKeyResponse(active=False)
        return pb.CheckApiKeyResponse(active=True, key_id=record.key_id, scopes=list(record.scopes))

    async def RevokeUserApiKeys(
        self, request: pb.RevokeUserApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> pb.RevokeUserApiKeysResponse:
        revoked = await self.api_keys.revoke_user_api_keys(
            request.account_id, request.user_id, request.keep_key_id, request.reason
        )
        return pb.RevokeUserApiKeysResponse(revoked_key_ids=revoked)

    async def RevokeAccountApiKeys(
        self, request: pb.RevokeAccountApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> pb.RevokeAccountApiKeysResponse:
        revoked = await self.api_keys.revoke_account_api_keys(request.account_id, request.reason)
        return pb.RevokeAccountApiKeysResponse(revoked_key_ids=revoked)

    async def PurgeAccountKeys(
        self, request: pb.PurgeAccountKeysRequest, context: grpc.aio.ServicerContext
    ) -> pb.PurgeAccountKeysResponse:
        (body, signature, key_id), deleted = await self.rings.purge_account(request.account_id)
        return pb.PurgeAccountKeysResponse(receipt=body, signature=signature, signing_key_id=key_id,
                                           deleted_api_keys=deleted)

    async def ReportLeakedApiKeys(
        self, request: pb.ReportLeakedApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReportLeakedApiKeysResponse:
        report = await self.api_keys.report_leaked_api_keys(list(request.candidates), request.source)
        return pb.ReportLeakedApiKeysResponse(
            revoked_key_ids=report.revoked, inactive_key_ids=report.inactive, not_keys=report.not_keys
        )

    # -- data keys and encryption ---------------------------------------------------------------------------

    async def GenerateDataKey(
        self, request: pb.GenerateDataKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateDataKeyResponse:
        plaintext, wrapped, version = await self.rings.generate_data_key(
            request.account_id, dict(request.encryption_context)
        )
        return pb.GenerateDataKeyResponse(plaintext=plaintext, wrapped_key=wrapped, key_version=version)

    async def GenerateDataKeyWithoutPlaintext(
        self, request: pb.GenerateDataKeyWithoutPlaintextRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateDataKeyWithoutPlaintextResponse:
        wrapped, version = await self.rings.generate_data_key_without_plaintext(
            request.account_id, dict(request.encryption_context)
        )
        return pb.GenerateDataKeyWithoutPlaintextResponse(wrapped_key=wrapped, key_version=version)

    async def DecryptDataKey(
        self, request: pb.DecryptDataKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.DecryptDataKeyResponse:
        plaintext, version = await self.rings.decrypt_data_key(
            request.account_id, request.wrapped_key, dict(request.encryption_context)
        )
        return pb.DecryptDataKeyResponse(plaintext=plaintext, key_version=version)

    async def Encrypt(self, request: pb.EncryptRequest, context: grpc.aio.ServicerContext) -> pb.EncryptResponse:
        ciphertext, version = await self.rings.encrypt(
            request.account_id, request.plaintext, dict(request.encryption_context)
        )
        return pb.EncryptResponse(ciphertext=ciphertext, key_version=version)

    async def Decrypt(self, request: pb.DecryptRequest, context: grpc.aio.ServicerContext) -> pb.DecryptResponse:
        plaintext, version = await self.rings.decrypt(
            request.account_id, request.ciphertext, dict(request.encryption_context)
        )
        return pb.DecryptResponse(plaintext=plaintext, key_version=version)

    async def Rewrap(self, request: pb.RewrapRequest, context: grpc.aio.ServicerContext) -> pb.RewrapResponse:
        outcomes, current = await self.rings.rewrap(
            request.account_id, [(i.reference, i.blob, dict(i.encryption_context)) for i in request.items]
        )
        return pb.RewrapResponse(
            results=[
                pb.RewrapResult(
                    reference=o.reference, blob=o.blob, key_version=o.version, changed=o.changed,
                    error_reason=o.error_reason,
                )
                for o in outcomes
            ],
            current_version=current,
        )

    # -- key management ---------------------------------------------------------------------------------------

    async def GetAccountKeyStatus(
        self, request: pb.GetAccountKeyStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAccountKeyStatusResponse:
        status = await self.rings.account_key_status(request.account_id)
        owners = []
        for service, start, versions in await self.usage.of_account(request.account_id):
            owner = pb.DataOwnerUsage(service=service, usage=[
                pb.KeyUsage(account_id=request.account_id, key_version=v, items=n) for v, n in versions.items()])
            if start is not None:
                owner.pass_start_time.FromDatetime(start)
            owners.append(owner)
        return pb.GetAccountKeyStatusResponse(status=status_to_proto(status), data_owners=owners)

    async def RotateAccountKey(
        self, request: pb.RotateAccountKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.RotateAccountKeyResponse:
        status = await self.rings.rotate_account_key(request.account_id)
        return pb.RotateAccountKeyResponse(status=status_to_proto(status))

    async def SetAccountKeyPolicy(
        self, request: pb.SetAccountKeyPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetAccountKeyPolicyResponse:
        status = await self.rings.set_account_key_policy(
            request.account_id,
            request.rotation_period_seconds if request.HasField("rotation_period_seconds") else None,
            request.min_decryption_version if request.HasField("min_decryption_version") else None,
        )
        return pb.SetAccountKeyPolicyResponse(status=status_to_proto(status))

    async def ScheduleAccountKeyDestruction(
        self, request: pb.ScheduleAccountKeyDestructionRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScheduleAccountKeyDestructionResponse:
        ctx = callctx.get()
        status = await self.rings.schedule_destruction(
            request.account_id, request.pending_window_seconds, ctx.caller if ctx else ""
        )
        return pb.ScheduleAccountKeyDestructionResponse(status=status_to_proto(status))

    async def CancelAccountKeyDestruction(
        self, request: pb.CancelAccountKeyDestructionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelAccountKeyDestructionResponse:
        status = await self.rings.cancel_destruction(request.account_id)
        return pb.CancelAccountKeyDestructionResponse(status=status_to_proto(status))

    async def GetRootKeyStatus(
        self, request: pb.GetRootKeyStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetRootKeyStatusResponse:
        current, usage = await self.rings.root_key_status()
        return pb.GetRootKeyStatusResponse(
            current_root_key_id=current,
            usage=[
                pb.RootKeyUsage(root_key_id=u.root_key_id, current=u.current, wrapped_keys=u.wrapped_keys,
                                api_key_hashes=u.api_key_hashes)
                for u in usage
            ],
        )

    async def ReportKeyUsage(
        self, request: pb.ReportKeyUsageRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReportKeyUsageResponse:
        ctx = callctx.get()
        start = _dt(request, "pass_start_time")
        if start is None:
            raise KeyUsageInvalid("pass_start_time is required")
        accepted = await self.usage.report(
            ctx.caller if ctx else "", start, [(u.account_id, u.key_version, u.items) for u in request.usage]
        )
        return pb.ReportKeyUsageResponse(accepted=accepted)

    async def RunKeyMaintenance(
        self, request: pb.RunKeyMaintenanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.RunKeyMaintenanceResponse:
        report = await self.rings.run_maintenance()
        return pb.RunKeyMaintenanceResponse(
            rotated_accounts=report.rotated, destroyed_accounts=report.destroyed,
            rewrapped_keys=report.rewrapped, remaining_to_rewrap=report.remaining,
        )
