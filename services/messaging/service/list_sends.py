"""A send (or price) with `list_id`: each such message becomes one message per contact with a number in the list,
before validation, so everything after it (validation, opt-outs by the keyed number hash, limits, price, credit,
the one transaction of the group commit) is the ordinary send path, whole: the expanded request is stored and
charged all or nothing, once, and each message keeps the list's id (and the contact's) in history. An opted-out
contact gets RECIPIENT_OPTED_OUT like any opted-out recipient. A list that is not the caller account's (or does
not exist) refuses the whole request: NOT_ENOUGH_PERMISSION_TO_LIST_ID, nothing stored. A de-identified user, who
reads a list's contacts with their numbers masked, gets the answer's list recipients masked too (`for_caller`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Final, Protocol

from services.messaging.domain.outbound import TooManyRecipients
from services.messaging.domain.privacy import mask_number
from services.messaging.domain.records import Caller, OutboundInput, SendResult

MAX_EXPANDED: Final = 25_000  # messages in one request once its lists are expanded (the answer lists each one)


class ListRecipients(Protocol):
    """service.contacts.ContactLists."""

    async def recipients(self, account_id: int, list_id: str) -> list[tuple[int, str]]: ...


async def expand_lists(lists: ListRecipients | None, caller: Caller, inputs: Sequence[OutboundInput]
                       ) -> Sequence[OutboundInput]:
    """`inputs` with every message that names a list_id replaced by one message per contact of that list (its
    `to` ignored, as ClickSend does); unchanged when none does."""
    if lists is None or not any(m.list_id for m in inputs):
        return inputs
    out: list[OutboundInput] = []
    cache: dict[str, list[tuple[int, str]]] = {}
    for m in inputs:
        if not m.list_id:
            out.append(m)
            continue
        if m.list_id not in cache:
            cache[m.list_id] = await lists.recipients(caller.account_id, m.list_id.strip())
        out.extend(dataclasses.replace(m, to=number, contact_id=str(cid)) for cid, number in cache[m.list_id])
        if len(out) > MAX_EXPANDED:
            raise TooManyRecipients(f"A request may reach at most {MAX_EXPANDED} recipients with its lists.",
                                    max_messages=str(MAX_EXPANDED))
    return out


def for_caller(caller: Caller, result: SendResult) -> SendResult:
    """The answer as `caller` may see it: a de-identified user's list recipients masked (numbers the user typed
    stay as typed)."""
    if not caller.deidentified or not any(i.input.list_id for i in result.items):
        return result
    return dataclasses.replace(result, items=[
        dataclasses.replace(i, to=mask_number(i.to), input=dataclasses.replace(i.input, to=mask_number(i.input.to)))
        if i.input.list_id else i for i in result.items])
