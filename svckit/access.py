"""The access rules the protos declare, read from the generated descriptors."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from google.protobuf import descriptor_pool

from sendsafe.options.v1 import options_pb2


@dataclass(frozen=True)
class Access:
    allowed_callers: frozenset[str]
    permission: str
    privileged: bool
    # How the RPC can move data out of the platform (options_pb2.DataOut; 0: it does not).
    data_out: int = 0
    public: bool = False
    # Only an interactive session may call it (one's own password, second factors, sessions).
    session_only: bool = False
    # Concurrent calls may travel together in one BatchService.CallBatch (svckit.batching), each checked alone.
    coalesce: bool = False

    @property
    def sets_destination(self) -> bool:
        return self.data_out == options_pb2.DATA_OUT_DESTINATION


@cache
def access_for(method_path: str) -> Access | None:
    """Rules for `/pkg.Service/Method`; None if the method is unknown or declares none (deny)."""
    name = method_path.lstrip("/").replace("/", ".")
    try:
        method = descriptor_pool.Default().FindMethodByName(name)
    except KeyError:
        return None
    opts = method.GetOptions()
    if not opts.HasExtension(options_pb2.access):
        return None
    rule = opts.Extensions[options_pb2.access]
    return Access(frozenset(rule.allowed_callers), rule.permission, rule.privileged, rule.data_out, rule.public,
                  rule.session_only, rule.coalesce)


# -- the rules every guard applies (svckit.server in each service, and the gateway before it calls one) -------

STEP_UP_REQUIRED = "STEP_UP_REQUIRED"
SESSION_REQUIRED = "SESSION_REQUIRED"
SESSION_REQUIRED_MESSAGE = "this needs a session, not an API key: log in with POST /v1/auth/login"
DEIDENTIFIED_USER = "DEIDENTIFIED_USER"
DEIDENTIFIED_MESSAGE = (
    "a de-identified user cannot send data to a destination outside the platform; ask an unrestricted user"
)


def second_factor_within(mfa_seconds: float | None, max_age_seconds: int, now: float) -> bool:
    """RFC 9470 max_age: a second factor verified at `mfa_seconds` (epoch; None: never) is recent enough."""
    return mfa_seconds is not None and now - mfa_seconds <= max_age_seconds


def destination_refused(access: Access, deidentified: bool) -> bool:
    """A de-identified user (sms_deidentify_message) may not set a standing destination (a webhook URL, a
    forwarding URL, an alert number): data sent there later would leave the platform unmasked."""
    return deidentified and access.sets_destination
