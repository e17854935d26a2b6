"""Typed settings from the environment.

A settings class is a frozen, kw-only dataclass whose fields are declared with `setting()`. `load()`
reads every field, converts it to the annotated type, reads `<NAME>_FILE` for secrets (mounted
Secret files in Kubernetes), and fails with one error that lists *every* missing or malformed
setting. Tests never touch the environment: they construct the dataclass directly.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
_MISSING: Any = dataclasses.MISSING


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = problems


def setting(env: str, *, default: Any = _MISSING, secret: bool = False, doc: str = "") -> Any:
    """Declare a field read from environment variable `env` (and `env`_FILE when `secret`). A secret is left
    out of the settings' repr, so printing or logging a settings object never shows it."""
    meta = {"env": env, "secret": secret, "doc": doc}
    if default is _MISSING:
        return dataclasses.field(metadata=meta, repr=not secret)
    return dataclasses.field(default=default, metadata=meta, repr=not secret)


def _convert(raw: str, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if raw == "":
            return None
        return _convert(raw, args[0])
    if origin is tuple:
        (item,) = typing.get_args(typ)[:1]
        return tuple(_convert(part.strip(), item) for part in raw.split(",") if part.strip())
    if typ is bool:
        low = raw.strip().lower()
        if low in {"1", "true", "yes", "on"}:
            return True
        if low in {"0", "false", "no", "off", ""}:
            return False
        raise ValueError(f"not a boolean: {raw!r}")
    if typ is int:
        return int(raw)
    if typ is float:
        return float(raw)
    if typ is Path:
        return Path(raw)
    return raw


def load(cls: type[T], env: Mapping[str, str] | None = None) -> T:
    """Build `cls` from the environment, reporting all problems at once."""
    source = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    problems: list[str] = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = f.metadata.get("env")
        if not name:
            continue
        raw: str | None = source.get(name)
        file_var = f"{name}_FILE"
        if raw is None and f.metadata.get("secret") and source.get(file_var):
            try:
                raw = Path(source[file_var]).read_text().strip()
            except OSError as exc:
                problems.append(f"{file_var}: cannot read {source[file_var]!r} ({exc.strerror})")
                continue
        if raw is None:
            if f.default is _MISSING and f.default_factory is _MISSING:
                hint = f" (or {file_var})" if f.metadata.get("secret") else ""
                problems.append(f"{name}{hint}: required but not set")
            continue
        try:
            values[f.name] = _convert(raw, hints[f.name])
        except ValueError as exc:
            # Never echo a secret's value back.
            shown = "<redacted>" if f.metadata.get("secret") else repr(raw)
            problems.append(f"{name}: cannot parse {shown} as {hints[f.name]} ({type(exc).__name__})")
    if problems:
        raise ConfigError(problems)
    return cls(**values)


@dataclasses.dataclass(frozen=True, kw_only=True)
class KitSettings:
    """Settings every gRPC service shares. Service settings subclass this."""

    service_name: str = setting("SERVICE_NAME")
    grpc_listen: str = setting("GRPC_LISTEN", default="127.0.0.1:0")
    health_listen: str = setting("HEALTH_LISTEN", default="", doc="plaintext health-only port for probes")
    metrics_listen: str = setting("METRICS_LISTEN", default="",
                                  doc="plaintext Prometheus GET /metrics (host:port); empty = off")
    tls_cert_file: Path = setting("TLS_CERT_FILE")
    tls_key_file: Path = setting("TLS_KEY_FILE")
    tls_ca_file: Path = setting("TLS_CA_FILE")
    database_url: str = setting("DATABASE_URL", secret=True)
    redis_url: str = setting("REDIS_URL", default="redis://127.0.0.1:6379/0", secret=True)
    redis_prefix: str = setting("REDIS_PREFIX", default="sendsafe:")
    audit_addr: str = setting("AUDIT_ADDR", default="")
    log_level: str = setting("LOG_LEVEL", default="INFO")
    shutdown_grace_seconds: float = setting("SHUTDOWN_GRACE_SECONDS", default=5.0)
    step_up_max_age_seconds: int = setting(
        "STEP_UP_MAX_AGE_SECONDS", default=300,
        doc="a privileged RPC on a session needs a second factor this recent (RFC 9470); the gateway's too",
    )
