"""A throwaway SMPP 3.4 SMSC for tests, benches and interop (asyncio; nothing persisted).

CLI (stable: the Jasmin interop chain runs it as Jasmin's upstream SMSC)::

    python -m tools.smsc --port 2776 [--host 127.0.0.1] [--system-id X --password Y]
                         [--dlr-delay 0.2] [--resp-delay 0] [--tls-cert F --tls-key F]
                         [--throttle-rate R] [--fail-prefix 6199[:0x0B]] [--undeliverable-prefix P]
                         [--dlr-retry 1.0] [--dlr-attempts 10]

It prints `smsc listening on HOST:PORT` once ready and its counters as one JSON line on SIGINT/SIGTERM.
Without --system-id every bind is accepted; with it, a wrong system_id or password gets ESME_RINVPASWD.

Behaviour
- Accepts bind_transceiver, bind_transmitter and bind_receiver; answers enquire_link and unbind (then
  closes); answers an unknown command with generic_nack ESME_RINVCMDID and a garbled one with generic_nack.
- submit_sm is answered ROK with a new message id (10 upper-case hex digits) after --resp-delay (answers
  are concurrent, so the client's window is measured as `max_outstanding`).
- When the submit asked for a receipt (registered_delivery & 1, or & 2 for failures), a DLR deliver_sm
  (esm_class 0x04, TLVs receipted_message_id and message_state, text `id:.. sub:001 dlvrd:001 submit
  date:.. done date:.. stat:DELIVRD err:000 text:..`) goes after --dlr-delay to a session bound as RX/TRX
  with the same system_id (the one that submitted if it still is). A DLR not answered ROK is sent again
  after --dlr-retry seconds, up to --dlr-attempts times (as real SMSCs and Jasmin do).
- Destinations starting with --fail-prefix are refused with that status (default ESME_RINVDSTADR 0x0B);
  with --undeliverable-prefix they are accepted and their DLR says UNDELIV (message_state 5).

Test API (`Smsc`): `await start()`, `await stop()`, `port`; counters `binds`, `bind_failures`, `submits`,
`accepted`, `max_outstanding`, `enquire_links`, `unbinds`, `dlrs_sent`, `dlrs_acked`, `dlrs_refused`,
`garbled_answers`, the `submissions` (one `Submitted` per accepted submit_sm) and `by_content()` (how often
each (destination, short_message) was accepted: duplicates); `await send_mo(src, dst, text)` (an MO
deliver_sm; returns the ESME's answer status); `await send_dlr(message_id)` (one DLR, any id);
`await send_garbled()`; `await unbind_all()`; fault switches `throttle_next` (answer ESME_RTHROTTLED to the
next N submits), `throttle_rate` (msgs/s per connection), `drop_after`
(close the connection when a submit arrives after N accepted on it; answers not yet sent are lost),
`lose_receipts` (the next N accepted messages never get a DLR), `fail_prefixes`, `undeliverable_prefixes`,
`ignore_enquire_link` (a hung SMSC).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import signal
import ssl
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from services.messaging.adapters.smpp import pdu as p


@dataclass(frozen=True, slots=True)
class Submitted:
    message_id: str
    system_id: str
    source: str
    destination: str
    esm_class: int
    data_coding: int
    registered_delivery: int
    short_message: bytes
    source_ton: int
    source_npi: int


@dataclass(eq=False)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    system_id: str = ""
    mode: int = 0  # the bind command id, 0 while unbound
    seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    waiting: dict[int, asyncio.Future[p.Pdu]] = field(default_factory=dict)
    accepted: int = 0
    outstanding: int = 0
    recent: collections.deque[float] = field(default_factory=collections.deque)
    closed: bool = False

    @property
    def receives(self) -> bool:
        return self.mode in (p.BIND_RECEIVER, p.BIND_TRANSCEIVER)

    def send(self, pdu: p.Pdu) -> None:
        if not self.closed:
            self.writer.write(p.encode(pdu))

    def close(self) -> None:
        self.closed = True
        self.writer.close()
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionResetError("closed"))


def _stamp(t: float) -> str:
    return time.strftime("%y%m%d%H%M", time.gmtime(t))


class Smsc:
    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, system_id: str = "", password: str = "",
                 dlr_delay: float = 0.1, resp_delay: float = 0.0, ssl_context: ssl.SSLContext | None = None,
                 dlr_retry: float = 1.0, dlr_attempts: int = 10) -> None:
        self.host, self.port = host, port
        self._credentials = (system_id, password)
        self.dlr_delay, self.resp_delay = dlr_delay, resp_delay
        self.dlr_retry, self.dlr_attempts = dlr_retry, dlr_attempts
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(0x1000)
        # Counters and records.
        self.binds = self.bind_failures = self.submits = self.accepted = self.max_outstanding = 0
        self.enquire_links = self.unbinds = self.dlrs_sent = self.dlrs_acked = self.dlrs_refused = 0
        self.mo_sent = 0
        self.garbled_answers: list[tuple[int, int]] = []
        self.submissions: list[Submitted] = []
        # Fault switches.
        self.throttle_next = 0
        self.throttle_rate = 0.0
        self.throttled = 0
        self.drop_after = 0
        self.drops = 0
        self.lose_receipts = 0
        self.lost_receipts: set[str] = set()
        self.fail_prefixes: dict[str, int] = {}
        self.undeliverable_prefixes: set[str] = set()
        self.ignore_enquire_link = False  # a hung SMSC: the ESME must find the link dead

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for c in list(self._conns):
            c.close()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    def bound(self) -> int:
        """How many sessions are bound now."""
        return sum(1 for c in self._conns if c.mode and not c.closed)

    def by_content(self) -> collections.Counter[tuple[str, bytes]]:
        return collections.Counter((s.destination, s.short_message) for s in self.submissions)

    def counters(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in (
            "binds", "bind_failures", "submits", "accepted", "throttled", "drops", "max_outstanding",
            "enquire_links", "unbinds", "dlrs_sent", "dlrs_acked", "dlrs_refused", "mo_sent")}

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- one connection --------------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(reader, writer)
        self._conns.add(conn)
        try:
            while not conn.closed:
                try:
                    frame = await p.read_frame(reader)
                except (asyncio.IncompleteReadError, ConnectionError, p.FramingError, ssl.SSLError):
                    return
                try:
                    req = p.decode(frame)
                except p.PduError as exc:
                    conn.send(p.nack(exc.sequence, exc.status))
                    continue
                await self._handle(conn, req)
        finally:
            self._conns.discard(conn)
            conn.close()

    async def _handle(self, conn: _Conn, req: p.Pdu) -> None:
        cid = req.command_id
        if req.is_resp:
            fut = conn.waiting.pop(req.sequence, None)
            if fut is not None and not fut.done():
                fut.set_result(req)
            return
        if cid in p.BINDS:
            self._bind(conn, req)
        elif cid == p.ENQUIRE_LINK:
            self.enquire_links += 1
            if not self.ignore_enquire_link:
                conn.send(p.resp_for(req))
        elif cid == p.UNBIND:
            self.unbinds += 1
            conn.send(p.resp_for(req))
            with contextlib.suppress(ConnectionError):
                await conn.writer.drain()
            conn.close()
        elif cid == p.SUBMIT_SM:
            if not conn.mode or conn.mode == p.BIND_RECEIVER:
                conn.send(p.resp_for(req, p.ESME_RINVBNDSTS))
            else:
                self._submit(conn, req)
        elif p.known(cid):
            conn.send(p.resp_for(req, p.ESME_RINVCMDID))
        else:
            conn.send(p.nack(req.sequence, p.ESME_RINVCMDID))

    def _bind(self, conn: _Conn, req: p.Pdu) -> None:
        system_id, password = req.str_param("system_id"), req.str_param("password")
        if conn.mode:
            conn.send(p.resp_for(req, p.ESME_RALYBND))
            return
        want_id, want_pw = self._credentials
        if want_id and (system_id != want_id or password != want_pw):
            self.bind_failures += 1
            conn.send(p.resp_for(req, p.ESME_RINVPASWD))
            return
        self.binds += 1
        conn.system_id, conn.mode = system_id, req.command_id
        conn.send(p.resp_for(req, system_id="smsc"))

    def _submit(self, conn: _Conn, req: p.Pdu) -> None:
        self.submits += 1
        now = time.monotonic()
        if self.drop_after and conn.accepted >= self.drop_after:
            self.drops += 1
            self.drop_after = 0
            conn.writer.transport.abort()
            conn.close()
            return
        status = p.ESME_ROK
        dest = req.str_param("destination_addr")
        while conn.recent and conn.recent[0] < now - 1.0:
            conn.recent.popleft()
        if self.throttle_next > 0:
            self.throttle_next -= 1
            status = p.ESME_RTHROTTLED
        elif self.throttle_rate and len(conn.recent) >= self.throttle_rate:
            status = p.ESME_RTHROTTLED
        else:
            status = next((s for pre, s in self.fail_prefixes.items() if dest.startswith(pre)), p.ESME_ROK)
        if status == p.ESME_RTHROTTLED:
            self.throttled += 1
        message_id = ""
        if status == p.ESME_ROK:
            conn.recent.append(now)
            conn.accepted += 1
            self.accepted += 1
            message_id = f"{next(self._ids):010X}"
            sub = Submitted(message_id, conn.system_id, req.str_param("source_addr"), dest,
                            req.int_param("esm_class"), req.int_param("data_coding"),
                            req.int_param("registered_delivery"), req.bytes_param("short_message"),
                            req.int_param("source_addr_ton"), req.int_param("source_addr_npi"))
            self.submissions.append(sub)
            if self.lose_receipts > 0:
                self.lose_receipts -= 1
                self.lost_receipts.add(message_id)
            else:
                self._spawn(self._dlr(conn.system_id, sub, time.time()))
        conn.outstanding += 1
        self.max_outstanding = max(self.max_outstanding, conn.outstanding)
        resp = p.resp_for(req, status, message_id=message_id)
        if self.resp_delay:
            self._spawn(self._answer_later(conn, resp))
        else:
            conn.outstanding -= 1
            conn.send(resp)

    async def _answer_later(self, conn: _Conn, resp: p.Pdu) -> None:
        try:
            await asyncio.sleep(self.resp_delay)
            conn.send(resp)
        finally:
            conn.outstanding -= 1

    # -- deliver_sm towards the ESME -------------------------------------------------------------------
    def _receiver(self, system_id: str) -> _Conn | None:
        live = [c for c in self._conns if c.receives and not c.closed and c.system_id == system_id]
        return live[0] if live else None

    async def _deliver(self, system_id: str, req: p.Pdu, wait_bound: float) -> int | None:
        """Send one deliver_sm to a bound receiver; the ESME's answer status (None: no answer/nobody bound)."""
        deadline = time.monotonic() + wait_bound
        conn = self._receiver(system_id)
        while conn is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # nobody bound yet (the ESME is reconnecting): wait for a bind
            conn = self._receiver(system_id)
        if conn is None:
            return None
        req.sequence = next(conn.seq)
        fut: asyncio.Future[p.Pdu] = asyncio.get_running_loop().create_future()
        conn.waiting[req.sequence] = fut
        conn.send(req)
        try:
            resp = await asyncio.wait_for(fut, 10.0)
        except (TimeoutError, ConnectionError):
            return None
        finally:
            conn.waiting.pop(req.sequence, None)
        return resp.status if resp.command_id == p.DELIVER_SM | p.RESP else -resp.status - 1

    async def _dlr(self, system_id: str, sub: Submitted, submitted_at: float) -> None:
        rd = sub.registered_delivery & 0x03
        undeliverable = any(sub.destination.startswith(x) for x in self.undeliverable_prefixes)
        if rd == 0 or (rd == 2 and not undeliverable):
            return
        await asyncio.sleep(self.dlr_delay)
        stat, state, err = ("UNDELIV", 5, "001") if undeliverable else ("DELIVRD", 2, "000")
        text = (f"id:{sub.message_id} sub:001 dlvrd:{'000' if undeliverable else '001'} submit date:"
                f"{_stamp(submitted_at)} done date:{_stamp(time.time())} stat:{stat} err:{err} text:")
        for _ in range(self.dlr_attempts):
            req = p.Pdu(p.DELIVER_SM, params={
                "source_addr_ton": 1, "source_addr_npi": 1, "source_addr": sub.destination,
                "dest_addr_ton": sub.source_ton, "dest_addr_npi": sub.source_npi, "destination_addr": sub.source,
                "esm_class": 0x04, "short_message": text.encode("ascii"),
            }, tlvs={p.TLV_RECEIPTED_MESSAGE_ID: p.c_tlv(sub.message_id), p.TLV_MESSAGE_STATE: bytes([state])})
            self.dlrs_sent += 1
            status = await self._deliver(system_id, req, wait_bound=self.dlr_retry * 5)
            if status == p.ESME_ROK:
                self.dlrs_acked += 1
                return
            self.dlrs_refused += 1
            await asyncio.sleep(self.dlr_retry)

    async def send_dlr(self, message_id: str, *, delivered: bool = True, system_id: str | None = None,
                       wait_bound: float = 5.0) -> int | None:
        """One DLR naming `message_id` (also one this SMSC never issued), sent once; the ESME's answer."""
        stat, state = ("DELIVRD", 2) if delivered else ("UNDELIV", 5)
        req = p.Pdu(p.DELIVER_SM, params={
            "source_addr_ton": 1, "source_addr_npi": 1, "source_addr": "61400000000", "esm_class": 0x04,
            "short_message": f"id:{message_id} stat:{stat} err:000".encode("ascii"),
        }, tlvs={p.TLV_RECEIPTED_MESSAGE_ID: p.c_tlv(message_id), p.TLV_MESSAGE_STATE: bytes([state])})
        self.dlrs_sent += 1
        sid = system_id if system_id is not None else self._credentials[0] or self._any_system_id()
        return await self._deliver(sid, req, wait_bound)

    async def send_mo(self, source: str, destination: str, text: str, *, system_id: str | None = None,
                      wait_bound: float = 5.0) -> int | None:
        """A mobile-originated message from `source` (a handset, digits) to `destination` (our number);
        the ESME's deliver_sm_resp status, or None when nobody answered."""
        try:
            raw, coding = text.encode("ascii"), 0
        except UnicodeEncodeError:
            raw, coding = text.encode("utf-16-be"), 8
        req = p.Pdu(p.DELIVER_SM, params={
            "source_addr_ton": 1, "source_addr_npi": 1, "source_addr": source.lstrip("+"),
            "dest_addr_ton": 1, "dest_addr_npi": 1, "destination_addr": destination.lstrip("+"),
            "esm_class": 0x00, "data_coding": coding, "short_message": raw,
        })
        self.mo_sent += 1
        sid = system_id if system_id is not None else self._credentials[0] or self._any_system_id()
        return await self._deliver(sid, req, wait_bound)

    def _any_system_id(self) -> str:
        return next((c.system_id for c in self._conns if c.receives and not c.closed), "")

    async def send_garbled(self, *, system_id: str | None = None) -> tuple[int, int] | None:
        """A deliver_sm whose sm_length runs past its body; records and returns the ESME's (command_id,
        status) answer, or None when the ESME did not answer."""
        sid = system_id if system_id is not None else self._credentials[0] or self._any_system_id()
        conn = self._receiver(sid)
        if conn is None:
            return None
        seq = next(conn.seq)
        good = p.encode(p.Pdu(p.DELIVER_SM, seq, params={"source_addr": "61400000000", "short_message": b"hi"}))
        garbled = good[:-3] + bytes([200]) + good[-2:]  # sm_length 200 with 2 octets behind it
        fut: asyncio.Future[p.Pdu] = asyncio.get_running_loop().create_future()
        conn.waiting[seq] = fut
        conn.writer.write(garbled)
        try:
            resp = await asyncio.wait_for(fut, 5.0)
        except (TimeoutError, ConnectionError):
            return None
        self.garbled_answers.append((resp.command_id, resp.status))
        return resp.command_id, resp.status

    async def unbind_all(self) -> None:
        """The SMSC ends every session with unbind (as before a maintenance)."""
        for c in list(self._conns):
            if c.mode and not c.closed:
                c.send(p.Pdu(p.UNBIND, next(c.seq)))


