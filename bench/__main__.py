"""`make bench`: every benchmark section, one after another, each printing its own figures.

Sections are modules `bench/<name>.py` with a `main() -> int`; `send_path` runs first (the suite
through the gateway), then the others in name order. `python -m bench NAME...` runs only those.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

# Not sections: helpers, and `peer` (Jasmin beside SendSafe: needs RabbitMQ and .venv-jasmin; `make bench-peer`).
_NOT_SECTIONS = {"__main__", "load", "bare_tls", "peer", "peer_report", "peer_smsc"}


def sections() -> list[str]:
    names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name not in _NOT_SECTIONS)
    return ["send_path", *(n for n in names if n != "send_path")]


def main(argv: list[str]) -> int:
    chosen = argv or sections()
    status = 0
    for name in chosen:
        print(f"\n== {name} ==", flush=True)
        status |= importlib.import_module(f"bench.{name}").main()
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
