"""The architecture stays easy to see: one shape per service, pure domains, SQL in one layer, no service
reaching into another's code, and generated code only under gen/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "app.py").exists())
SHAPE = {"__init__.py", "__main__.py", "config.py", "app.py", "api.py", "service.py", "domain.py", "store.py",
         "clients.py"}
TRANSPORT = {"grpc", "asyncpg", "redis", "aiohttp", "sendsafe"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_there_are_four_services() -> None:
    assert SERVICES == ["audit", "identity", "keys", "messaging"]


@pytest.mark.parametrize("svc", SERVICES)
def test_every_service_has_the_same_shape(svc: str) -> None:
    files = {p.name for p in (ROOT / "services" / svc).glob("*.py")}
    assert files >= SHAPE, f"services/{svc} is missing {sorted(SHAPE - files)}"
    assert list((ROOT / "services" / svc / "migrations").glob("*.sql")), f"services/{svc} has no migrations"


@pytest.mark.parametrize("svc", SERVICES)
def test_domain_is_pure(svc: str) -> None:
    bad = {m for m in _imports(ROOT / "services" / svc / "domain.py") if m.split(".")[0] in TRANSPORT}
    assert not bad, f"services/{svc}/domain.py imports transport/storage modules: {sorted(bad)}"


@pytest.mark.parametrize("svc", SERVICES)
def test_sql_lives_in_the_store(svc: str) -> None:
    for path in (ROOT / "services" / svc).glob("*.py"):
        if path.name in {"store.py"}:
            continue
        mods = _imports(path)
        assert "asyncpg" not in mods or path.name == "app.py", f"{path.relative_to(ROOT)} talks to PostgreSQL"


@pytest.mark.parametrize("svc", SERVICES)
def test_services_do_not_import_each_other(svc: str) -> None:
    others = {f"services.{o}" for o in SERVICES if o != svc}
    for path in (ROOT / "services" / svc).rglob("*.py"):
        hits = {m for m in _imports(path) if any(m == o or m.startswith(o + ".") for o in others)}
        assert not hits, f"{path.relative_to(ROOT)} imports another service's code: {sorted(hits)}"


def test_generated_code_lives_only_under_gen() -> None:
    # Virtualenvs (.venv, and the tools' own: .venv-checkov, .venv-phoenix) hold third-party generated code.
    stray = [p for p in ROOT.rglob("*_pb2*.py")
             if not any(part.startswith(".venv") for part in p.parts) and "gen" not in p.parts]
    assert not stray, stray
