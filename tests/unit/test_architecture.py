"""The architecture stays easy to see: one shape per service, pure domains, use cases that know ports and not
adapters, SQL in one layer, svckit below everything, no service reaching into another's code, files a person
can read in one sitting, and generated code only under gen/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "app.py").exists())
# Every service: entrypoint (__main__), composition root (app), settings (config), the gRPC edge (api), use
# cases (service/), pure rules (domain/), the outside world (adapters/, with the store), and its schema.
SHAPE_FILES = {"__init__.py", "__main__.py", "config.py", "app.py", "api.py"}
SHAPE_PACKAGES = {"service", "domain", "adapters", "migrations"}
OPTIONAL_PACKAGES = {"entrypoints"}  # extra processes a service runs (messaging's dispatch worker)
TRANSPORT = {"grpc", "asyncpg", "redis", "aiohttp", "sendsafe", "google", "opentelemetry"}
# What a use case may import from the edges: the audit event is the suite's lingua franca, not a transport.
SERVICE_LAYER_ALLOWED = {"sendsafe.audit.v1", "google.protobuf"}
MAX_LINES = 500
SIZE_EXCEPTIONS: dict[str, str] = {}  # "path": "why it cannot be split" — empty, and it should stay so


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path.relative_to(ROOT)} uses a relative import; name the module in full")
    return out


def _modules(svc: str, layer: str) -> list[Path]:
    base = ROOT / "services" / svc / layer
    return sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]


def _top(mod: str) -> str:
    return mod.split(".")[0]


def test_there_are_four_services() -> None:
    assert SERVICES == ["audit", "identity", "keys", "messaging"]


@pytest.mark.parametrize("svc", SERVICES)
def test_every_service_has_the_same_shape(svc: str) -> None:
    base = ROOT / "services" / svc
    files = {p.name for p in base.glob("*.py")}
    packages = {p.name for p in base.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert files == SHAPE_FILES, f"services/{svc} top level should be exactly {sorted(SHAPE_FILES)}: {sorted(files)}"
    assert packages >= SHAPE_PACKAGES, f"services/{svc} is missing {sorted(SHAPE_PACKAGES - packages)}"
    assert packages <= SHAPE_PACKAGES | OPTIONAL_PACKAGES, f"services/{svc} has {sorted(packages - SHAPE_PACKAGES)}"
    adapters = base / "adapters"
    assert (adapters / "store.py").exists() or (adapters / "store" / "__init__.py").exists(), \
        f"services/{svc}/adapters has no store"
    assert list((base / "migrations").glob("*.sql")), f"services/{svc} has no migrations"


@pytest.mark.parametrize("svc", SERVICES)
def test_domain_is_pure(svc: str) -> None:
    for path in _modules(svc, "domain"):
        bad = {m for m in _imports(path)
               if _top(m) in TRANSPORT or (m.startswith(f"services.{svc}.") and ".domain" not in m)}
        assert not bad, f"{path.relative_to(ROOT)} imports transport, storage or outer layers: {sorted(bad)}"


@pytest.mark.parametrize("svc", SERVICES)
def test_use_cases_know_ports_not_adapters(svc: str) -> None:
    own = f"services.{svc}."
    outer = tuple(own + layer for layer in ("adapters", "api", "app", "entrypoints", "config"))
    for path in _modules(svc, "service"):
        mods = _imports(path)
        bad = {m for m in mods if m.startswith(outer)}
        bad |= {m for m in mods if _top(m) in TRANSPORT and not m.startswith(tuple(SERVICE_LAYER_ALLOWED))}
        bad |= {m for m in mods if m in {"svckit.context", "svckit.server", "svckit.rpc", "svckit.db"}}
        assert not bad, f"{path.relative_to(ROOT)} reaches past its ports: {sorted(bad)}"


@pytest.mark.parametrize("svc", SERVICES)
def test_sql_lives_in_the_store(svc: str) -> None:
    base = ROOT / "services" / svc
    for path in base.rglob("*.py"):
        rel = path.relative_to(base).as_posix()
        if rel == "app.py" or rel == "adapters/store.py" or rel.startswith("adapters/store/"):
            continue
        assert "asyncpg" not in _imports(path), f"{path.relative_to(ROOT)} talks to PostgreSQL"


@pytest.mark.parametrize("svc", SERVICES)
def test_services_do_not_import_each_other(svc: str) -> None:
    others = {f"services.{o}" for o in SERVICES if o != svc}
    for path in (ROOT / "services" / svc).rglob("*.py"):
        hits = {m for m in _imports(path) if any(m == o or m.startswith(o + ".") for o in others)}
        assert not hits, f"{path.relative_to(ROOT)} imports another service's code: {sorted(hits)}"


def test_svckit_sits_below_everything() -> None:
    for path in (ROOT / "svckit").rglob("*.py"):
        bad = {m for m in _imports(path) if _top(m) in {"services", "gateway", "tools", "tests", "bench"}}
        assert not bad, f"{path.relative_to(ROOT)} imports from a layer above svckit: {sorted(bad)}"


def test_package_inits_only_describe() -> None:
    """An __init__.py is a map of its package (a docstring), never a second place where code lives."""
    for top in ("services", "svckit", "gateway"):
        for path in (ROOT / top).rglob("__init__.py"):
            body = ast.parse(path.read_text()).body
            code = [n for n in body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
            assert not code, f"{path.relative_to(ROOT)} holds code; put it in a named module"


def test_files_stay_readable_in_one_sitting() -> None:
    too_long = {}
    for top in ("services", "svckit", "gateway", "tools", "bench"):
        for path in (ROOT / top).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            lines = len(path.read_text().splitlines())
            if lines > MAX_LINES and rel not in SIZE_EXCEPTIONS:
                too_long[rel] = lines
    assert not too_long, f"split these (or say why not in SIZE_EXCEPTIONS): {too_long}"


def test_generated_code_lives_only_under_gen() -> None:
    # Virtualenvs (.venv, and the tools' own: .venv-checkov, .venv-phoenix) hold third-party generated code.
    stray = [p for p in ROOT.rglob("*_pb2*.py")
             if not any(part.startswith(".venv") for part in p.parts) and "gen" not in p.parts]
    assert not stray, stray
