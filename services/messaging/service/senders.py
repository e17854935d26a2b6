"""Sender identities (issue 21): dedicated numbers bought from the operator's inventory, numbers the customer owns
verified with a code, and the check a send makes of its `from` (`SenderIndex`).

A number is one account's sender at a time: dedicated numbers by their inventory row, every number by the unique
platform hash of active identities (`domain.senders.sender_hash`, keyed with the platform sender index key).
An own number's code goes out as a send of the caller's through messaging's normal send path, as notification
destinations' codes do (`notifications.send_code`: charged, limited, in their history without the code).

Every change is an audit event, stored before it commits (the RPCs are privileged: fail closed):
messaging.sender.number_bought / number_released / code_sent / verified / own_number_deleted /
inventory_loaded, and messaging.sender.activated when a number becomes usable (the owners get a notice).
No event carries a verified number (they carry the identity id and the masked number).
"""

from __future__ import annotations

import hmac
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from services.messaging.domain.destinations import (
    DESTINATION_CODE_ATTEMPTS,
    DESTINATION_CODE_TTL_SECONDS,
    NotificationRejected,
    check_destination_code,
    destination_code_hash,
    new_destination_code,
)
from services.messaging.domain.errors import InvalidRecipient, MessageStatusCode
from services.messaging.domain.privacy import mask_number
from services.messaging.domain.recipients import parse_recipient
from services.messaging.domain.records import Caller
from services.messaging.domain.senders import (
    NUMBER_CODES_PER_HOUR,
    SENDER_ACTIVATED,
    SENDER_CODES_PER_HOUR,
    SENDER_NUMBER_RECORD,
    InvalidSenderNumber,
    InventoryNumber,
    NumberNotAvailable,
    SenderAlreadyActive,
    SenderAttemptsExceeded,
    SenderCodeExpired,
    SenderCodeInvalid,
    SenderCodesExceeded,
    SenderIdentity,
    SenderKind,
    SenderNotFound,
    SenderNumberTaken,
    SenderState,
    Verification,
    check_country,
    check_e164,
    check_id,
    check_label,
)
from services.messaging.service.messaging import MessagingService
from services.messaging.service.notifications import send_code
from services.messaging.service.ports import SERVICE, Cipher, Record, SenderStore
from services.messaging.service.sender_index import SenderIndex
from svckit.audit import new_event
from svckit.envelope import aad_for
from svckit.errors import InvalidArgument


@dataclass(frozen=True)
class NumberPage:
    total: int
    page: int
    limit: int
    items: list[InventoryNumber]


def _page(page: int, limit: int) -> tuple[int, int]:
    return max(page, 1), (limit or 15)


