"""What the operator and customer commands share (issue 19): progress lines on stderr, a confirmation before
something is replaced, and secrets read from a file, the environment or stdin rather than only from argv."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def progress(line: str, *, same_line: bool = False) -> float:
    """A progress line on stderr (stdout stays for results); `same_line` rewrites the current line. Returns
    time.monotonic(), to time the step it announces."""
    print(("\r" if same_line else "") + line, end="" if same_line else "\n", file=sys.stderr, flush=True)
    return time.monotonic()


def confirm(question: str, items: list[str], flag: str = "--yes") -> bool:
    """Ask on the terminal (type 'yes'); with no terminal there is nobody to ask: not confirmed."""
    if not sys.stdin.isatty():
        print(f"{question}: no terminal to confirm it on, pass {flag}", file=sys.stderr)
        return False
    print(question + ":", *(f"  {item}" for item in items), sep="\n", file=sys.stderr)
    print("type 'yes' to go on: ", end="", file=sys.stderr, flush=True)
    if sys.stdin.readline().strip().lower() == "yes":
        return True
    print(f"not confirmed: nothing was changed ({flag} confirms without asking)", file=sys.stderr)
    return False


def secret(what: str, *, argv_value: str | None, file: Path | None, env: str, flag: str) -> str:
    """A secret from `file`, else $`env`, else a prompt on a terminal, else stdin's first line. A value given on
    the command line still works, with a warning: it lands in shell history and the process list."""
    if argv_value:
        print(f"warning: {flag} lands in your shell history and the process list; prefer ${env}, "
              f"{flag}-file or stdin", file=sys.stderr)
        return argv_value
    if file is not None:
        return file.read_text().strip()
    if os.environ.get(env):
        return os.environ[env]
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass(f"{what}: ").strip()
    return sys.stdin.readline().strip()
