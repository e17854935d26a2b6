"""Operator commands for the keys service, as the `ops` service identity (its mTLS certificate).

    python -m tools.keyadmin [--keys HOST:PORT] [--certs DIR] COMMAND ...

    root-status                       root keys in use: KEK versions and API-key hashes under each
    maintenance                       run rotations, destructions and one root-key rewrap batch now
    rewrap-root [--max-rounds N]      run maintenance until nothing is wrapped under an old root key
    account ACCOUNT_ID                an account's key versions, policy and lifecycle state
    rotate ACCOUNT_ID                 add a key version and make it current
    retire ACCOUNT_ID MIN_VERSION     versions below MIN_VERSION stop decrypting; refused (REWRAP_INCOMPLETE, with
                                      how many items each service still holds below it) until the identity and
                                      messaging rewrap passes have moved everything to MIN_VERSION or later
    destroy ACCOUNT_ID DAYS           schedule destruction after a pending window of DAYS (every use fails meanwhile)
    cancel-destroy ACCOUNT_ID         cancel a scheduled destruction
    revoke-user ACCOUNT_ID USER_ID    revoke every API key of a user
    leaked --source WHERE             read strings (one per line) on stdin; revoke every live key among them

Defaults: --keys from KEYS_ADDR, --certs from SENDSAFE_CERTS (a directory with ops.crt, ops.key and
internal-ca.crt; in a pod: /etc/sendsafe/tls with tls.crt, tls.key, ca.crt). Nothing printed is secret:
no command returns key material.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from sendsafe.keys.v1 import keys_service_pb2 as pb
from sendsafe.keys.v1 import keys_service_pb2_grpc
from svckit.rpc import secure_channel
from svckit.rpcstatus import error_reason
from svckit.tls import TlsFiles


def ops_tls(certs: Path) -> TlsFiles:
    """The ops identity under `certs`: a mounted cert-manager Secret (tls.crt, tls.key, ca.crt) in a pod,
    else the `make certs` folder (ops.crt, ops.key, internal-ca.crt). tools.bootstrap and tools.staff too."""
    if (certs / "tls.crt").exists():  # a mounted Kubernetes secret
        return TlsFiles(certs / "tls.crt", certs / "tls.key", certs / "ca.crt")
    return TlsFiles(certs / "ops.crt", certs / "ops.key", certs / "internal-ca.crt")


def _show(msg: Any) -> None:
    print(json_format.MessageToJson(msg, preserving_proto_field_name=True, indent=2))


async def _run(args: argparse.Namespace) -> int:
    async with secure_channel(args.keys, ops_tls(Path(args.certs)), server_name="keys", timeout=30.0) as ch:
        stub = keys_service_pb2_grpc.KeysServiceStub(ch)
        cmd = args.command
        if cmd == "root-status":
            _show(await stub.GetRootKeyStatus(pb.GetRootKeyStatusRequest()))
        elif cmd == "maintenance":
            _show(await stub.RunKeyMaintenance(pb.RunKeyMaintenanceRequest()))
        elif cmd == "rewrap-root":
            for _ in range(args.max_rounds):
                report = await stub.RunKeyMaintenance(pb.RunKeyMaintenanceRequest())
                print(f"rewrapped {report.rewrapped_keys}, remaining {report.remaining_to_rewrap}", flush=True)
                if report.remaining_to_rewrap == 0:
                    return 0
                if report.rewrapped_keys == 0:
                    print("no progress: is every old root key in KEYS_RETIRING_ROOT_KEYS_FILE?", file=sys.stderr)
                    return 1
            return 1
        elif cmd == "account":
            _show(await stub.GetAccountKeyStatus(pb.GetAccountKeyStatusRequest(account_id=args.account_id)))
        elif cmd == "rotate":
            _show(await stub.RotateAccountKey(pb.RotateAccountKeyRequest(account_id=args.account_id)))
        elif cmd == "retire":
            _show(await stub.SetAccountKeyPolicy(pb.SetAccountKeyPolicyRequest(
                account_id=args.account_id, min_decryption_version=args.min_version)))
        elif cmd == "destroy":
            _show(await stub.ScheduleAccountKeyDestruction(pb.ScheduleAccountKeyDestructionRequest(
                account_id=args.account_id, pending_window_seconds=int(args.days * 86400))))
        elif cmd == "cancel-destroy":
            _show(await stub.CancelAccountKeyDestruction(pb.CancelAccountKeyDestructionRequest(
                account_id=args.account_id)))
        elif cmd == "revoke-user":
            _show(await stub.RevokeUserApiKeys(pb.RevokeUserApiKeysRequest(
                account_id=args.account_id, user_id=args.user_id, reason="leaked")))
        elif cmd == "leaked":
            candidates = [line.strip() for line in sys.stdin if line.strip()]
            for start in range(0, len(candidates), 1000):
                _show(await stub.ReportLeakedApiKeys(pb.ReportLeakedApiKeysRequest(
                    candidates=candidates[start : start + 1000], source=args.source)))
    return 0


COMMANDS = {  # name -> one-line help (each subcommand's --help says it)
    "root-status": "root keys in use: KEK versions and API-key hashes under each",
    "maintenance": "run rotations, destructions and one root-key rewrap batch now",
    "rewrap-root": "run maintenance until nothing is wrapped under an old root key",
    "account": "an account's key versions, policy and lifecycle state",
    "rotate": "add a key version to an account and make it current",
    "retire": "versions below MIN_VERSION stop decrypting; refused (REWRAP_INCOMPLETE) until every rewrap pass "
              "has moved the account's data to MIN_VERSION or later",
    "destroy": "schedule an account's key destruction after a pending window of DAYS (every use fails meanwhile)",
    "cancel-destroy": "cancel a scheduled destruction",
    "revoke-user": "revoke every API key of a user",
    "leaked": "read strings (one per line) on stdin; revoke every live API key among them",
}
EXIT_CODES = "exit status: 0 done, 1 refused by the keys service or not reachable (one line on stderr), 2 usage"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sendsafe-keyadmin", description=__doc__.split("\n\n")[0], epilog=EXIT_CODES)
    p.add_argument("--keys", default=os.environ.get("KEYS_ADDR", "127.0.0.1:50052"),
                   help="the keys service's address (default: $KEYS_ADDR or 127.0.0.1:50052)")
    p.add_argument("--certs", default=os.environ.get("SENDSAFE_CERTS", ".dev/certs"),
                   help="folder with the ops identity: ops.crt, ops.key, internal-ca.crt (or a mounted tls.crt, "
                        "tls.key, ca.crt); default: $SENDSAFE_CERTS or .dev/certs")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=COMMANDS[name], description=COMMANDS[name], epilog=EXIT_CODES)

    account_help = "the account's id"
    add("root-status")
    add("maintenance")
    add("rewrap-root").add_argument("--max-rounds", type=int, default=10_000,
                                    help="stop after this many maintenance rounds (default 10000)")
    for name in ("account", "rotate", "cancel-destroy"):
        add(name).add_argument("account_id", type=int, help=account_help)
    retire = add("retire")
    retire.add_argument("account_id", type=int, help=account_help)
    retire.add_argument("min_version", type=int, help="the oldest key version that may still decrypt")
    destroy = add("destroy")
    destroy.add_argument("account_id", type=int, help=account_help)
    destroy.add_argument("days", type=float, help="the pending window in days before the keys are destroyed")
    revoke = add("revoke-user")
    revoke.add_argument("account_id", type=int, help=account_help)
    revoke.add_argument("user_id", type=int, help="the user whose API keys are revoked")
    add("leaked").add_argument("--source", required=True, help="where the strings were found (recorded in audit)")
    return p


async def _run_or_explain(args: argparse.Namespace) -> int:
    """`_run`, with a refusal printed as its code, stable reason and message (exit status 1), not a traceback."""
    try:
        return await _run(args)
    except grpc.aio.AioRpcError as exc:
        reason = error_reason(exc, consistent=False) or exc.code().name
        print(f"{args.command} refused: {exc.code().name} {reason}: {exc.details()}", file=sys.stderr)
        return 1
    except OSError as exc:  # the ops certificate files missing or unreadable
        print(f"{args.command} failed: {exc.strerror or exc}: {exc.filename or ''} (see --certs)", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(_run_or_explain(parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
