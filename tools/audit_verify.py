"""Offline verifier for SendSafe audit exports, and a fetcher for them.

    python -m tools.audit_verify verify EXPORT.jsonl --key VKEY [--checkpoint NOTE_FILE]
    python -m tools.audit_verify fetch --url https://... --username U [--ca CA] --out EXPORT.jsonl
        (the API key from $SENDSAFE_API_KEY, --api-key-file FILE, or stdin / a prompt; --api-key K still
        works but lands in your shell history)
    python -m tools.audit_verify receipt RECEIPT.json (--keys SIGNING_KEYS.json | --key ID=BASE64 ...)

`receipt` verifies signed key-destruction receipts offline (a standalone receipt, the audit event
keys.account_keys.destroyed, an export or a destruction register): see tools/receipt_verify.py for the
formats and what a receipt proves.

An export (GET /v1/audit/export, JSON Lines) is a sequence of segments. A segment opens with a checkpoint
line — the log's signed checkpoint (C2SP signed note: origin, tree size, root hash, time; Ed25519), a
signed *account head* (how many of the account's events that tree holds) and where the segment starts —
followed by one line per event: its exact stored bytes (`leaf_data`), its leaf index, its RFC 9162
inclusion proof to that checkpoint, and a JSON view of the event.

`verify` trusts only the verifier key (and, if given, a checkpoint you saved earlier). It checks every
signature, that each line's JSON view is what its bytes say, that each event's bytes are in the signed tree
at the stated place, that leaf indexes only grow, and that the account's own sequence numbers run 1, 2, 3…
without a gap up to the signed account head. It reports the first event that was altered, removed,
inserted or reordered (exit status 1), or how many events verified (exit status 0). It reads nothing but
the file: the log's other accounts' events are never needed (their leaves appear only as hashes in
proofs, and an event's bytes begin with a random 128-bit id, so a leaf hash reveals nothing).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from sendsafe.audit.v1 import event_pb2
from services.audit.domain import merkle
from tools import receipt_verify
from tools.cli import progress, secret

ALTERED, REMOVED, INSERTED, REORDERED = "ALTERED", "REMOVED", "INSERTED", "REORDERED"
BAD_SIGNATURE, MALFORMED, CHECKPOINT_MISMATCH = "BAD_SIGNATURE", "MALFORMED", "CHECKPOINT_MISMATCH"


@dataclass(frozen=True)
class Problem:
    kind: str
    line: int  # 1-based line number in the file
    event_id: str
    leaf_index: int | None
    detail: str

    def __str__(self) -> str:
        where = f"line {self.line}"
        if self.event_id:
            where += f", event {self.event_id}"
        if self.leaf_index is not None:
            where += f", leaf {self.leaf_index}"
        return f"{self.kind}: {where}: {self.detail}"


@dataclass
class Report:
    events: int = 0
    segments: int = 0
    accounts: set[int] = field(default_factory=set)
    problem: Problem | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass
class _Event:
    line: int
    event_id: str
    leaf_index: int
    leaf: bytes
    tree_size: int
    path: list[bytes]
    view: Any
    account_id: int = 0
    account_sequence: int = 0
    sealed_sequence: int = 0


@dataclass
class _Segment:
    line: int
    checkpoint: merkle.CheckpointBody
    head: merkle.AccountHead
    after_sequence: int
    events: list[_Event] = field(default_factory=list)


def event_view(leaf: bytes) -> Any:
    return json_format.MessageToDict(event_pb2.Event.FromString(leaf), preserving_proto_field_name=True)


def _b64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not base64 text")
    return binascii.a2b_base64(text, strict_mode=True)


def _parse(lines: Iterable[str], verifier: merkle.Verifier) -> tuple[list[_Segment], Problem | None]:
    segments: list[_Segment] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
            kind = obj.get("type")
        except (ValueError, AttributeError):
            return segments, Problem(MALFORMED, number, "", None, "not a JSON object")
        if kind == "checkpoint":
            try:
                cp = verifier.open(obj["signed_note"])
                head = merkle.AccountHead.parse(verifier.open_text(obj["account_head"]), verifier.name)
                after = int(obj.get("after_sequence", 0))
            except merkle.NoteError as exc:
                return segments, Problem(BAD_SIGNATURE, number, "", None, str(exc))
            except (KeyError, TypeError, ValueError):
                return segments, Problem(MALFORMED, number, "", None, "incomplete checkpoint line")
            if head.tree_size != cp.size:
                return segments, Problem(BAD_SIGNATURE, number, "", None, "account head and checkpoint differ")
            segments.append(_Segment(number, cp, head, after))
            continue
        if kind != "event":
            return segments, Problem(MALFORMED, number, "", None, f"unknown line type {kind!r}")
        if not segments:
            return segments, Problem(MALFORMED, number, "", None, "an event before any checkpoint line")
        try:
            e = _Event(
                number, str(obj["event"].get("event_id", "")), int(obj["leaf_index"]), _b64(obj["leaf_data"]),
                int(obj["tree_size"]), [_b64(p) for p in obj["inclusion_path"]], obj["event"],
            )
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error):
            return segments, Problem(MALFORMED, number, "", None, "incomplete event line (exported without proofs?)")
        segments[-1].events.append(e)
    return segments, None


def verify(lines: Iterable[str], vkey: str, checkpoint_note: str | None = None) -> Report:
    """Check an export; the report names the first problem, if any."""
    report = Report()
    try:
        verifier = merkle.Verifier.parse(vkey)
    except merkle.NoteError as exc:
        report.problem = Problem(BAD_SIGNATURE, 0, "", None, f"verifier key: {exc}")
        return report
    pinned = None
    if checkpoint_note is not None:
        try:
            pinned = verifier.open(checkpoint_note)
        except merkle.NoteError as exc:
            report.problem = Problem(BAD_SIGNATURE, 0, "", None, f"the given checkpoint: {exc}")
            return report
    segments, problem = _parse(lines, verifier)
    report.segments = len(segments)
    if pinned is not None and not any(
        (s.checkpoint.size, s.checkpoint.root) == (pinned.size, pinned.root) for s in segments
    ):
        report.problem = Problem(CHECKPOINT_MISMATCH, 0, "", None,
                                 f"the file is not pinned to the given checkpoint (tree size {pinned.size})")
        return report
    first = _check(segments, report)
    candidates = [p for p in (problem, first) if p is not None]
    report.problem = min(candidates, key=lambda p: p.line) if candidates else None
    return report


def _positions(segments: list[_Segment]) -> dict[tuple[int, int], int]:
    """(account, account_sequence) -> the line that holds it, as the events' own bytes say."""
    out: dict[tuple[int, int], int] = {}
    for seg in segments:
        for e in seg.events:
            try:
                ev = event_pb2.Event.FromString(e.leaf)
            except DecodeError:
                continue
            out.setdefault((ev.subject_account_id or ev.actor.account_id, ev.account_sequence), e.line)
    return out


