"""Keys service settings.

The root key comes from `KEYS_ROOT_KEY` (64 hex characters or base64 of 32 bytes) or from the file named by
`KEYS_ROOT_KEY_FILE`. A key file must not be readable by anyone but its owner (mode 0600 or 0400); a
deployment whose secret mount is group-readable by design (Kubernetes `fsGroup` with mode 0440) says so
explicitly with `KEYS_ROOT_KEY_ALLOW_GROUP_READ=true`. World-readable files are always refused. The key
never appears in a repr, a log line or an error message.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.keys.domain.errors import RootKeyInvalid
from services.keys.domain.root_key import parse_root_key
from svckit.config import ConfigError, KitSettings, load, setting

_AUDIT_REQUIRED = "AUDIT_ADDR: required by the keys service (issuing keys is audited, fail closed)"


@dataclass(frozen=True, kw_only=True)
class Settings(KitSettings):
    service_name: str = setting("SERVICE_NAME", default="keys")
    # Not declared `secret` for svckit.config.load: the *_FILE variant is read here, with a permission check.
    root_key: str = dataclasses.field(
        default="",
        repr=False,
        metadata={"env": "KEYS_ROOT_KEY", "secret": False, "doc": "root key: 64 hex chars or base64 of 32 bytes"},
    )
    root_key_file: Path | None = setting("KEYS_ROOT_KEY_FILE", default=None, doc="file holding the root key")
    root_key_id: str = setting(
        "KEYS_ROOT_KEY_ID", default="local-1", doc="name of the root key; stored beside everything it wraps"
    )
    root_key_allow_group_read: bool = setting("KEYS_ROOT_KEY_ALLOW_GROUP_READ", default=False)
    kek_cache_seconds: float = setting(
        "KEYS_KEK_CACHE_SECONDS", default=60.0, doc="how long unwrapped account keys stay in memory"
    )
    kek_cache_entries: int = setting("KEYS_KEK_CACHE_ENTRIES", default=10_000)
    last_used_flush_seconds: float = setting(
        "KEYS_LAST_USED_FLUSH_SECONDS", default=5.0, doc="period of the API-key last-used write-back"
    )
    retiring_root_keys_file: Path | None = setting(
        "KEYS_RETIRING_ROOT_KEYS_FILE", default=None,
        doc="root-key rotation: file of '<id> <key>' lines, older root keys kept until nothing uses them",
    )
    api_key_max_lifetime_days: float = setting(
        "KEYS_API_KEY_MAX_LIFETIME_DAYS", default=366.0, doc="no API key lives longer (GitHub's default policy)"
    )
    api_key_default_lifetime_days: float = setting(
        "KEYS_API_KEY_DEFAULT_LIFETIME_DAYS", default=90.0, doc="lifetime of a created key that asks for none"
    )
    kek_rotation_days: float = setting(
        "KEYS_KEK_ROTATION_DAYS", default=90.0, doc="rotate account keys this often (0 = only by request)"
    )
    min_destruction_pending_seconds: int = setting(
        "KEYS_MIN_DESTRUCTION_PENDING_SECONDS", default=7 * 24 * 3600,
        doc="shortest pending window before an account's keys are destroyed",
    )
    maintenance_seconds: float = setting(
        "KEYS_MAINTENANCE_SECONDS", default=60.0, doc="period of rotations, destructions and root-key rewrapping"
    )
    rewrap_services: str = setting(
        "KEYS_REWRAP_SERVICES", default="identity,messaging",
        doc="data-owning services (comma-separated) whose rewrap reports must show nothing left under a version"
            " before it can be retired (keys' own sealed items always count too, as data owner 'keys'); empty:"
            " retirement is not checked",
    )
    rewrap_seconds: float = setting(
        "KEYS_REWRAP_SECONDS", default=600.0,
        doc="period of keys' own rewrap pass: API keys' sealed sender-limit numbers moved to their account's newest"
            " key version, what is left reported as data owner 'keys' (retire refuses while any is below)",
    )

    def __post_init__(self) -> None:
        problems = []
        try:
            self.root_key_bytes()
        except ConfigError as exc:
            problems.extend(exc.problems)
        if not self.audit_addr:
            problems.append(_AUDIT_REQUIRED)
        if self.kek_cache_entries < 1:
            problems.append("KEYS_KEK_CACHE_ENTRIES: must be at least 1")
        if self.last_used_flush_seconds <= 0:
            problems.append("KEYS_LAST_USED_FLUSH_SECONDS: must be positive")
        if self.maintenance_seconds <= 0:
            problems.append("KEYS_MAINTENANCE_SECONDS: must be positive")
        if self.rewrap_seconds <= 0:
            problems.append("KEYS_REWRAP_SECONDS: must be positive")
        if not 0 < self.api_key_max_lifetime_days <= 3660:
            problems.append("KEYS_API_KEY_MAX_LIFETIME_DAYS: must be between 0 and 3660")
        if not 0 < self.api_key_default_lifetime_days <= self.api_key_max_lifetime_days:
            problems.append("KEYS_API_KEY_DEFAULT_LIFETIME_DAYS: must be positive and at most the maximum lifetime")
        if self.kek_rotation_days < 0 or 0 < self.kek_rotation_days * 86400 < 3600:
            problems.append("KEYS_KEK_ROTATION_DAYS: 0 (off) or at least one hour")
        if not 0 <= self.min_destruction_pending_seconds <= 30 * 86400:
            problems.append("KEYS_MIN_DESTRUCTION_PENDING_SECONDS: between 0 and 30 days")
        try:
            self.root_keys()
        except ConfigError as exc:
            problems.extend(p for p in exc.problems if p.startswith("KEYS_RETIRING"))
        if problems:
            raise ConfigError(problems)

    def root_key_bytes(self) -> bytes:
        """The 32-byte root key, read and checked now (ConfigError without echoing any key material)."""
        return read_root_key(self.root_key, self.root_key_file, allow_group_read=self.root_key_allow_group_read)

    def root_keys(self) -> dict[str, bytes]:
        """Every root key by id: the current one and the retiring ones (still needed to unwrap)."""
        keys = {self.root_key_id: self.root_key_bytes()}
        if self.retiring_root_keys_file is not None:
            text = _read_key_file(
                self.retiring_root_keys_file, self.root_key_allow_group_read, "KEYS_RETIRING_ROOT_KEYS_FILE"
            )
            for n, line in enumerate(text.splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                kid, _, value = line.partition(" ")
                where = f"KEYS_RETIRING_ROOT_KEYS_FILE line {n}"
                if not kid or not value.strip():
                    raise ConfigError([f"{where}: expected '<id> <key>'"])
                if kid == self.root_key_id:
                    raise ConfigError([f"{where}: {kid!r} is the current root key id"])
                try:
                    keys[kid] = parse_root_key(value)
                except RootKeyInvalid as exc:
                    raise ConfigError([f"{where}: {exc.message}"]) from None
        return keys


def read_root_key(value: str, file: Path | None, *, allow_group_read: bool = False) -> bytes:
    if value and file is not None:
        raise ConfigError(["KEYS_ROOT_KEY and KEYS_ROOT_KEY_FILE: set one, not both"])
    if value:
        text, name = value, "KEYS_ROOT_KEY"
    elif file is not None:
        text, name = _read_key_file(file, allow_group_read), "KEYS_ROOT_KEY_FILE"
    else:
        raise ConfigError(["KEYS_ROOT_KEY (or KEYS_ROOT_KEY_FILE): required but not set"])
    try:
        return parse_root_key(text)
    except RootKeyInvalid as exc:
        raise ConfigError([f"{name}: {exc.message}"]) from None


def _read_key_file(path: Path, allow_group_read: bool, name: str = "KEYS_ROOT_KEY_FILE") -> str:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read {str(path)!r} ({exc.strerror})"]) from None
    try:
        # fstat the descriptor we read from, so the check and the read see the same file.
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError([f"{name}: {str(path)!r} is not a regular file"])
        forbidden = stat.S_IRWXO | ((stat.S_IWGRP | stat.S_IXGRP) if allow_group_read else stat.S_IRWXG)
        if mode & forbidden:
            hint = "0600" if not allow_group_read else "0640 or tighter"
            raise ConfigError([f"{name}: {str(path)!r} has mode {stat.S_IMODE(mode):04o}; it must be {hint}"])
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(64 * 1024)
    finally:
        os.close(fd)
    try:
        return data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError([f"{name}: not hex or base64 text"]) from None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """`load(Settings)`, reporting a root-key problem together with every other problem."""
    source = os.environ if env is None else env
    try:
        return load(Settings, source)
    except ConfigError as exc:
        if any(p.startswith("KEYS_ROOT_KEY") for p in exc.problems):
            raise
        # load() stopped before Settings.__post_init__: run its checks on the raw values too.
        more = [] if source.get("AUDIT_ADDR") else [_AUDIT_REQUIRED]
        file = source.get("KEYS_ROOT_KEY_FILE")
        allow = source.get("KEYS_ROOT_KEY_ALLOW_GROUP_READ", "").strip().lower() in {"1", "true", "yes", "on"}
        try:
            read_root_key(source.get("KEYS_ROOT_KEY", ""), Path(file) if file else None, allow_group_read=allow)
        except ConfigError as root_problems:
            more += root_problems.problems
        if more:
            raise ConfigError(exc.problems + more) from None
        raise
