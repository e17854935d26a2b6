"""Per-request context carried in contextvars: who called (service and end user) and request ids."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from sendsafe.context.v1 import principal_pb2

PRINCIPAL_METADATA_KEY = "x-sendsafe-principal-bin"
REQUEST_ID_METADATA_KEY = "x-request-id"


@dataclass(frozen=True)
class CallContext:
    caller: str  # service name of the mTLS peer
    principal: principal_pb2.Principal | None
    request_id: str
    # The RPC is declared `privileged`: its audit events are stored before it answers (svckit.audit).
    privileged: bool = False


current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar("sendsafe_call", default=None)


def get() -> CallContext | None:
    return current.get()


def principal() -> principal_pb2.Principal | None:
    ctx = current.get()
    return ctx.principal if ctx else None


def privileged() -> bool:
    ctx = current.get()
    return ctx.privileged if ctx else False


def request_id() -> str:
    ctx = current.get()
    return ctx.request_id if ctx else ""
