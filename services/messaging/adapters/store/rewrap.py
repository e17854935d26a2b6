"""The encrypted columns of the messaging database, for the periodic rewrap pass (svckit.envelope_rewrap):
every svckit.envelope blob messaging stores, with the unique columns that order a resumable scan of it."""

from __future__ import annotations

import asyncpg

from svckit.envelope_rewrap import RewrapColumn, pg_column

ENCRYPTED_COLUMNS = (
    ("messages", "body_ct", ("id",)),
    ("messages", "to_ct", ("id",)),
    ("messages", "custom_ct", ("id",)),
    ("inbound_messages", "from_ct", ("id",)),
    ("inbound_messages", "body_ct", ("id",)),
    ("idempotency_keys", "result_ct", ("account_id", "key_hash")),
    ("account_settings", "webhook_secret_ct", ("account_id",)),
    ("account_keys", "index_key_ct", ("account_id",)),
    ("sender_identities", "value_ct", ("id",)),
    ("contact_lists", "name_ct", ("list_id",)),
    ("contacts", "data_ct", ("contact_id",)),
    ("contact_imports", "file_ct", ("import_id",)),
)


def rewrap_columns(pool: asyncpg.Pool) -> list[RewrapColumn]:
    return [pg_column(pool, table, column, cursor) for table, column, cursor in ENCRYPTED_COLUMNS]
