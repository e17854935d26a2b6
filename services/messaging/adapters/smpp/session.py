"""An SMPP 3.4 ESME session: one transceiver bind kept up for the life of the process.

* connect (optionally TLS with certificate verification against the system's or a given CA bundle),
  `bind_transceiver` with system_id/password/system_type; a refused bind is retried with backoff;
* `request()` sends a PDU through a bounded window (at most `window` unanswered PDUs), paced by the
  per-connection throughput cap (and by `pause()` after the SMSC throttles), each with its own response
  timeout: `NotBound` means nothing was sent, `OutcomeUnknown` that it was sent but not answered;
* `enquire_link` when idle; no answer within the response timeout is a dead link: the connection is
  closed and the session reconnects with exponential backoff (0.5 s doubling to 30 s, with jitter);
* the SMSC's enquire_link and unbind are answered (after its unbind the session binds again);
* each deliver_sm goes to the async `handler`, and deliver_sm_resp carries the status the handler returns,
  sent only once the handler has returned (after the receipt/reply is stored); a handler that raises
  answers ESME_RX_T_APPN (the SMSC sends it again). A garbled PDU gets generic_nack; the session goes on;
* `stop()` unbinds cleanly (unbind, waits briefly for unbind_resp) and closes.

Health (bound / unbound / reconnecting) is logged with the peer's host:port, never credentials, numbers
or bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.messaging.adapters.smpp import pdu as p

_LOG = logging.getLogger(__name__)
DeliverHandler = Callable[[p.Pdu], Awaitable[int]]


class NotBound(Exception):
    """The session is not bound: the PDU was not sent."""


class OutcomeUnknown(Exception):
    """The PDU was sent but no answer came (timeout or the connection dropped)."""


@dataclass(frozen=True, kw_only=True)
class SessionConfig:
    host: str
    port: int
    system_id: str
    password: str
    system_type: str = ""
    tls: bool = False
    ca_file: str = ""
    window: int = 10
    throughput: float = 0.0  # PDUs/s on this connection, 0 = unlimited
    enquire_link_s: float = 30.0
    response_timeout_s: float = 10.0
    connect_timeout_s: float = 10.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    max_handlers: int = 64  # deliver_sm handled concurrently

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError("the SMPP window must be at least 1")
        if self.throughput < 0:
            raise ValueError("the SMPP throughput cap must be >= 0")
        # SMPP 3.4 C-octet string limits (NUL included): system_id 16, password 9, system_type 13.
        for what, value, most in (("system_id", self.system_id, 15), ("password", self.password, 8),
                                  ("system_type", self.system_type, 12)):
            if len(value.encode("latin-1", "replace")) > most:
                raise ValueError(f"the SMPP {what} is longer than {most} characters (SMPP 3.4 limit)")


class Session:
    def __init__(self, config: SessionConfig, handler: DeliverHandler, *, name: str = "smpp") -> None:
        self.config = config
        self._handler = handler
        self.name = name
        self.state = "unbound"
        self.bound = asyncio.Event()
        self.binds = 0
        self._window = asyncio.Semaphore(config.window)
        self._handlers = asyncio.Semaphore(config.max_handlers)
        self._seq = itertools.count(1)
        self._pending: dict[int, asyncio.Future[p.Pdu]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._pace = asyncio.Lock()
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._last_rx = 0.0
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.outstanding = 0
        self.max_outstanding = 0

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self.name}-session")

    async def wait_bound(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.bound.wait(), timeout)
        return self.bound.is_set()

    async def stop(self) -> None:
        """Unbind cleanly, close, and stop reconnecting."""
        self._stopping.set()
        if self.bound.is_set() and self._writer is not None:
            with contextlib.suppress(Exception):
                await self._call(p.Pdu(p.UNBIND), timeout=min(2.0, self.config.response_timeout_s))
        self._close("stopped")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        for t in list(self._tasks):
            t.cancel()
        self._set_state("unbound")

    def pause(self, seconds: float) -> None:
        """The SMSC throttled us: send nothing more on this connection for `seconds`."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    # -- requests --------------------------------------------------------------------------------------
    async def request(self, pdu: p.Pdu, *, wait_bound: float = 0.0) -> p.Pdu:
        """Send `pdu` within the window and the throughput cap; its response (a resp or generic_nack)."""
        if not self.bound.is_set() and not (wait_bound and await self.wait_bound(wait_bound)):
            raise NotBound(self.name)
        async with self._window:
            await self._paced()
            if not self.bound.is_set():
                raise NotBound(self.name)
            self.outstanding += 1
            self.max_outstanding = max(self.max_outstanding, self.outstanding)
            try:
                return await self._call(pdu, timeout=self.config.response_timeout_s)
            finally:
                self.outstanding -= 1

    async def _paced(self) -> None:
        async with self._pace:
            now = time.monotonic()
            slot = max(now, self._paused_until, self._next_slot)
            if self.config.throughput:
                self._next_slot = slot + 1.0 / self.config.throughput
            if slot > now:
                await asyncio.sleep(slot - now)

    async def _call(self, pdu: p.Pdu, *, timeout: float) -> p.Pdu:
        writer = self._writer
        if writer is None:
            raise NotBound(self.name)
        pdu.sequence = self._next_seq()
        fut: asyncio.Future[p.Pdu] = asyncio.get_running_loop().create_future()
        self._pending[pdu.sequence] = fut
        try:
            writer.write(p.encode(pdu))
            await writer.drain()
            return await asyncio.wait_for(fut, timeout)
        except (TimeoutError, ConnectionError, OSError) as exc:
            raise OutcomeUnknown(type(exc).__name__) from None
        finally:
            self._pending.pop(pdu.sequence, None)

    def _next_seq(self) -> int:
        seq = next(self._seq)
        if seq > 0x7FFFFFFF:
            self._seq = itertools.count(2)
            seq = 1
        return seq

    # -- the connection loop ---------------------------------------------------------------------------
    async def _run(self) -> None:
        delay = self.config.reconnect_min_s
        while not self._stopping.is_set():
            reason = "closed"
            try:
                if await self._connect_and_bind():
                    delay = self.config.reconnect_min_s
                    reason = await self._serve()
                else:
                    reason = "bind refused"
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, asyncio.IncompleteReadError, p.FramingError, p.PduError) as exc:
                reason = type(exc).__name__
            except Exception as exc:  # never let the session die: log, back off, try again
                _LOG.exception("%s: session error", self.name)
                reason = type(exc).__name__
            finally:
                self._close(reason)
            if self._stopping.is_set():
                return
            wait = min(delay, self.config.reconnect_max_s) * random.uniform(0.8, 1.2)
            self._set_state("reconnecting", f"{reason}; next try in {wait:.1f}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)
            delay = min(delay * 2, self.config.reconnect_max_s)

    async def _connect_and_bind(self) -> bool:
        cfg = self.config
        ctx: ssl.SSLContext | None = None
        if cfg.tls:
            ctx = ssl.create_default_context(cafile=cfg.ca_file or None)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(cfg.host, cfg.port, ssl=ctx), cfg.connect_timeout_s)
        self._writer = writer
        bind = p.Pdu(p.BIND_TRANSCEIVER, self._next_seq(), params={
            "system_id": cfg.system_id, "password": cfg.password, "system_type": cfg.system_type,
            "interface_version": p.INTERFACE_VERSION})
        writer.write(p.encode(bind))
        deadline = time.monotonic() + cfg.response_timeout_s
        while True:
            frame = await asyncio.wait_for(p.read_frame(reader), max(0.01, deadline - time.monotonic()))
            resp = p.decode(frame)
            if resp.command_id == p.BIND_TRANSCEIVER | p.RESP or resp.command_id == p.GENERIC_NACK:
                break
            if resp.command_id == p.ENQUIRE_LINK:
                writer.write(p.encode(p.resp_for(resp)))
        if resp.status != p.ESME_ROK:
            _LOG.warning("%s: bind to %s:%d refused (command_status 0x%02X)", self.name, cfg.host, cfg.port,
                         resp.status)
            return False
        self._reader = reader
        self._last_rx = time.monotonic()
        self.binds += 1
        self.bound.set()
        self._set_state("bound")
        return True

    async def _serve(self) -> str:
        """Read PDUs and keep the link alive until the connection ends; the reason it ended."""
        keepalive = asyncio.create_task(self._keepalive())
        try:
            while True:
                assert self._reader is not None
                try:
                    frame = await p.read_frame(self._reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return "connection lost"
                self._last_rx = time.monotonic()
                try:
                    pdu = p.decode(frame)
                except p.PduError as exc:
                    _LOG.warning("%s: garbled PDU (command 0x%08X) answered with generic_nack", self.name,
                                 exc.command_id)
                    self._send(p.nack(exc.sequence, exc.status))
                    continue
                if await self._dispatch(pdu):
                    return "unbound by the SMSC"
                if keepalive.done():
                    return "dead link (no enquire_link answer)"
        finally:
            keepalive.cancel()
            with contextlib.suppress(BaseException):
                await keepalive

    async def _dispatch(self, pdu: p.Pdu) -> bool:
        """Handle one PDU from the SMSC; True when the session should end (the SMSC unbound)."""
        cid = pdu.command_id
        if pdu.is_resp:
            fut = self._pending.get(pdu.sequence)
            if fut is not None and not fut.done():
                fut.set_result(pdu)
        elif cid == p.ENQUIRE_LINK:
            self._send(p.resp_for(pdu))
        elif cid == p.UNBIND:
            self._send(p.resp_for(pdu))
            if self._writer is not None:
                with contextlib.suppress(ConnectionError):
                    await self._writer.drain()
            return True
        elif cid == p.DELIVER_SM:
            await self._handlers.acquire()
            task = asyncio.create_task(self._deliver(pdu, self._writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif p.known(cid):
            self._send(p.resp_for(pdu, p.ESME_RINVCMDID))
        else:
            self._send(p.nack(pdu.sequence, p.ESME_RINVCMDID))
        return False

    async def _deliver(self, pdu: p.Pdu, writer: asyncio.StreamWriter | None) -> None:
        try:
            try:
                status = await self._handler(pdu)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _LOG.warning("%s: deliver_sm not stored (%s); answered as a temporary error", self.name,
                             type(exc).__name__)
                status = p.ESME_RX_T_APPN
            # On the connection it came on: after a reconnect the SMSC sends it again (new sequence number).
            self._send(p.resp_for(pdu, status, message_id=""), writer)
        finally:
            self._handlers.release()

    async def _keepalive(self) -> None:
        """Returns when the link is dead (an enquire_link got no answer)."""
        period = self.config.enquire_link_s
        while True:
            idle = time.monotonic() - self._last_rx
            if idle < period:
                await asyncio.sleep(period - idle)
                continue
            try:  # a short period means a quick check: answer within the period (at least 1 s, at most the timeout)
                await self._call(p.Pdu(p.ENQUIRE_LINK),
                                 timeout=min(self.config.response_timeout_s, max(1.0, period)))
            except (OutcomeUnknown, NotBound):
                _LOG.warning("%s: no enquire_link answer from %s:%d: dead link", self.name, self.config.host,
                             self.config.port)
                if self._writer is not None:
                    self._writer.transport.abort()  # wakes the reader
                return

    def _send(self, pdu: p.Pdu, writer: asyncio.StreamWriter | None = None) -> None:
        writer = writer or self._writer
        if writer is not None and not writer.is_closing():
            writer.write(p.encode(pdu))

    def _close(self, reason: str) -> None:
        was_bound = self.bound.is_set()
        self.bound.clear()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionResetError(reason))
        if was_bound:
            self._set_state("unbound", reason)

    def _set_state(self, state: str, detail: str = "") -> None:
        if state == self.state and not detail:
            return
        self.state = state
        c = self.config
        _LOG.info("%s: %s %s:%d%s", self.name, state, c.host, c.port, f" ({detail})" if detail else "",
                  extra={"carrier_health": state})
