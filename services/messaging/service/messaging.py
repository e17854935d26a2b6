"""`MessagingService`: what the API process does (send, price, history, receipts, replies, cancelling,
settings, the outbox relay and retention), composed from one class per resource over one set of ports."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal

from services.messaging.domain.pricing import Currency, PriceTable
from services.messaging.service.closure import AccountClosures
from services.messaging.service.common import MessagingOptions
from services.messaging.service.history import HistoryUseCases
from services.messaging.service.inbound import InboundUseCases
from services.messaging.service.index_keys import IndexKeys
from services.messaging.service.list_sends import ListRecipients
from services.messaging.service.ports import Cipher, Limiter, MessageStore, Queue, Record
from services.messaging.service.receipts import ReceiptUseCases
from services.messaging.service.replies import Replies
from services.messaging.service.sender_index import SenderIndex
from services.messaging.service.sending import SendingUseCases
from services.messaging.service.settings import SettingsUseCases
from svckit.groupcommit import GroupCommit


class MessagingService(SendingUseCases, HistoryUseCases, ReceiptUseCases, InboundUseCases, SettingsUseCases):
    """What the API process does: every resource's use cases, over one set of ports."""

    def __init__(
        self,
        store: MessageStore,
        queue: Queue,
        cipher: Cipher,
        *,
        prices: PriceTable,
        trial_credit: Decimal,
        currency: Currency,
        outbox_grace_seconds: float = 5.0,
        relay_batch: int = 500,
        clock: Callable[[], float] = time.time,
        limiter: Limiter | None = None,
        options: MessagingOptions | None = None,
        record: Record | None = None,
        senders: SenderIndex | None = None,
        lists: ListRecipients | None = None,
    ) -> None:
        self._store = store
        self._queue = queue
        self._cipher = cipher
        self._prices = prices
        self._trial_credit = trial_credit
        self.currency = currency
        self._opts = options or MessagingOptions(outbox_grace_seconds=outbox_grace_seconds, relay_batch=relay_batch)
        self._grace = self._opts.outbox_grace_seconds
        self._relay_batch = self._opts.relay_batch
        self._clock = clock
        self._limiter = limiter
        self._record = record
        self._published: list[int] = []  # outbox batches published since the last forget_published
        self._group = GroupCommit(self._commit_group)
        self.keys = IndexKeys(store, cipher)
        self.senders = senders
        self.replies = Replies(store, cipher, self.keys, senders)
        self.closures = AccountClosures(store, record)
        self.lists = lists