def _check(segments: list[_Segment], report: Report) -> Problem | None:
    last_index = -1
    expected: dict[int, int] = {}  # account -> next account_sequence
    present = _positions(segments)
    for seg_no, seg in enumerate(segments):
        account = seg.head.account_id
        report.accounts.add(account)
        if seg_no == 0 or account not in expected:
            expected[account] = 1 if seg.after_sequence == 0 else 0  # 0: unknown start (resumed export)
        events = seg.events
        for i, e in enumerate(events):
            problem = _check_event(seg, e, events, i)
            if problem is not None:
                return problem
            if e.account_id != account:
                return Problem(INSERTED, e.line, e.event_id, e.leaf_index, "an event of another account")
            if e.leaf_index <= last_index:
                kind = INSERTED if e.leaf_index == last_index else REORDERED
                return Problem(kind, e.line, e.event_id, e.leaf_index,
                               "leaf indexes must only grow: this event is out of place")
            want = expected[account] if e.account_sequence else 0  # 0: an event from before account sequences
            if want and e.account_sequence > want:
                later = present.get((account, want), 0)
                if later > e.line:
                    return Problem(REORDERED, e.line, e.event_id, e.leaf_index,
                                   f"the account's event {want} comes later, on line {later}")
                return Problem(REMOVED, e.line, e.event_id, e.leaf_index,
                               f"the account's events {want}..{e.account_sequence - 1} are missing before this one")
            if want and e.account_sequence < want:
                return Problem(INSERTED if e.account_sequence == want - 1 else REORDERED, e.line, e.event_id,
                               e.leaf_index, "the account's sequence goes back")
            if e.account_sequence:
                expected[account] = e.account_sequence + 1
            last_index = e.leaf_index
            report.events += 1
        want = expected[account]
        if seg_no + 1 < len(segments):
            end_line = segments[seg_no + 1].line
        else:
            end_line = events[-1].line + 1 if events else seg.line + 1
        if want and want - 1 < seg.head.count:
            return Problem(REMOVED, end_line, "", None,
                           f"the account's events {want}..{seg.head.count} are missing (the signed account head"
                           f" counts {seg.head.count} in tree size {seg.head.tree_size})")
        if want and want - 1 > seg.head.count:
            return Problem(INSERTED, end_line, "", None, "more events than the signed account head counts")
        if not want:
            expected[account] = seg.head.count + 1
    return None


