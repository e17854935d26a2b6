"""The encrypted columns of the identity database, for the periodic rewrap pass (svckit.envelope_rewrap):
every svckit.envelope blob identity stores, with the unique columns that order a resumable scan of it."""

from __future__ import annotations

import asyncpg

from svckit.envelope_rewrap import RewrapColumn, pg_column

ENCRYPTED_COLUMNS = (
    ("totp_factors", "secret_blob", ("subject_kind", "subject_id")),
    # Users' personal data (adapters/store/personal.py), one sealed column per field.
    *(("users", f"{field}_ct", ("id",)) for field in ("email", "phone_number", "first_name", "last_name", "notes")),
    ("users", "allowed_senders_ct", ("id",)),  # a user's sender limit (issue 21)
)


def rewrap_columns(pool: asyncpg.Pool) -> list[RewrapColumn]:
    return [pg_column(pool, table, column, cursor) for table, column, cursor in ENCRYPTED_COLUMNS]
