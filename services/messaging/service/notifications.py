"""Platform notifications: alert SMS are sends by the alert rule's owner, to verified destinations.

A use case of its own (not a MessagingService method) so the send path stays untouched: an alert goes
through `MessagingService.send_sms` as the rule's owner (user, API key, that key's send limits and
allowed countries), so it is validated, limited, priced, debited, encrypted, recorded as that user's send
and delivered exactly like the owner's own sends (from the shared sender, source "sendsafe-alerts"). Its
`cause` marks the delivery events it causes, which alert rules never match. Only a destination the
account verified (a code sent to it, as a send by the customer, entered back) is notified.

Email goes over SMTP (the `Mailer`): an alert to a verified address (the owner re-checked as for SMS; nothing
is priced), a verification code to the address being verified, and security notifications to the account's
owners (`account_owners`: the main user's address identity holds, no verification, no owner; subject and
body exactly as the caller, audit, wrote them from its fixed templates). A mail server that cannot take it now
is EMAIL_UNAVAILABLE (audit retries), one that refuses it for good EMAIL_REJECTED. Every email sent or failed
is an audit event naming the address masked, marked with its cause (no alert rule matches it). Without
MESSAGING_SMTP_HOST email is CHANNEL_NOT_AVAILABLE.

The owner's rights are checked again at every delivery, not only when the rule was set: identity must still
have the user active and holding sms.send, and keys the API key the rule was set with (or the key it was
rolled to) still active and scoped to it. Otherwise the alert is refused as ALERT_OWNER_NOT_ALLOWED (audit
records the delivery as failed, for good) with an audit event that says which check failed.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable

from sendsafe.audit.v1 import event_pb2
from services.messaging.domain.closure import CLOSURE_RECEIPT, closure_receipt_email
from services.messaging.domain.destinations import (
    ALERT_DELIVERY,
    DESTINATION_CODE_ATTEMPTS,
    DESTINATION_CODE_TTL_SECONDS,
    DESTINATION_CODES_PER_HOUR,
    DESTINATION_VERIFICATION,
    SESSION_SCOPES,
    AlertOwnerNotAllowed,
    ChannelNotAvailable,
    Destination,
    DestinationAttemptsExceeded,
    DestinationCodeExpired,
    DestinationCodeInvalid,
    DestinationCodesExceeded,
    DestinationInvalid,
    DestinationNotFound,
    DestinationNotVerified,
    IdentityNotConfigured,
    NotificationRejected,
    check_destination_code,
    destination_code_hash,
    new_destination_code,
    owner_refusal,
    verification_text,
)
from services.messaging.domain.emails import (
    EMAIL,
    SECURITY_NOTIFICATION,
    EmailAddressInvalid,
    EmailRejected,
    EmailUnavailable,
    NoAccountOwners,
    check_address,
    check_content,
    mask_address,
    verification_email,
)
from services.messaging.domain.errors import InvalidAccountId, MessageStatusCode
from services.messaging.domain.privacy import mask_number
from services.messaging.domain.recipients import parse_recipient
from services.messaging.domain.records import Caller, OutboundInput, SendItem
from services.messaging.service.messaging import MessagingService
from services.messaging.service.ports import SERVICE, AccountContacts, DestinationStore, Mailer, Owners, Record
from svckit.audit import new_event
from svckit.errors import InvalidArgument

SMS = 1  # sendsafe.messaging.v1.NotificationChannel.NOTIFICATION_CHANNEL_SMS
SOURCE = "sendsafe-alerts"
VERIFY_SOURCE = "sendsafe-verify"


def _e164(to: str) -> str:
    try:
        return parse_recipient(to, None).e164
    except (InvalidArgument, ValueError):
        raise DestinationInvalid("the destination must be a phone number in E.164 form, e.g. +61411111111") from None


def _address(to: str) -> str:
    try:
        return check_address(to)
    except EmailAddressInvalid:
        raise DestinationInvalid("the destination must be an email address, e.g. ops@example.com") from None


async def send_code(messaging: MessagingService, caller: Caller, e164: str, code: str) -> SendItem:
    """Send a verification code to `e164` as a send of `caller`'s (their key's limits, their price, their
    history) from the shared number, marked DESTINATION_VERIFICATION so history never shows its body: whoever
    can read the account's history could otherwise verify a number they do not hold. Notification destinations
    and own sender numbers (service/senders.py) verify through this one send."""
    sender = Caller(caller.account_id, caller.user_id, caller.api_username, test_mode=caller.test_mode,
                    api_key_id=caller.api_key_id, limits=caller.limits, cause=DESTINATION_VERIFICATION)
    result = await messaging.send_sms(sender, [OutboundInput(body=verification_text(code), to=e164,
                                                             source=VERIFY_SOURCE)])
    return result.items[0]


class Notifications:
    def __init__(self, messaging: MessagingService, destinations: DestinationStore, record: Record | None = None,
                 clock: Callable[[], float] = time.time, owners: Owners | None = None, mailer: Mailer | None = None,
                 contacts: AccountContacts | None = None) -> None:
        self._messaging = messaging
        self._destinations = destinations
        self._owners = owners
        self._mailer = mailer
        self._contacts = contacts
        self._record = record
        self._clock = clock

    async def _audit(self, action: str, caller: Caller, destination_id: str) -> None:
        """Evidence of a change to where alerts may go (stored before the change: these RPCs are privileged,
        so the audit client waits, and an audit outage refuses the change). Never the number itself."""
        if self._record is not None:
            await self._record(new_event(SERVICE, action, resource_type="notification_destination",
                                         resource_id=destination_id, account_id=caller.account_id))

    async def _hash(self, account_id: int, e164: str) -> bytes:
        return (await self._messaging.keys.indexer(account_id))(e164)

    async def _check_owner(self, account_id: int, owner: Caller | None) -> Caller:
        """`owner`, if it may still send as itself now (see the module's doc), else AlertOwnerNotAllowed."""
        if owner is None or owner.user_id <= 0:
            why = "no_owner"
        elif self._owners is None:
            raise IdentityNotConfigured("messaging cannot check alert owners: IDENTITY_ADDR is not set")
        else:
            user = await self._owners.user(owner.user_id)
            scopes = (await self._owners.key_scopes(account_id, owner.user_id, owner.api_key_id)
                      if owner.api_key_id else SESSION_SCOPES)
            why = owner_refusal(account_id, user, scopes)
        if not why:
            assert owner is not None
            return owner
        if self._record is not None:
            event = new_event(SERVICE, "messaging.notification.refused", outcome=event_pb2.OUTCOME_FAILURE,
                              resource_type="user", resource_id=str(owner.user_id if owner else 0),
                              error_reason=AlertOwnerNotAllowed.reason, account_id=account_id,
                              details={"check": why, "api_key_id": owner.api_key_id if owner else ""})
            event.cause = ALERT_DELIVERY  # evidence of an alert delivery: no alert rule matches it
            await self._record(event)
        raise AlertOwnerNotAllowed(
            "the alert rule's owner may no longer send SMS (user disabled or removed, sms.send withdrawn, or the"
            " API key the rule was set with revoked or expired): set the rule again as a user who may")

    async def send(self, account_id: int, channel: int, to: str, body: str, owner: Caller | None = None, *,
                   subject: str = "", notification_id: str = "", account_owners: bool = False) -> str:
        """Send one notification as `owner` (the rule's owner, who must still be allowed to send); returns the
        message id (an email's Message-ID). Only to a destination the account verified, or (EMAIL with
        `account_owners`) to the account's owners."""
        if account_id <= 0:
            raise InvalidAccountId("account_id must be a positive account id")
        if channel == EMAIL:
            return await self._send_email(account_id, to, subject, body, owner, notification_id, account_owners)
        if channel != SMS or account_owners:
            raise ChannelNotAvailable("notifications are sent by SMS or EMAIL; account_owners only by EMAIL")
        try:
            e164 = _e164(to)
        except DestinationInvalid:
            raise NotificationRejected("the notification was not accepted", status="BAD_RECIPIENT") from None
        if not await self._destinations.is_verified(account_id, SMS, await self._hash(account_id, e164)):
            raise DestinationNotVerified("the account has not verified this destination")
        caller = await self._check_owner(account_id, owner)
        caller = Caller(account_id, caller.user_id, caller.api_username, api_key_id=caller.api_key_id,
                        limits=caller.limits, cause=ALERT_DELIVERY)
        result = await self._messaging.send_sms(caller, [OutboundInput(body=body, to=e164, source=SOURCE)])
        item = result.items[0]
        if item.status is not MessageStatusCode.SUCCESS:
            raise NotificationRejected("the notification was not accepted", status=item.status.value)
        return item.message_id

    def _mailer_or_refuse(self) -> Mailer:
        if self._mailer is None:
            raise ChannelNotAvailable("email is not configured on this platform (MESSAGING_SMTP_HOST)")
        return self._mailer

    async def _send_email(self, account_id: int, to: str, subject: str, body: str, owner: Caller | None,
                          notification_id: str, account_owners: bool) -> str:
        mailer = self._mailer_or_refuse()
        subject, body = check_content(subject, body)
        if account_owners:
            if self._contacts is None:
                raise IdentityNotConfigured("messaging cannot find account owners: IDENTITY_ADDR is not set")
            recipients = []
            for raw in await self._contacts.owner_emails(account_id):
                try:
                    recipients.append(check_address(raw))
                except EmailAddressInvalid:
                    continue  # identity validated it once; an address SMTP could not take is skipped
            if not recipients:
                raise NoAccountOwners("the account has no owner with an email address")
            kind, cause = "account_owners", SECURITY_NOTIFICATION
        else:
            try:
                address = check_address(to)
            except EmailAddressInvalid:
                raise NotificationRejected("the notification was not accepted", status="BAD_RECIPIENT") from None
            if not await self._destinations.is_verified(account_id, EMAIL, await self._hash(account_id, address)):
                raise DestinationNotVerified("the account has not verified this destination")
            await self._check_owner(account_id, owner)
            recipients, kind, cause = [address], "alert", ALERT_DELIVERY
        sent = [await self._mail(mailer, account_id, r, subject, body, notification_id, kind, cause)
                for r in sorted(set(recipients))]
        return sent[0]

    async def _mail(self, mailer: Mailer, account_id: int, to: str, subject: str, body: str, notification_id: str,
                    kind: str, cause: str) -> str:
        """Send one email and record it (sent or failed), naming the address masked."""
        details = {"kind": kind, "to": mask_address(to), "notification_id": notification_id}
        try:
            message_id = await mailer.send(to, subject, body, account_id=account_id, notification_id=notification_id)
        except (EmailUnavailable, EmailRejected) as err:
            await self._email_event(account_id, cause, details, err.reason)
            raise
        await self._email_event(account_id, cause, {**details, "message_id": message_id}, "")
        return message_id

    async def _email_event(self, account_id: int, cause: str, details: dict[str, str], error: str) -> None:
        if self._record is None:
            return
        event = new_event(SERVICE, "messaging.notification.email", resource_type="notification",
                          resource_id=details["notification_id"], account_id=account_id, details=details,
                          outcome=event_pb2.OUTCOME_FAILURE if error else event_pb2.OUTCOME_SUCCESS,
                          error_reason=error)
        event.cause = cause  # what a notification caused: no alert rule matches it
        await self._record(event)

    async def send_closure_receipt(
        self, account_id: int, to: str, receipt: bytes, signature: bytes, signing_key_id: str
    ) -> str:
        """Email a closed account's signed destruction receipt to the address its owner had at closure (fixed
        template; no verification: identity kept the owner's own address for this one email)."""
        if account_id <= 0:
            raise InvalidAccountId("account_id must be a positive account id")
        mailer = self._mailer_or_refuse()
        address = _address(to)
        subject, body = closure_receipt_email(account_id, receipt, signature, signing_key_id)
        return await self._mail(mailer, account_id, address, subject, body, f"closure-{account_id}",
                                "closure_receipt", CLOSURE_RECEIPT)

    async def check(self, account_id: int, channel: int, to: str) -> bool:
        if account_id <= 0:
            raise InvalidAccountId("account_id must be a positive account id")
        try:
            if channel == SMS:
                value = _e164(to)
            elif channel == EMAIL:
                value = _address(to)
            else:
                return False
        except DestinationInvalid:
            return False
        return await self._destinations.is_verified(account_id, channel, await self._hash(account_id, value))

    # -- verification (external) -----------------------------------------------------------------------

    async def start_verification(self, caller: Caller, channel: int, to: str) -> tuple[Destination, int]:
        """Send a code to the destination as `caller` (a send of theirs: their limits, their price);
        returns the destination and when the code expires (unix seconds)."""
        if channel == EMAIL:
            mailer: Mailer | None = self._mailer_or_refuse()
            value = _address(to)
            masked = mask_address(value)
        elif channel == SMS:
            mailer = None
            value = _e164(to)
            masked = mask_number(value)
        else:
            raise ChannelNotAvailable("destinations are phone numbers (SMS) or email addresses (EMAIL)")
        account = caller.account_id
        key = await self._messaging.keys.get(account)
        code = new_destination_code()
        dest = await self._destinations.start(
            account, channel, await self._hash(account, value), masked, caller.user_id,
            lambda dest_id: destination_code_hash(key, dest_id, code), DESTINATION_CODE_TTL_SECONDS,
            DESTINATION_CODES_PER_HOUR)
        if dest is None:
            raise DestinationCodesExceeded(
                f"an account may send {DESTINATION_CODES_PER_HOUR} verification codes an hour; try again later")
        await self._audit("messaging.notification_destination.code_sent", caller, dest.destination_id)
        expires = int(self._clock()) + DESTINATION_CODE_TTL_SECONDS
        if mailer is not None:
            subject, text = verification_email(code)
            try:
                await self._mail(mailer, account, value, subject, text,
                                 f"verify-{dest.destination_id}-{secrets.token_hex(4)}", "verification",
                                 DESTINATION_VERIFICATION)
            except (EmailUnavailable, EmailRejected):
                await self._destinations.forget_code(dest.destination_id)
                raise
            return dest, expires
        item = await send_code(self._messaging, caller, value, code)
        if item.status is not MessageStatusCode.SUCCESS:
            await self._destinations.forget_code(dest.destination_id)
            raise NotificationRejected("the verification code could not be sent", status=item.status.value)
        return dest, expires

    async def verify(self, caller: Caller, destination_id: str, code: str) -> Destination:
        code = check_destination_code(code)
        got = await self._destinations.attempt(caller.account_id, destination_id, DESTINATION_CODE_ATTEMPTS)
        if got is None:
            raise DestinationNotFound("no such destination in this account")
        dest, code_hash, expired, allowed = got
        if code_hash is None and dest.verified:
            return dest
        if not allowed:
            raise DestinationAttemptsExceeded("too many wrong codes; start the verification again")
        if code_hash is None or expired:
            raise DestinationCodeExpired("the code expired; start the verification again")
        key = await self._messaging.keys.get(caller.account_id)
        if not hmac.compare_digest(code_hash, destination_code_hash(key, dest.destination_id, code)):
            raise DestinationCodeInvalid("the code does not match the one sent")
        await self._audit("messaging.notification_destination.verified", caller, dest.destination_id)
        return await self._destinations.verified(dest.destination_id)

    async def list(self, caller: Caller) -> list[Destination]:
        return await self._destinations.destinations(caller.account_id)

