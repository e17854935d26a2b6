"""Key notices: the wire form, and what a subscriber ignores."""

from __future__ import annotations

from svckit.keyevents import ACCOUNT_KEYS_CHANGED, API_KEYS_CHANGED, KeyNotice, channel


def test_round_trip() -> None:
    for notice in (
        KeyNotice(API_KEYS_CHANGED, 5, ("abc", "def"), "revoked"),
        KeyNotice(ACCOUNT_KEYS_CHANGED, 9, (), "rotated"),
    ):
        assert KeyNotice.decode(notice.encode()) == notice
        assert KeyNotice.decode(notice.encode().decode()) == notice
    assert channel("sendsafe:") == "sendsafe:keys:events"


def test_foreign_or_malformed_messages_are_ignored() -> None:
    for raw in (
        b"",
        b"not json",
        b"[]",
        b'{"kind": "something.else", "account_id": 1}',
        b'{"kind": "api_keys.changed"}',
        b'{"kind": "api_keys.changed", "account_id": "1"}',
        b'{"kind": "api_keys.changed", "account_id": 1, "key_ids": [1]}',
        b'{"kind": "api_keys.changed", "account_id": 1, "key_ids": "abc"}',
        b'{"kind": "api_keys.changed", "account_id": 1, "key_ids": []' + b" " * 70_000 + b"}",
    ):
        assert KeyNotice.decode(raw) is None