def _check_event(seg: _Segment, e: _Event, events: list[_Event], i: int) -> Problem | None:
    try:
        view = event_view(e.leaf)
        sealed = event_pb2.Event.FromString(e.leaf)
    except DecodeError:
        return Problem(ALTERED, e.line, e.event_id, e.leaf_index, "leaf_data is not an event")
    e.account_id = sealed.subject_account_id or sealed.actor.account_id
    e.account_sequence = sealed.account_sequence
    e.sealed_sequence = sealed.sequence
    if view != e.view:
        return Problem(ALTERED, e.line, e.event_id, e.leaf_index, "the event's fields differ from its signed bytes")
    if e.tree_size != seg.checkpoint.size:
        return Problem(ALTERED, e.line, e.event_id, e.leaf_index, "proof for another tree than the segment's")
    if _included(seg, e.leaf, e.leaf_index, e.path):
        if e.sealed_sequence and e.sealed_sequence != e.leaf_index + 1:
            return Problem(ALTERED, e.line, e.event_id, e.leaf_index, "the event's sequence is not its place")
        return None
    # Not in the tree where the line says: find out why.
    for other in events:
        if other is not e and _included(seg, e.leaf, other.leaf_index, other.path):
            return Problem(REORDERED, e.line, e.event_id, e.leaf_index,
                           f"these bytes belong at leaf {other.leaf_index}")
    prev = events[i - 1] if i > 0 else None
    nxt = events[i + 1] if i + 1 < len(events) else None
    if nxt is not None:
        following = event_pb2.Event.FromString(nxt.leaf)
        # The next event's own bytes say it belongs where this one stands (everything after was moved up),
        # or it verifies and continues the account's sequence from the event before: this one was put in.
        moved_up = following.sequence and following.sequence - 1 == e.leaf_index
        prev_seq = (event_pb2.Event.FromString(prev.leaf).account_sequence if prev is not None
                    else following.account_sequence - 1)
        continues = _included(seg, nxt.leaf, nxt.leaf_index, nxt.path) and following.account_sequence == prev_seq + 1
        if moved_up or continues:
            return Problem(INSERTED, e.line, e.event_id, e.leaf_index, "this event is not in the signed log")
    return Problem(ALTERED, e.line, e.event_id, e.leaf_index, "these bytes are not what the log signed")


def _included(seg: _Segment, leaf: bytes, index: int, path: list[bytes]) -> bool:
    cp = seg.checkpoint
    return merkle.verify_inclusion(index, cp.size, merkle.leaf_hash(leaf), path, cp.root)


# -- fetching ---------------------------------------------------------------------------------------------


def fetch(url: str, username: str, api_key: str, *, ca: Path | None = None, cursor: str = "",
          page_size: int = 1000, on_page: Callable[[int], None] | None = None) -> Iterator[str]:
    """Lines of a complete export from `cursor` (JSON Lines with proofs), page by page (`on_page` gets each
    page's line count)."""
    import ssl

    if not url.startswith("https://"):
        raise ValueError("the export is fetched over https only")
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    token = base64.b64encode(f"{username}:{api_key}".encode()).decode()
    while True:
        query = urllib.parse.urlencode({"format": "EXPORT_FORMAT_JSONL", "cursor": cursor, "page_size": page_size})
        request = urllib.request.Request(  # noqa: S310 (https only, checked above)
            f"{url.rstrip('/')}/v1/audit/export?{query}", headers={"Authorization": f"Basic {token}"})
        with urllib.request.urlopen(request, context=context, timeout=60) as resp:  # noqa: S310
            page = json.loads(resp.read())
        lines = page["data"].splitlines()
        if on_page is not None:
            on_page(len(lines))
        yield from lines
        cursor = page["next_cursor"]
        if page["complete"]:
            return


