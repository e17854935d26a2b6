"""gRPC edge of the keys service: protobuf <-> domain, nothing else."""

from __future__ import annotations

import grpc

from sendsafe.keys.v1 import keys_service_pb2, keys_service_pb2_grpc
from services.keys.service import Service


class KeysServicer(keys_service_pb2_grpc.KeysServiceServicer):
    def __init__(self, service: Service) -> None:
        self.service = service

    async def IssueApiKey(
        self, request: keys_service_pb2.IssueApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> keys_service_pb2.IssueApiKeyResponse:
        key_id, api_key = await self.service.issue_api_key(
            request.account_id, request.user_id, request.name, request.test_mode
        )
        return keys_service_pb2.IssueApiKeyResponse(key_id=key_id, api_key=api_key)

    async def VerifyApiKey(
        self, request: keys_service_pb2.VerifyApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> keys_service_pb2.VerifyApiKeyResponse:
        verified = await self.service.verify_api_key(request.api_key)
        return keys_service_pb2.VerifyApiKeyResponse(
            key_id=verified.key_id,
            account_id=verified.account_id,
            user_id=verified.user_id,
            scopes=list(verified.scopes),
        )

    async def RevokeUserApiKeys(
        self, request: keys_service_pb2.RevokeUserApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> keys_service_pb2.RevokeUserApiKeysResponse:
        revoked = await self.service.revoke_user_api_keys(
            request.account_id, request.user_id, request.keep_key_id, request.reason
        )
        return keys_service_pb2.RevokeUserApiKeysResponse(revoked_key_ids=revoked)

    async def GenerateDataKey(
        self, request: keys_service_pb2.GenerateDataKeyRequest, context: grpc.aio.ServicerContext
    ) -> keys_service_pb2.GenerateDataKeyResponse:
        plaintext, wrapped, version = await self.service.generate_data_key(request.account_id)
        return keys_service_pb2.GenerateDataKeyResponse(plaintext=plaintext, wrapped_key=wrapped, key_version=version)

    async def DecryptDataKey(
        self, request: keys_service_pb2.DecryptDataKeyRequest, context: grpc.aio.ServicerContext
    ) -> keys_service_pb2.DecryptDataKeyResponse:
        plaintext, version = await self.service.decrypt_data_key(request.account_id, request.wrapped_key)
        return keys_service_pb2.DecryptDataKeyResponse(plaintext=plaintext, key_version=version)
