"""docs/configuration.md names every environment variable the code reads, and its generated tables are what
`python -m tools.configdoc` writes from the settings declarations."""

from __future__ import annotations

import ast
import re

from tools import configdoc

ROOT = configdoc.ROOT
CODE = ("svckit", "gateway", "services", "tools")
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*[A-Z0-9]$")
# A receiver that holds the environment: os.environ, or the mapping a loader was given instead of it.
ENV_RECEIVER = re.compile(r"(^|\.)environ$|^(source|env)$")


def reads_in(source: str) -> set[str]:
    """The environment variables `source` names by a constant: settings declarations and direct reads."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        key = receiver = None
        if isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            first = node.args[0] if node.args else None
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                continue
            if func in ("setting", "os.getenv"):
                key, receiver = first.value, "os"
            elif isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "pop"):
                key, receiver = first.value, ast.unparse(node.func.value)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) \
                and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            key, receiver = node.slice.value, ast.unparse(node.value)
        if key and ENV_NAME.match(key) and receiver and (receiver == "os" or ENV_RECEIVER.search(receiver)):
            found.add(key)
    return found


def read_by_the_code() -> dict[str, str]:
    """Every environment variable the code reads by name -> the first file that reads it."""
    found: dict[str, str] = {}
    for root in CODE:
        for path in sorted((ROOT / root).rglob("*.py")):
            for name in sorted(reads_in(path.read_text(encoding="utf-8"))):
                found.setdefault(name, str(path.relative_to(ROOT)))
    return found


def test_every_variable_the_code_reads_is_documented() -> None:
    page = (ROOT / configdoc.PAGE).read_text(encoding="utf-8")
    read = read_by_the_code()
    assert len(read) > 150  # the scan sees the settings classes, not only the odd direct read
    missing = {name: where for name, where in read.items() if f"`{name}`" not in page}
    assert not missing, (
        f"read by the code but not in {configdoc.PAGE}: {missing}. Declare it with svckit.config.setting(..., doc=...)"
        " or add it to tools/configdoc.py OTHER, then run python -m tools.configdoc")


def test_generated_tables_are_up_to_date() -> None:
    page = (ROOT / configdoc.PAGE).read_text(encoding="utf-8")
    assert configdoc.render(page) == page, "run python -m tools.configdoc and commit docs/configuration.md"


def test_the_tables_carry_what_the_declarations_say() -> None:
    text = configdoc.generated()
    assert "| `GATEWAY_UPSTREAM_TIMEOUT_SECONDS` | number | `10.0` |" in text
    assert "| `SHUTDOWN_GRACE_SECONDS` | number | `5.0` |" in text
    assert re.search(r"\| `DATABASE_URL` \| text \| \*\*required\*\* \| secret: or from the file `DATABASE_URL_FILE`",
                     text)
    assert text.count("`SHUTDOWN_GRACE_SECONDS`") == 2  # once for every service (KitSettings), once for the gateway


def test_the_scan_finds_declarations_and_direct_reads() -> None:
    sample = (
        'x: int = setting("DELTA_W", default=1)\nimport os\nos.environ.get("ALPHA_X")\nos.environ["BETA_Y"]\n'
        'source.get("GAMMA_Z")\nos.getenv("EPS_V")\nd.get("NOT_ENV")\nos.environ["SET_ONLY"] = "1"\n'
    )
    assert reads_in(sample) == {"DELTA_W", "ALPHA_X", "BETA_Y", "GAMMA_Z", "EPS_V"}
