"""The policy the protos declare is enforced by every service's own guard, not only by the gateway.

Each real service (identity, keys, messaging, audit) is called directly over mTLS with the gateway's
certificate, as a gateway that skipped its checks (or a bug in it) would. Every privileged external RPC and
every RPC that sets a standing destination is read from the descriptors, so a new one is covered without
editing this file:
- `privileged` on a session whose second factor is older than the step-up age: UNAUTHENTICATED,
  STEP_UP_REQUIRED (max_age in the ErrorInfo), recorded as a denial; a fresh second factor gets past it;
- `data_out: DATA_OUT_DESTINATION` for a de-identified user: PERMISSION_DENIED, DEIDENTIFIED_USER;
- `session_only` with an API key: PERMISSION_DENIED, SESSION_REQUIRED.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor, message_factory

from gateway.routes import service_modules
from sendsafe.audit.v1 import audit_service_pb2, audit_service_pb2_grpc
from sendsafe.context.v1 import principal_pb2
from svckit import context as callctx
from svckit.access import Access, access_for
from svckit.app import App
from svckit.rpcstatus import error_metadata, error_reason
from tests.conftest import channel_as
from tests.support import CertBundle, NewDatabase

STEP_UP_MAX_AGE = 300


def _external_rpcs() -> list[tuple[str, descriptor.MethodDescriptor, Access]]:
    out = []
    for module in service_modules():
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                rule = access_for(path)
                if rule is not None and method.GetOptions().HasExtension(annotations_pb2.http):
                    out.append((path, method, rule))
    return out


EXTERNAL = _external_rpcs()
PRIVILEGED = [(p, m, r) for p, m, r in EXTERNAL if r.privileged]
DESTINATIONS = [(p, m, r) for p, m, r in EXTERNAL if r.sets_destination]


def test_the_descriptors_declare_what_these_tests_cover() -> None:
    services = {m.containing_service.file.package.split(".")[1] for _, m, _ in PRIVILEGED}
    assert services == {"identity", "keys", "messaging", "audit"}, services
    assert {"UpdateMessagingSettings", "SetForwarding", "CreateAlertRule"} <= {m.name for _, m, _ in DESTINATIONS}


@pytest.fixture(scope="module")
async def ports(
    certs: CertBundle, new_database: NewDatabase, audit_app: App, redis_url: str, session_redis_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[dict[str, int]]:
    """Every service, real, in-process over mTLS (with the step-up age each reads from its settings)."""
    from services.identity.app import build as build_identity
    from services.keys.app import build as build_keys
    from services.keys.config import Settings as KeysSettings
    from services.messaging.app import build as build_messaging
    from services.messaging.config import Settings as MessagingSettings
    from tests.integration.identity.conftest import identity_settings

    audit = f"127.0.0.1:{audit_app.port}"
    prefix = session_redis_prefix + "guard:"
    key_file = tmp_path_factory.mktemp("guard-keys") / "root-key"
    key_file.write_text(os.urandom(32).hex())
    key_file.chmod(0o600)
    started: list[App] = []
    try:
        tls = certs.tls("keys")
        keys = await build_keys(KeysSettings(
            tls_cert_file=tls.cert, tls_key_file=tls.key, tls_ca_file=tls.ca,
            database_url=await new_database("guardkeys"), redis_url=redis_url, redis_prefix=prefix,
            audit_addr=audit, root_key_file=key_file, step_up_max_age_seconds=STEP_UP_MAX_AGE,
        ))
        started.append(keys)
        tls = certs.tls("messaging")
        messaging = await build_messaging(MessagingSettings(
            tls_cert_file=tls.cert, tls_key_file=tls.key, tls_ca_file=tls.ca,
            database_url=await new_database("guardmsg"), redis_url=redis_url, redis_prefix=prefix,
            audit_addr=audit, keys_addr=f"127.0.0.1:{keys.port}", db_pool_size=4,
            step_up_max_age_seconds=STEP_UP_MAX_AGE,
        ))
        started.append(messaging)
        identity = await build_identity(identity_settings(
            certs, await new_database("guardid"), audit_port=audit_app.port, messaging_port=messaging.port,
            keys_port=keys.port, step_up_max_age_seconds=STEP_UP_MAX_AGE,
        ))
        started.append(identity)
        yield {"identity": identity.port, "keys": keys.port, "messaging": messaging.port, "audit": audit_app.port}
    finally:
        for app in reversed(started):
            await app.stop()


def _principal(account_id: int, rule: Access, *, mfa_age: float | None, session: bool = True,
               deidentified: bool = False) -> tuple[tuple[str, bytes], ...]:
    p = principal_pb2.Principal(
        account_id=account_id, user_id=11, api_username="guarded", permissions=[rule.permission],
        auth_method=principal_pb2.AUTH_METHOD_SESSION if session else principal_pb2.AUTH_METHOD_API_KEY,
        session_id="ses_guard" if session else "", api_key_id="" if session else "key_guard",
        staff=rule.permission.startswith("staff."), sms_deidentify_message=deidentified, request_id="req-guard",
    )
    if mfa_age is not None:
        p.mfa_time.FromNanoseconds(int((time.time() - mfa_age) * 1e9))
    return ((callctx.PRINCIPAL_METADATA_KEY, p.SerializeToString()),)


async def _call(certs: CertBundle, ports: dict[str, int], method: descriptor.MethodDescriptor, path: str,
                metadata: tuple[tuple[str, bytes], ...]) -> grpc.aio.AioRpcError | None:
    """Call `path` with an empty request as the gateway; the refusal, or None when it was answered."""
    svc = method.containing_service.file.package.split(".")[1]
    request_cls: Any = message_factory.GetMessageClass(method.input_type)
    response_cls: Any = message_factory.GetMessageClass(method.output_type)
    async with channel_as(certs, "gateway", ports[svc], svc) as channel:
        call = channel.unary_unary(path, request_serializer=request_cls.SerializeToString,
                                   response_deserializer=response_cls.FromString)
        try:
            await call(request_cls(), metadata=metadata, timeout=20)
        except grpc.aio.AioRpcError as err:
            return err
    return None


@pytest.mark.parametrize("path", [p for p, _, _ in PRIVILEGED])
async def test_a_stale_second_factor_is_refused_by_the_service_itself(
    path: str, certs: CertBundle, ports: dict[str, int]
) -> None:
    _, method, rule = next(x for x in PRIVILEGED if x[0] == path)
    account = 700_000_000 + secrets.randbelow(100_000_000)
    for age in (STEP_UP_MAX_AGE + 5, None):  # too old, and never
        err = await _call(certs, ports, method, path, _principal(account, rule, mfa_age=age))
        assert err is not None, f"{path} answered a session whose second factor is {age} s old"
        assert (err.code(), error_reason(err)) == (grpc.StatusCode.UNAUTHENTICATED, "STEP_UP_REQUIRED"), err
        assert error_metadata(err) == {"max_age": str(STEP_UP_MAX_AGE)}
        assert "POST /v1/auth/step-up" in (err.details() or "")

    fresh = await _call(certs, ports, method, path, _principal(account, rule, mfa_age=5))
    assert fresh is None or error_reason(fresh) not in ("STEP_UP_REQUIRED", "DEIDENTIFIED_USER"), fresh
    # An API key is a machine credential: scoped, not stepped up.
    key = await _call(certs, ports, method, path, _principal(account, rule, mfa_age=None, session=False))
    assert key is None or error_reason(key) != "STEP_UP_REQUIRED", key


async def test_each_service_records_its_step_up_refusals(
    certs: CertBundle, ports: dict[str, int], audit_app: App
) -> None:
    account = 800_000_000 + secrets.randbelow(100_000_000)
    wanted = {}
    for path, method, rule in PRIVILEGED:
        svc = method.containing_service.file.package.split(".")[1]
        if svc not in wanted:
            wanted[svc] = path
            await _call(certs, ports, method, path, _principal(account, rule, mfa_age=STEP_UP_MAX_AGE * 2))
    reader = principal_pb2.Principal(account_id=account, user_id=1, permissions=["audit.read"],
                                     auth_method=principal_pb2.AUTH_METHOD_API_KEY)
    async with channel_as(certs, "gateway", audit_app.port, "audit") as channel:
        stub = audit_service_pb2_grpc.AuditServiceStub(channel)
        deadline = time.monotonic() + 20
        while True:
            page = await stub.ListEvents(
                audit_service_pb2.ListEventsRequest(action="rpc.denied", page_size=100),
                metadata=((callctx.PRINCIPAL_METADATA_KEY, reader.SerializeToString()),),
            )
            seen = {e.service: e.resource.id for e in page.events if e.error_reason == "STEP_UP_REQUIRED"}
            if seen == wanted or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    assert seen == wanted


@pytest.mark.parametrize("path", [p for p, _, _ in DESTINATIONS])
async def test_a_deidentified_user_cannot_set_a_destination(
    path: str, certs: CertBundle, ports: dict[str, int]
) -> None:
    """Pointing a webhook, forwarding or alert at an outside destination would send data there unmasked."""
    _, method, rule = next(x for x in DESTINATIONS if x[0] == path)
    account = 900_000_000 + secrets.randbelow(100_000_000)
    for session in (True, False):
        err = await _call(certs, ports, method, path,
                          _principal(account, rule, mfa_age=5, session=session, deidentified=True))
        assert err is not None, f"{path} let a de-identified user set a destination"
        assert (err.code(), error_reason(err)) == (grpc.StatusCode.PERMISSION_DENIED, "DEIDENTIFIED_USER"), err
        assert "ask an unrestricted user" in (err.details() or "")


SESSION_ONLY = [(p, m, r) for p, m, r in EXTERNAL if r.session_only]


@pytest.mark.parametrize("path", [p for p, _, _ in SESSION_ONLY])
async def test_a_session_only_rpc_refuses_an_api_key_in_the_service_itself(
    path: str, certs: CertBundle, ports: dict[str, int]
) -> None:
    """One's own password, second factors and sessions are never changed with an API key, whatever the gateway
    let through: a leaked key must not lock the owner out."""
    _, method, rule = next(x for x in SESSION_ONLY if x[0] == path)
    account = 600_000_000 + secrets.randbelow(100_000_000)
    err = await _call(certs, ports, method, path, _principal(account, rule, mfa_age=5, session=False))
    assert err is not None, f"{path} answered an API key"
    assert (err.code(), error_reason(err)) == (grpc.StatusCode.PERMISSION_DENIED, "SESSION_REQUIRED"), err
    assert "POST /v1/auth/login" in (err.details() or "")
