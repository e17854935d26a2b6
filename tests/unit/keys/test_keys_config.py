"""Keys settings: root key from env or a private file, refused when exposed, never echoed."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from services.keys.config import Settings, load_settings
from svckit.config import ConfigError

KEY = bytes(range(200, 232))


def _env(**extra: str) -> dict[str, str]:
    base = {
        "TLS_CERT_FILE": "/c",
        "TLS_KEY_FILE": "/k",
        "TLS_CA_FILE": "/ca",
        "DATABASE_URL": "postgresql://x/y",
        "AUDIT_ADDR": "127.0.0.1:1",
    }
    base.update(extra)
    return base


def _key_file(tmp_path: Path, mode: int, text: str | None = None) -> Path:
    path = tmp_path / f"root-{mode:o}"
    path.write_text(text if text is not None else KEY.hex() + "\n")
    os.chmod(path, mode)
    return path


def test_root_key_from_env_hex_or_base64() -> None:
    s = load_settings(_env(KEYS_ROOT_KEY=KEY.hex()))
    assert s.root_key_bytes() == KEY and s.service_name == "keys"
    assert load_settings(_env(KEYS_ROOT_KEY=base64.b64encode(KEY).decode())).root_key_bytes() == KEY
    assert KEY.hex() not in repr(s)


def test_root_key_from_private_file(tmp_path: Path) -> None:
    for mode in (0o600, 0o400):
        s = load_settings(_env(KEYS_ROOT_KEY_FILE=str(_key_file(tmp_path, mode))))
        assert s.root_key_bytes() == KEY


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o606])
def test_exposed_key_file_is_refused(tmp_path: Path, mode: int) -> None:
    path = _key_file(tmp_path, mode)
    with pytest.raises(ConfigError) as info:
        load_settings(_env(KEYS_ROOT_KEY_FILE=str(path)))
    assert f"{mode:04o}" in str(info.value)
    assert KEY.hex() not in str(info.value)


def test_group_read_only_when_allowed_explicitly(tmp_path: Path) -> None:
    path = _key_file(tmp_path, 0o440)
    with pytest.raises(ConfigError):
        load_settings(_env(KEYS_ROOT_KEY_FILE=str(path)))
    s = load_settings(_env(KEYS_ROOT_KEY_FILE=str(path), KEYS_ROOT_KEY_ALLOW_GROUP_READ="true"))
    assert s.root_key_bytes() == KEY
    for mode in (0o444, 0o460):  # world-readable or group-writable: never
        with pytest.raises(ConfigError):
            load_settings(_env(KEYS_ROOT_KEY_FILE=str(_key_file(tmp_path, mode)), KEYS_ROOT_KEY_ALLOW_GROUP_READ="1"))


def test_bad_keys_are_reported_without_their_value(tmp_path: Path) -> None:
    wrong = "ab" * 31
    with pytest.raises(ConfigError) as info:
        load_settings(_env(KEYS_ROOT_KEY=wrong))
    assert wrong not in str(info.value) and "KEYS_ROOT_KEY" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_settings(_env(KEYS_ROOT_KEY_FILE=str(_key_file(tmp_path, 0o600, "cd" * 31))))
    assert "cd" * 31 not in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_settings(_env(KEYS_ROOT_KEY_FILE=str(tmp_path / "missing")))
    assert "cannot read" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_settings(_env(KEYS_ROOT_KEY_FILE=str(tmp_path)))
    assert "not a regular file" in str(info.value)


def test_both_or_neither_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not both"):
        load_settings(_env(KEYS_ROOT_KEY=KEY.hex(), KEYS_ROOT_KEY_FILE=str(_key_file(tmp_path, 0o600))))
    with pytest.raises(ConfigError, match="KEYS_ROOT_KEY"):
        load_settings(_env())


def test_every_problem_is_listed_at_once() -> None:
    env = _env()
    del env["DATABASE_URL"], env["AUDIT_ADDR"]
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    text = str(info.value)
    assert "DATABASE_URL" in text and "KEYS_ROOT_KEY" in text and "AUDIT_ADDR" in text


def test_audit_is_required() -> None:
    with pytest.raises(ConfigError, match="AUDIT_ADDR"):
        load_settings(_env(KEYS_ROOT_KEY=KEY.hex(), AUDIT_ADDR=""))
    with pytest.raises(ConfigError, match="AUDIT_ADDR"):
        Settings(tls_cert_file=Path(), tls_key_file=Path(), tls_ca_file=Path(), database_url="", root_key=KEY.hex())