def _status(text: str) -> int:
    return int(text, 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.smsc", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=2776)
    ap.add_argument("--system-id", default="")
    ap.add_argument("--password", default="")
    ap.add_argument("--dlr-delay", type=float, default=0.2)
    ap.add_argument("--resp-delay", type=float, default=0.0)
    ap.add_argument("--dlr-retry", type=float, default=1.0)
    ap.add_argument("--dlr-attempts", type=int, default=10)
    ap.add_argument("--tls-cert", default="")
    ap.add_argument("--tls-key", default="")
    ap.add_argument("--throttle-rate", type=float, default=0.0, help="msgs/s per connection, then ESME_RTHROTTLED")
    ap.add_argument("--fail-prefix", action="append", default=[], help="PREFIX[:STATUS] refused (default 0x0B)")
    ap.add_argument("--undeliverable-prefix", action="append", default=[])
    args = ap.parse_args(argv)
    ctx = None
    if args.tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)

    async def run() -> None:
        smsc = Smsc(host=args.host, port=args.port, system_id=args.system_id, password=args.password,
                    dlr_delay=args.dlr_delay, resp_delay=args.resp_delay, ssl_context=ctx,
                    dlr_retry=args.dlr_retry, dlr_attempts=args.dlr_attempts)
        smsc.throttle_rate = args.throttle_rate
        for item in args.fail_prefix:
            prefix, _, code = item.partition(":")
            smsc.fail_prefixes[prefix] = _status(code) if code else p.ESME_RINVDSTADR
        smsc.undeliverable_prefixes = set(args.undeliverable_prefix)
        port = await smsc.start()
        print(f"smsc listening on {args.host}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await smsc.stop()
        print(json.dumps(smsc.counters()), flush=True)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
