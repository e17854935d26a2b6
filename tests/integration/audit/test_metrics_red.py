"""The svckit guard counts every RPC by method, gRPC code and reason and times it (issue 16), and every
process's /metrics carries its build, its certificate's expiry and its database pool - here the audit
service over real mTLS and PostgreSQL, scraped over plaintext HTTP like Prometheus does."""

from __future__ import annotations

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sendsafe.audit.v1 import audit_service_pb2 as pb
from tests.integration.audit.conftest import AuditFactory, event, principal

APPEND = "/sendsafe.audit.v1.AuditService/AppendEvents"
VERIFY = "/sendsafe.audit.v1.AuditService/VerifyLog"


async def _scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


async def test_every_rpc_is_counted_by_code_and_reason(make_audit: AuditFactory) -> None:
    audit = await make_audit(metrics_listen="127.0.0.1:0")
    port = audit.app.extras["metrics_port"]
    before = await _scrape(port)

    await audit.append(event(7401, "test.red"))
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await audit.stub("keys").VerifyLog(pb.VerifyLogRequest())  # only the gateway may ask to verify
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await audit.stub().VerifyLog(pb.VerifyLogRequest(), metadata=principal(1, "audit.read"))
    assert missing.value.code() == grpc.StatusCode.PERMISSION_DENIED

    after = await _scrape(port)

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert grew("sendsafe_rpc_requests_total", method=APPEND, code="OK", reason="") == 1
    assert grew("sendsafe_rpc_requests_total", method=VERIFY, code="PERMISSION_DENIED",
                reason="CALLER_NOT_ALLOWED") == 1
    assert grew("sendsafe_rpc_requests_total", method=VERIFY, code="PERMISSION_DENIED",
                reason="MISSING_PERMISSION") == 1
    assert grew("sendsafe_rpc_duration_seconds_count", method=VERIFY) == 2
    assert grew("sendsafe_rpc_duration_seconds_count", method=APPEND) == 1
    # Only methods, codes and reasons: no account, principal or peer in any label.
    rpc_labels = {k for (n, ls) in after if n == "sendsafe_rpc_requests_total" for k, _ in ls}
    assert rpc_labels == {"method", "code", "reason"}

    assert _value(after, "sendsafe_build_info", service="audit") == 1
    assert 0 < _value(after, "sendsafe_tls_cert_expiry_seconds", certificate="internal") < 10 * 366 * 86400
    assert _value(after, "sendsafe_db_pool_connections", state="max") >= 1
    assert ("sendsafe_audit_events_appended_total", frozenset()) in after  # the log's own figures too
