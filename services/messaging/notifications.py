"""Platform notifications: the audit service's alert SMS, sent as one SMS of the account.

A use case of its own (not a MessagingService method) so the send path stays untouched: it goes through
`MessagingService.send_sms` with the account as the caller, so the message is validated, priced, debited,
encrypted and delivered exactly like the account's own sends (from the shared sender, source
"sendsafe-alerts"). Email is refused until messaging sends email.
"""

from __future__ import annotations

from services.messaging.domain import Caller, InvalidAccountId, MessageStatusCode, OutboundInput
from services.messaging.service import MessagingService
from svckit.errors import FailedPrecondition

SMS = 1  # sendsafe.messaging.v1.NotificationChannel.NOTIFICATION_CHANNEL_SMS
SOURCE = "sendsafe-alerts"


class ChannelNotAvailable(FailedPrecondition):
    reason = "CHANNEL_NOT_AVAILABLE"


class NotificationRejected(FailedPrecondition):
    reason = "NOTIFICATION_REJECTED"


class Notifications:
    def __init__(self, messaging: MessagingService) -> None:
        self._messaging = messaging

    async def send(self, account_id: int, channel: int, to: str, body: str) -> str:
        """Send one notification; returns the message id."""
        if account_id <= 0:
            raise InvalidAccountId("account_id must be a positive account id")
        if channel != SMS:
            raise ChannelNotAvailable("only SMS notifications can be sent")
        result = await self._messaging.send_sms(
            Caller(account_id, 0, SOURCE), [OutboundInput(body=body, to=to, source=SOURCE)]
        )
        item = result.items[0]
        if item.status is not MessageStatusCode.SUCCESS:
            raise NotificationRejected("the notification was not accepted", status=item.status.value)
        return item.message_id
