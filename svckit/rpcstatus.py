"""Reading a SendSafe error back from a failed gRPC call: the google.rpc.Status in the
`grpc-status-details-bin` trailer (decoded by `grpc_status`) and its `ErrorInfo` (reason, domain, metadata).

A missing, malformed or inconsistent trailer (a transport failure, a proxy, a foreign server) reads as
absent: callers then fall back to the status code alone. The one place that writes these details is
svckit/server.py.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DETAILS_METADATA_KEY = "grpc-status-details-bin"


def rich_status(err: object, *, consistent: bool = True) -> status_pb2.Status | None:
    """The google.rpc.Status a failed call (`grpc.RpcError` / `grpc.aio.AioRpcError`) carries, or None.
    `consistent=False` also accepts a status whose code or message differ from the call's own (the gateway
    trusts a status by its ErrorInfo's domain instead)."""
    if not hasattr(err, "trailing_metadata") or not hasattr(err, "code"):
        return None
    try:
        if consistent:
            return rpc_status.from_call(err)
        for key, value in err.trailing_metadata() or ():
            if key == DETAILS_METADATA_KEY:
                return status_pb2.Status.FromString(value)
        return None
    except (ValueError, DecodeError, TypeError, AttributeError):
        return None


def error_info(err: object, *, consistent: bool = True) -> error_details_pb2.ErrorInfo | None:
    """The first ErrorInfo of a failed call's rich status, or None."""
    status = rich_status(err, consistent=consistent)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def error_reason(err: object, *, consistent: bool = True) -> str:
    """The ErrorInfo reason of a failed call ("" when it carries none)."""
    info = error_info(err, consistent=consistent)
    return str(info.reason) if info is not None else ""


def error_metadata(err: object) -> dict[str, str]:
    """The ErrorInfo metadata of a failed call ({} when it carries none)."""
    info = error_info(err)
    return dict(info.metadata) if info is not None else {}