API_KEY_ENV = "SENDSAFE_API_KEY"
EXIT_CODES = ("exit status: 0 verified (or fetched), 1 verification failed or the fetch was refused (one line on "
              "stderr), 2 usage")


def _fetch_to(args: argparse.Namespace) -> int:
    import urllib.error

    key = secret("API key", argv_value=args.api_key, file=args.api_key_file, env=API_KEY_ENV, flag="--api-key")
    if not key:
        print(f"fetch: no API key (set ${API_KEY_ENV}, --api-key-file, or give it on stdin)", file=sys.stderr)
        return 2
    done = {"events": 0, "pages": 0}

    def on_page(n: int) -> None:
        done["pages"] += 1
        done["events"] += n
        progress(f"fetched {done['events']} lines ({done['pages']} pages)", same_line=True)

    try:
        with args.out.open("w") as fh:
            for line in fetch(args.url, args.username, key, ca=args.ca, cursor=args.cursor, on_page=on_page):
                fh.write(line + "\n")
    except urllib.error.HTTPError as exc:
        print(f"\nfetch refused: HTTP {exc.code} {exc.reason}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"\nfetch failed: {getattr(exc, 'reason', None) or exc}", file=sys.stderr)
        return 1
    print(f"\nwrote {done['events']} lines to {args.out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sendsafe-audit-verify", description=__doc__.split("\n\n")[0],
                                     epilog=EXIT_CODES)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    v = sub.add_parser("verify", help="check an export file", description="check an export file offline",
                       epilog=EXIT_CODES)
    v.add_argument("file", type=Path, help="the export (JSON Lines)")
    v.add_argument("--key", required=True, help="the log's verifier key (name+id+base64), or @file")
    v.add_argument("--checkpoint", type=Path, help="a signed checkpoint saved earlier that the file must match")
    f = sub.add_parser("fetch", help="download a complete export over HTTPS", epilog=EXIT_CODES,
                       description=f"download a complete export over HTTPS; the API key from ${API_KEY_ENV}, "
                                   "--api-key-file, or stdin (a prompt on a terminal)")
    f.add_argument("--url", required=True, help="the API's base URL (https://...)")
    f.add_argument("--username", required=True, help="the API username")
    f.add_argument("--api-key", help="the API key (discouraged: it lands in shell history)")
    f.add_argument("--api-key-file", type=Path, help="a file holding the API key")
    f.add_argument("--ca", type=Path, help="a CA bundle to trust for the API's certificate")
    f.add_argument("--cursor", default="", help="continue from this cursor")
    f.add_argument("--out", type=Path, required=True, help="where to write the export (JSON Lines)")
    r = sub.add_parser("receipt", help="verify signed key-destruction receipts offline", epilog=EXIT_CODES,
                       description="verify signed key-destruction receipts offline")
    r.add_argument("file", type=Path, help="a receipt, an audit event or export (JSON Lines), or a register")
    r.add_argument("--keys", type=Path, help="the JSON answer of GET /v1/keys/receipt-signing-keys")
    r.add_argument("--key", action="append", default=[], help="a receipt-signing key as ID=BASE64 (repeatable)")
    args = parser.parse_args(argv)
    if args.command == "receipt":
        if not args.keys and not args.key:
            parser.error("receipt: give the receipt-signing public keys (--keys FILE or --key ID=BASE64)")
        return receipt_verify.run(args.file, args.keys, args.key)
    if args.command == "fetch":
        return _fetch_to(args)
    key = Path(args.key[1:]).read_text().strip() if args.key.startswith("@") else args.key
    note = args.checkpoint.read_text() if args.checkpoint else None
    with args.file.open() as fh:
        report = verify(fh, key, note)
    if report.problem is not None:
        print(f"FAILED after {report.events} events: {report.problem}")
        return 1
    print(f"OK: {report.events} events in {report.segments} segment(s) verified against the signed log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
