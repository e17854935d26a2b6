"""`PgMessageStore`: all SQL of the messaging service over one pool, composed of one class per resource."""

from __future__ import annotations

import asyncpg

from services.messaging.adapters.store.closures import ClosuresSql
from services.messaging.adapters.store.delivery import DeliverySql
from services.messaging.adapters.store.inbound import InboundSql
from services.messaging.adapters.store.messages import MessagesSql
from services.messaging.adapters.store.receipts import ReceiptsSql
from services.messaging.adapters.store.settings import SettingsSql


class PgMessageStore(MessagesSql, ReceiptsSql, InboundSql, SettingsSql, DeliverySql, ClosuresSql):
    """The messaging service's PostgreSQL store: every resource's SQL over one pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
