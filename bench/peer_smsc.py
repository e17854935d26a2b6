"""The peer benchmark's carrier: tools/smsc.py's throwaway SMSC in a process of its own, with a live count of
the submit_sm it accepted, so "delivered to the carrier" is counted the same way for Jasmin and SendSafe.

    python -m bench.peer_smsc PORT_FILE

binds two loopback ports and writes them to PORT_FILE as `SMPP_PORT COUNT_PORT` once ready. A connection to
COUNT_PORT gets the number of submit_sm accepted so far (one line) and is closed: a read costs the SMSC one
accept, not a timer, and is exact at the moment it is asked. SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from tools.smsc import Smsc

HOST = "127.0.0.1"


async def read_count(port: int) -> int:
    """The submit_sm count of the SMSC whose COUNT_PORT is `port`."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        return int((await reader.readline()).decode().strip())
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def serve(port_file: Path) -> None:
    # A receipt 0.2 s after the submit for a sender that asks for one (SendSafe's SMPP carrier does; Jasmin's
    # HTTP sends do not), as bench/smpp.py has it.
    smsc = Smsc(host=HOST, port=0, dlr_delay=0.2)
    smpp_port = await smsc.start()
    # The record of every submission (tools.smsc keeps it for tests) is not needed here: keep memory flat.
    smsc.submissions = _Discard()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"{smsc.accepted}\n".encode())
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    counter = await asyncio.start_server(answer, HOST, 0)
    count_port = counter.sockets[0].getsockname()[1]
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(f"{smpp_port} {count_port}\n")
    os.replace(tmp, port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    counter.close()
    await smsc.stop()


class _Discard(list):  # type: ignore[type-arg]
    def append(self, _item: object) -> None:
        return None


def main() -> int:
    asyncio.run(serve(Path(sys.argv[1])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
