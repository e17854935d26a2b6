"""svckit's JSON log lines keep every `extra=` field, and redact the ones whose name may hold a secret, a
body or personal data, and any value shaped like an API key."""

from __future__ import annotations

import json
import logging

from svckit.telemetry import REDACTED, JsonFormatter

KEY = "ss_live_AbCdEfGhIjKl_0123456789abcdefghijklMNOPQR"


def _line(**extra: object) -> dict[str, object]:
    record = logging.LogRecord("svc.test", logging.WARNING, __file__, 1, "used %s", (KEY,), None)
    record.__dict__.update(extra)
    out: dict[str, object] = json.loads(JsonFormatter("messaging").format(record))
    return out


def test_extra_fields_are_kept() -> None:
    out = _line(event="x.y", dependency="redis", attempt=3, carrier_health={"state": "down"}, api_key_id="k1",
                key_id="k2", code="UNAVAILABLE", ratio=0.5, ok=True)
    assert out["event"] == "x.y" and out["dependency"] == "redis" and out["attempt"] == 3
    assert out["carrier_health"] == {"state": "down"} and out["api_key_id"] == "k1" and out["key_id"] == "k2"
    assert (out["code"], out["ratio"], out["ok"]) == ("UNAVAILABLE", 0.5, True)
    assert (out["service"], out["logger"], out["level"]) == ("messaging", "svc.test", "WARNING")


def test_secret_names_and_api_key_values_are_redacted() -> None:
    out = _line(password="hunter2", api_key=KEY, authorization="Basic eA==", body="hi", to="+61400000000",
                phone_number="+61400000001", email="a@b.c", session_token="t", details={"secret": "s", "n": 1},
                note=f"key {KEY} used")
    for name in ("password", "api_key", "authorization", "body", "to", "phone_number", "email", "session_token"):
        assert out[name] == REDACTED, name
    assert out["details"] == {"secret": REDACTED, "n": 1}
    assert KEY not in json.dumps(out) and out["message"] == f"used {REDACTED}" and out["note"] == f"key {REDACTED} used"
    for value in ("hunter2", "Basic eA==", "+61400000000", "a@b.c"):
        assert value not in json.dumps(out)
