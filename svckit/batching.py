"""Coalescing: concurrent calls of RPCs that declare `coalesce` travel together in one
`sendsafe.batch.v1.BatchService/CallBatch`, so the per-call costs of gRPC (a stream, its metadata, a
wake-up and a task on each side) are paid once per batch instead of once per call.

Both ends live here:
- `Coalescer` (the caller, the gateway): `call()` queues one call; while fewer than `max_in_flight` batches
  are on their way the queue leaves at the next turn of the event loop, otherwise it waits for one to come
  back, so an idle system adds no delay and a busy one sends fuller batches. The latency added is bounded by
  one batch's round trip.
- `BatchServicer` (every server that has such an RPC; `svckit.server.start_server` adds it): runs each call
  through the server's own guard with the call's own metadata and the batch's mTLS peer, exactly as if it had
  come alone (its caller, permission, step-up and de-identification checks, its audit, its metrics, its trace,
  its error mapping), concurrently, and answers each in order. One call's failure never fails another.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from sendsafe.batch.v1 import batch_service_pb2 as pb
from sendsafe.batch.v1 import batch_service_pb2_grpc
from svckit.rpcstatus import DETAILS_METADATA_KEY

CALL_BATCH = "/sendsafe.batch.v1.BatchService/CallBatch"
SERVICE_NAME = "sendsafe.batch.v1.BatchService"
_CODES = {code.value[0]: code for code in grpc.StatusCode}

Metadata = Sequence[tuple[str, str | bytes]]
Guarded = Callable[[Any, Any], Awaitable[Any]]


# ---------------------------------------------------------------------------------------------- caller side


class Coalescer:
    """Sends the calls made on `channel` at about the same time as one CallBatch (see the module doc)."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float, max_batch: int = 64,
                 max_in_flight: int = 2) -> None:
        self._call = channel.unary_unary(
            CALL_BATCH, request_serializer=pb.CallBatchRequest.SerializeToString,
            response_deserializer=pb.CallBatchResponse.FromString,
        )
        self._timeout = timeout
        self._max_batch = max(1, max_batch)
        self._max_in_flight = max(1, max_in_flight)
        self._pending: list[tuple[pb.Call, asyncio.Future[pb.CallResult]]] = []
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()  # the batches on their way (kept from the collector)

    async def call(self, method: str, request: bytes, metadata: Metadata) -> bytes:
        """The serialized response of `method`, or the AioRpcError it failed with (the batch's own when the
        whole batch failed in transport). A cancelled caller's call still runs: it may already be stored."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[pb.CallResult] = loop.create_future()
        entries = [pb.Metadatum(key=k, value=v if isinstance(v, bytes) else v.encode()) for k, v in metadata]
        self._pending.append((pb.Call(method=method, request=request, metadata=entries), fut))
        self._schedule(loop)
        return result_or_raise(await asyncio.shield(fut))

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._scheduled and self._pending and self._in_flight < self._max_in_flight:
            self._scheduled = True
            loop.call_soon(self._flush)  # every call made during this turn of the loop joins the batch

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending and self._in_flight < self._max_in_flight:
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch:]
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[pb.Call, asyncio.Future[pb.CallResult]]]) -> None:
        try:
            reply = await self._call(pb.CallBatchRequest(calls=[call for call, _ in batch]), timeout=self._timeout)
            if len(reply.results) != len(batch):
                raise _mismatch(len(batch), len(reply.results))
        except Exception as exc:  # the whole batch failed in transport: each call fails as it would have alone
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
        else:
            for (_, fut), result in zip(batch, reply.results, strict=True):
                if not fut.done():
                    fut.set_result(result)
        finally:
            self._in_flight -= 1
            self._schedule(asyncio.get_running_loop())


def result_or_raise(result: pb.CallResult) -> bytes:
    """A call's serialized response, or the AioRpcError it failed with (its rich status kept, so the caller
    maps it exactly as a call that came back alone)."""
    if result.status_code == 0:
        return bytes(result.response)
    trailing = grpc.aio.Metadata()
    if result.status_details:
        trailing.add(DETAILS_METADATA_KEY, bytes(result.status_details))
    raise grpc.aio.AioRpcError(_CODES.get(result.status_code, grpc.StatusCode.UNKNOWN), grpc.aio.Metadata(),
                               trailing, details=result.status_message)


def _mismatch(sent: int, got: int) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                details=f"a batch of {sent} calls came back with {got} results")


# ---------------------------------------------------------------------------------------------- server side


class _Aborted(grpc.aio.AbortError):  # type: ignore[misc]
    """One call inside a batch ended with a status (the guard lets AbortError through untouched)."""


@dataclass(frozen=True)
class _Status:
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


class _CallContext:
    """The ServicerContext of one call inside a batch: its own metadata; the batch's peer, auth context and
    deadline; an abort ends this call alone, with its status."""

    def __init__(self, outer: grpc.aio.ServicerContext, metadata: tuple[tuple[str, str | bytes], ...],
                 auth: Mapping[str, Any], peer: str) -> None:
        self._outer = outer
        self._metadata = metadata
        self._auth = auth
        self._peer = peer
        self._code: grpc.StatusCode | None = None
        self.status: Any = None

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    def auth_context(self) -> Mapping[str, Any]:
        return self._auth

    def peer(self) -> str:
        return self._peer

    def time_remaining(self) -> float | None:
        return self._outer.time_remaining()  # type: ignore[no-any-return]

    def code(self) -> grpc.StatusCode | None:
        return self._code

    async def abort_with_status(self, status: Any) -> None:
        self._code, self.status = status.code, status
        raise _Aborted()

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Metadata = ()) -> None:
        await self.abort_with_status(_Status(code, details, tuple(trailing_metadata)))


class BatchServicer(batch_service_pb2_grpc.BatchServiceServicer):
    """Runs each call of a batch through `guard(method, handler)` (the server's own guard, batched)."""

    def __init__(self, handlers: Mapping[str, grpc.RpcMethodHandler],
                 guard: Callable[[str, Guarded], Guarded]) -> None:
        self._calls: dict[str, tuple[Callable[[bytes], Any], Callable[[Any], bytes], Guarded]] = {
            method: (h.request_deserializer, h.response_serializer, guard(method, h.unary_unary))
            for method, h in handlers.items()
            if h.unary_unary is not None and h.request_deserializer and h.response_serializer
        }

    async def CallBatch(self, request: pb.CallBatchRequest, context: grpc.aio.ServicerContext
                        ) -> pb.CallBatchResponse:
        # Each call in its own task: its call context, trace and abort status are its own (contextvars). The
        # batch's mTLS peer is every call's: read once.
        auth, peer = context.auth_context(), str(context.peer())
        results = await asyncio.gather(*(self._run(call, context, auth, peer) for call in request.calls))
        return pb.CallBatchResponse(results=results)

    async def _run(self, call: pb.Call, outer: grpc.aio.ServicerContext, auth: Mapping[str, Any], peer: str
                   ) -> pb.CallResult:
        entry = self._calls.get(call.method)
        if entry is None:
            return pb.CallResult(status_code=grpc.StatusCode.UNIMPLEMENTED.value[0],
                                 status_message=f"{call.method} is not served here")
        deserialize, serialize, guarded = entry
        metadata = tuple(
            (m.key, bytes(m.value) if m.key.endswith("-bin") else m.value.decode("ascii", "replace"))
            for m in call.metadata
        )
        ctx = _CallContext(outer, metadata, auth, peer)
        try:
            message = deserialize(call.request)
        except DecodeError:
            return pb.CallResult(status_code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
                                 status_message="the call's request does not parse")
        try:
            return pb.CallResult(response=serialize(await guarded(message, ctx)))
        except _Aborted:
            return _status_result(ctx.status)


def _status_result(status: Any) -> pb.CallResult:
    details = b""
    for key, value in getattr(status, "trailing_metadata", None) or ():
        if key == DETAILS_METADATA_KEY:
            details = value
    code = status.code if isinstance(status.code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    return pb.CallResult(status_code=code.value[0], status_message=str(status.details or ""),
                         status_details=details)


class HandlerRecorder:
    """Stands for a grpc.aio.Server while servicers are added to it, and keeps their method handlers."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        for name, handler in handlers.items():
            self.handlers[f"/{service}/{name}"] = handler
        self._server.add_registered_method_handlers(service, handlers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


def add_batch_service(server: grpc.aio.Server, handlers: Mapping[str, grpc.RpcMethodHandler],
                      guard: Callable[[str, Guarded], Guarded], coalescible: Callable[[str], bool]) -> bool:
    """Serve CallBatch when any of `handlers` declares `coalesce` (returns whether it was added)."""
    if not any(coalescible(method) for method in handlers):
        return False
    batch_service_pb2_grpc.add_BatchServiceServicer_to_server(BatchServicer(handlers, guard), server)
    return True
