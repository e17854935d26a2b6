"""Operator commands for the dedicated number inventory (issue 21), as the `ops` service identity.

    python -m tools.numbers [--messaging HOST:PORT] [--certs DIR] load FILE.csv
    python -m tools.numbers [--messaging HOST:PORT] [--certs DIR] demo

load   adds the numbers of a CSV file to the inventory customers buy dedicated numbers from, or updates their
       country, capabilities and prices (never who holds them). Columns: number,country[,capabilities
       [,price_setup[,price_monthly]]]; capabilities separated by ";" (sms;mms), prices decimal (monthly). A
       first line starting with "number" is a header. A bad line refuses the whole file (INVENTORY_INVALID,
       naming the line); nothing is loaded then.
demo   loads DEMO_NUMBERS (what `make run` loads so a newcomer can buy a number).

Defaults: --messaging from MESSAGING_ADDR, --certs from SENDSAFE_CERTS (ops.crt, ops.key, internal-ca.crt; in a
pod /etc/sendsafe/tls with tls.crt, tls.key, ca.crt).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import grpc

from sendsafe.messaging.v1 import sender_service_pb2 as pb
from sendsafe.messaging.v1 import sender_service_pb2_grpc
from svckit.rpc import secure_channel
from svckit.rpcstatus import error_reason
from svckit.tls import TlsFiles

BATCH = 5000
# Demo numbers (AU 0480 block and a US 555 block, not real subscribers' ranges in practice for this demo).
DEMO_NUMBERS = [
    *[pb.InventoryNumber(number=f"+6148000{n:04d}", country="AU", capabilities=["sms"], price_setup="0",
                         price_monthly="20.7100") for n in range(1, 11)],
    *[pb.InventoryNumber(number=f"+1201555{n:04d}", country="US", capabilities=["sms", "mms"], price_setup="0",
                         price_monthly="4.5000") for n in range(1, 6)],
]


def ops_files(certs: Path) -> TlsFiles:
    if (certs / "tls.crt").exists():  # a mounted Kubernetes secret
        return TlsFiles(certs / "tls.crt", certs / "tls.key", certs / "ca.crt")
    return TlsFiles(certs / "ops.crt", certs / "ops.key", certs / "internal-ca.crt")


def read_csv(lines: Iterable[str]) -> list[pb.InventoryNumber]:
    """The inventory rows of a CSV file (checked by messaging, which names the bad line)."""
    out: list[pb.InventoryNumber] = []
    for row in csv.reader(lines):
        cells = [c.strip() for c in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if cells[0].lower() == "number":
            continue
        cells += [""] * (5 - len(cells))
        out.append(pb.InventoryNumber(number=cells[0], country=cells[1],
                                      capabilities=[c for c in cells[2].split(";") if c.strip()],
                                      price_setup=cells[3], price_monthly=cells[4]))
    return out


async def load(addr: str, tls: TlsFiles, numbers: list[pb.InventoryNumber]) -> tuple[int, int]:
    """Load `numbers` in batches; (added, updated)."""
    added = updated = 0
    async with secure_channel(addr, tls, server_name="messaging", timeout=30.0) as ch:
        stub = sender_service_pb2_grpc.SenderServiceStub(ch)
        for start in range(0, len(numbers), BATCH):
            got = await stub.LoadNumberInventory(pb.LoadNumberInventoryRequest(numbers=numbers[start:start + BATCH]))
            added, updated = added + got.added, updated + got.updated
    return added, updated


async def _run(args: argparse.Namespace, numbers: list[pb.InventoryNumber]) -> int:
    if not numbers:
        print("no numbers in the file", file=sys.stderr)
        return 1
    try:
        added, updated = await load(args.messaging, ops_files(Path(args.certs)), numbers)
    except grpc.aio.AioRpcError as exc:
        reason = error_reason(exc, consistent=False) or exc.code().name
        print(f"{args.command} refused: {exc.code().name} {reason}: {exc.details()}", file=sys.stderr)
        return 1
    print(f"inventory: {added} added, {updated} updated")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.numbers", description=__doc__.split("\n\n")[0])
    p.add_argument("--messaging", default=os.environ.get("MESSAGING_ADDR", "127.0.0.1:50053"))
    p.add_argument("--certs", default=os.environ.get("SENDSAFE_CERTS", ".dev/certs"))
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("load").add_argument("file")
    sub.add_parser("demo")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "load":
        with open(args.file, newline="", encoding="utf-8") as fh:
            numbers = read_csv(fh)
    else:
        numbers = list(DEMO_NUMBERS)
    return asyncio.run(_run(args, numbers))


if __name__ == "__main__":
    sys.exit(main())
