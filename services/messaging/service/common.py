"""What every use case of the API process shares: its ports, its options, the one outbound-webhook policy
at configuration time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from services.messaging.domain.limits import RateConfig
from services.messaging.domain.pricing import Currency, PriceTable
from services.messaging.service.closure import AccountClosures
from services.messaging.service.default_senders import DefaultSenders
from services.messaging.service.index_keys import IndexKeys
from services.messaging.service.list_sends import ListRecipients
from services.messaging.service.ports import Cipher, Limiter, MessageStore, Queue, Record
from services.messaging.service.replies import Replies
from services.messaging.service.sender_index import SenderIndex
from svckit.webhooks import check_destination

POLL = "poll"


@dataclass(frozen=True)
class MessagingOptions:
    outbox_grace_seconds: float = 5.0
    redeliver_seconds: float = 300.0
    relay_batch: int = 500
    rates: RateConfig = field(default_factory=RateConfig)
    allow_private_webhooks: bool = False  # tests only: loopback/private webhook URLs and any port


class UseCases:
    """What every use case of the API process shares: its ports, options and the account's index keys."""

    _store: MessageStore
    _queue: Queue
    _cipher: Cipher
    _prices: PriceTable
    _trial_credit: Decimal
    currency: Currency
    _opts: MessagingOptions
    _clock: Callable[[], float]
    _limiter: Limiter | None
    _record: Record | None
    keys: IndexKeys
    replies: Replies
    closures: AccountClosures
    senders: SenderIndex | None  # the account's sender identities (None: every non-empty `from` is refused)
    lists: ListRecipients | None  # contact lists, for sends with list_id (None: such sends are refused)
    defaults: DefaultSenders | None = None  # default senders for an empty `from` (None: the shared number)

    async def _webhook_url(self, url: str) -> str:
        """The one outbound-webhook policy, at configuration time (the worker applies it again)."""
        return await check_destination(url, allow_private=self._opts.allow_private_webhooks)
