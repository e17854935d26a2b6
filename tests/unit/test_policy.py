"""The security policy the protos declare is consistent: what a rule implies is declared with it.

Every RPC of every service is read from the descriptors, so a new RPC is checked without editing this file.
"""

from __future__ import annotations

from google.api import annotations_pb2

from gateway.routes import service_modules
from sendsafe.options.v1 import options_pb2
from svckit.access import Access, access_for


def _every_rpc() -> dict[str, Access | None]:
    out: dict[str, Access | None] = {}
    for module in service_modules():
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                out[path] = access_for(path)
    return out


def _external(path: str) -> bool:
    name = path.lstrip("/").replace("/", ".")
    for module in service_modules():
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if method.full_name == name:
                    return method.GetOptions().HasExtension(annotations_pb2.http)
    raise AssertionError(path)


RPCS = _every_rpc()


def test_the_descriptors_are_read() -> None:
    assert len(RPCS) > 50
    assert all(rule is not None for rule in RPCS.values()), [p for p, r in RPCS.items() if r is None]


def test_every_rpc_that_moves_data_out_is_privileged() -> None:
    """A URL, a standing destination or a secret in the answer: a stolen session without a recent second
    factor must not be able to use it, and its audit event is written before it takes effect."""
    loose = [p for p, r in RPCS.items() if r is not None and r.data_out and not r.privileged]
    assert not loose, f"these RPCs move data out of the platform but are not privileged: {loose}"


def test_data_out_is_declared_where_it_is_known_to_be_needed() -> None:
    """The routes that configure webhooks, forwarding, alert destinations or hand out secrets declare it."""
    destination = {p.rsplit("/", 1)[1] for p, r in RPCS.items() if r and r.data_out == options_pb2.DATA_OUT_DESTINATION}
    secret = {p.rsplit("/", 1)[1] for p, r in RPCS.items() if r and r.data_out == options_pb2.DATA_OUT_SECRET}
    assert {"SetForwarding", "CreateAlertRule", "UpdateAlertRule", "UpdateMessagingSettings"} <= destination
    assert {"CreateApiKey", "RollApiKey", "RegenerateSubaccountApiKey", "CreateSubaccount", "GetWebhookSecret",
            "RotateWebhookSecret", "RegenerateRecoveryCodes"} <= secret


def test_public_rpcs_declare_no_permission_and_are_not_privileged() -> None:
    for path, rule in RPCS.items():
        assert rule is not None
        if rule.public:
            assert not rule.permission and not rule.privileged and not rule.data_out, path


def test_external_rpcs_declare_a_permission_unless_public() -> None:
    for path, rule in RPCS.items():
        assert rule is not None
        if _external(path):
            assert rule.public or rule.permission, f"{path} is reachable from outside without a permission"
            assert "gateway" in rule.allowed_callers, path


def test_session_only_rpcs_are_the_self_service_ones() -> None:
    """One's own password, second factors and sessions: never through an API key (a leaked key must not change
    them). Every RPC of the self-service permission declares it, and no public RPC does."""
    for path, rule in RPCS.items():
        assert rule is not None
        if rule.permission == "self.manage":
            assert rule.session_only, f"{path} changes one's own credentials or sessions but is not session_only"
        if rule.session_only:
            assert not rule.public and rule.permission, path
