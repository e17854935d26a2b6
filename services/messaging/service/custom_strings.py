"""A message's custom string is customer free text: sealed under the account's keys at send time (associated data
{account, CUSTOM_STRING_RECORD, message id}) and opened here wherever it is shown (history, receipts, replies
and their webhooks). Rows from before migration 0008 still carry it in clear and are shown as they are."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from services.messaging.domain.privacy import CUSTOM_STRING_RECORD
from services.messaging.domain.receipts import InboundRecord, ReceiptRecord
from services.messaging.domain.records import StoredMessage
from services.messaging.service.ports import Cipher
from svckit.envelope import aad_for

R = TypeVar("R", StoredMessage, ReceiptRecord, InboundRecord)


def custom_string_aad(account_id: int, message_id: str) -> bytes:
    return aad_for(account_id, CUSTOM_STRING_RECORD, message_id)


async def with_custom_string(cipher: Cipher, record: R) -> R:
    """`record` with its custom string opened (the record itself when it has none sealed)."""
    if record.custom_ct is None:
        return record
    if isinstance(record, StoredMessage):
        message_id = record.id
    elif isinstance(record, ReceiptRecord):
        message_id = record.message_id
    else:
        message_id = record.original_message_id
    acct = record.account_id
    text = (await cipher.decrypt(acct, custom_string_aad(acct, message_id), record.custom_ct)).decode()
    return dataclasses.replace(record, custom_string=text)