class Senders:
    """The sender identity use cases (SenderService)."""

    def __init__(self, store: SenderStore, index: SenderIndex, cipher: Cipher, messaging: MessagingService,
                 record: Record) -> None:
        self._store = store
        self._index = index
        self._cipher = cipher
        self._messaging = messaging  # sends the verification codes
        self._record = record

    async def _event(self, action: str, caller: Caller | None, identity: SenderIdentity | None = None,
                     details: dict[str, str] | None = None) -> None:
        extra = dict(details or {})
        if identity is not None:
            extra.update(sender_type=identity.kind.value, number=mask_number(identity.value)
                         if identity.kind is SenderKind.DEDICATED_NUMBER else identity.value)
        await self._record(new_event(
            SERVICE, action, resource_type="sender_identity", resource_id=identity.id if identity else "",
            details=extra, account_id=caller.account_id if caller else None))

    async def _activated(self, caller: Caller, identity: SenderIdentity, action: str) -> None:
        await self._event(action, caller, identity)
        await self._event(SENDER_ACTIVATED, caller, identity)

    # -- operator ------------------------------------------------------------------------------------------

    async def load_inventory(self, numbers: Sequence[InventoryNumber]) -> tuple[int, int]:
        if not numbers:
            raise InvalidArgument("no numbers to load")
        if len(numbers) > 10_000:
            raise InvalidArgument("at most 10000 numbers per load")

        async def audit(added: int, updated: int) -> None:
            await self._event("messaging.sender.inventory_loaded", None,
                              details={"added": str(added), "updated": str(updated)})

        return await self._store.load_inventory(numbers, audit)

    # -- dedicated numbers ---------------------------------------------------------------------------------

    async def available(self, caller: Caller, country: str, page: int, limit: int) -> NumberPage:
        p, size = _page(page, limit)
        total, items = await self._store.available_numbers(check_country(country), (p - 1) * size, size)
        return NumberPage(total, p, size, items)

    async def buy(self, caller: Caller, number: str, service: str = "") -> InventoryNumber:
        e164 = check_e164(number, "dedicated number")
        offer = await self._store.inventory_number(e164)
        if offer is None or offer.holder_account_id:
            raise NumberNotAvailable("this number is not for sale; search the available numbers first")
        if (service.strip().lower() or "sms") not in offer.capabilities:
            raise InvalidArgument(f"this number is for {', '.join(offer.capabilities)}, not {service.strip()}")

        async def audit(identity: SenderIdentity) -> None:
            await self._activated(caller, identity, "messaging.sender.number_bought")

        got = await self._store.buy_number(str(uuid.uuid4()), caller.account_id, caller.user_id, e164,
                                           self._index.hash(e164), audit)
        if got is None:
            raise NumberNotAvailable("this number is not for sale; search the available numbers first")
        return offer

    async def dedicated(self, caller: Caller, page: int, limit: int) -> tuple[NumberPage, list[SenderIdentity]]:
        rows = await self._store.identities(caller.account_id, SenderKind.DEDICATED_NUMBER, [SenderState.ACTIVE])
        p, size = _page(page, limit)
        chosen = rows[(p - 1) * size:p * size]
        offers = [await self._store.inventory_number(r.value) for r in chosen]
        return NumberPage(len(rows), p, size, [o for o in offers if o is not None]), chosen

    async def release(self, caller: Caller, number: str) -> InventoryNumber:
        e164 = check_e164(number, "dedicated number")
        held = await self._store.active_number(caller.account_id, self._index.hash(e164))
        if held is None or held.kind is not SenderKind.DEDICATED_NUMBER:
            raise SenderNotFound("the account holds no such dedicated number")

        async def audit(identity: SenderIdentity) -> None:
            await self._event("messaging.sender.number_released", caller, identity)

        if await self._store.release(caller.account_id, held.id, audit) is None:
            raise SenderNotFound("the account holds no such dedicated number")
        offer = await self._store.inventory_number(e164)
        assert offer is not None
        return offer

    # -- own numbers ---------------------------------------------------------------------------------------

    async def start_verification(self, caller: Caller, phone_number: str, country: str, label: str
                                 ) -> tuple[SenderIdentity, Verification]:
        try:
            recipient = parse_recipient(phone_number, country.strip().upper() or None)
        except (InvalidRecipient, InvalidArgument, ValueError):
            raise InvalidSenderNumber("phone_number must be a valid phone number, e.g. +61411111111") from None
        e164, label = recipient.e164, check_label(label)
        digest = self._index.hash(e164)
        acct = caller.account_id
        ident_id = str(uuid.uuid4())
        sealed = await self._cipher.encrypt(acct, aad_for(acct, SENDER_NUMBER_RECORD, ident_id), e164.encode())
        key = await self._messaging.keys.get(acct)
        code = new_destination_code()
        got = await self._store.start_verification(
            acct, caller.user_id, digest, (ident_id, sealed, mask_number(e164), recipient.country, label),
            lambda vid: destination_code_hash(key, vid, code), DESTINATION_CODE_TTL_SECONDS,
            SENDER_CODES_PER_HOUR, NUMBER_CODES_PER_HOUR)
        if got == "held":
            raise SenderAlreadyActive("the account already sends from this number")
        if got == "taken":
            raise SenderNumberTaken("another account holds this number as a sender; it must release it first")
        if got in ("account", "number"):
            raise SenderCodesExceeded(
                f"at most {SENDER_CODES_PER_HOUR} codes an hour per account and {NUMBER_CODES_PER_HOUR} per number;"
                " try again later")
        assert not isinstance(got, str)
        identity, verification = got
        await self._event("messaging.sender.code_sent", caller, identity, {"verification_id": verification.id})
        item = await send_code(self._messaging, caller, e164, code)
        if item.status is not MessageStatusCode.SUCCESS:
            await self._store.forget_code(verification.id)
            raise NotificationRejected("the verification code could not be sent",
                                                status=item.status.value)
        return identity, Verification(verification.id, identity.id, verification.expire_time,
                                      DESTINATION_CODE_ATTEMPTS, verification.create_time)

    async def verify(self, caller: Caller, verification_id: str, code: str) -> tuple[SenderIdentity, Verification]:
        vid = check_id(verification_id, "verification")
        code = check_destination_code_or_refuse(code)
        got = await self._store.attempt(caller.account_id, vid, DESTINATION_CODE_ATTEMPTS)
        if got is None:
            raise SenderNotFound("no such verification in this account")
        verification, code_hash, expired, allowed_now = got
        if not allowed_now:
            raise SenderAttemptsExceeded("too many wrong codes; start the verification again")
        if code_hash is None or expired:
            raise SenderCodeExpired("the code expired or was used; start the verification again")
        key = await self._messaging.keys.get(caller.account_id)
        if not hmac.compare_digest(code_hash, destination_code_hash(key, verification.id, code)):
            raise SenderCodeInvalid("the code does not match the one sent")

        async def audit(identity: SenderIdentity) -> None:
            await self._activated(caller, identity, "messaging.sender.verified")

        identity = await self._store.activate_verified(caller.account_id, vid, audit)
        if identity is None:
            raise SenderNumberTaken("another account verified this number first; it must release it first")
        if identity.state is not SenderState.ACTIVE:
            raise SenderNotFound("this number was deleted; start the verification again")
        return identity, Verification(verification.id, identity.id, verification.expire_time,
                                      verification.attempts_left, verification.create_time, verified=True)

    async def own_numbers(self, caller: Caller) -> list[SenderIdentity]:
        return await self._store.identities(caller.account_id, SenderKind.VERIFIED_NUMBER,
                                            [SenderState.PENDING, SenderState.ACTIVE])

    async def own_number(self, caller: Caller, own_number_id: str) -> SenderIdentity:
        got = await self._store.identity(caller.account_id, check_id(own_number_id, "own number"))
        if got is None or got.kind is not SenderKind.VERIFIED_NUMBER or got.state is SenderState.RELEASED:
            raise SenderNotFound("no such own number in this account")
        return got

    async def delete_own_number(self, caller: Caller, own_number_id: str) -> SenderIdentity:
        current = await self.own_number(caller, own_number_id)

        async def audit(identity: SenderIdentity) -> None:
            await self._event("messaging.sender.own_number_deleted", caller, identity)

        got = await self._store.release(caller.account_id, current.id, audit)
        if got is None:
            raise SenderNotFound("no such own number in this account")
        return got


def check_destination_code_or_refuse(code: str) -> str:
    """The destinations' code rule (6 digits), with the sender's reason."""
    try:
        return check_destination_code(code)
    except InvalidArgument:
        raise SenderCodeInvalid("the code is the 6 digits of the verification message") from None


def last_page(total: int, limit: int) -> int:
    return max(1, math.ceil(total / limit)) if limit else 1
