"""gRPC edge of sender identities (SenderService): protobuf <-> domain, nothing else. Beside api.py (near the
500-line limit), as alpha_tags_api.py is; app.py registers it."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import urlencode

import grpc

from sendsafe.messaging.v1 import sender_service_pb2 as pb
from sendsafe.messaging.v1 import sender_service_pb2_grpc
from services.messaging.api import caller_from_context
from services.messaging.domain.senders import (
    InventoryNumber,
    SenderIdentity,
    SenderState,
    Verification,
    inventory_number,
)
from services.messaging.service.senders import NumberPage, Senders, last_page

_COUNTRY_NAMES = {"AU": "Australia", "NZ": "New Zealand", "GB": "United Kingdom", "US": "United States",
                  "CA": "Canada", "IE": "Ireland", "SG": "Singapore"}
_READY = pb.NumberStatus(value=0, label="REGISTRATION_NOT_REQUIRED", description="Your number is ready to go.",
                         name="Ready to use")


def _iso(unix: float | None) -> str:
    if unix is None:
        return ""
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _money(value: Decimal) -> str:
    return f"{value:.4f}"


def _available(n: InventoryNumber) -> pb.AvailableNumber:
    return pb.AvailableNumber(country=n.country, country_name=_COUNTRY_NAMES.get(n.country, n.country),
                              dedicated_number=n.number, price_setup=_money(n.price_setup),
                              price_monthly=_money(n.price_monthly),
                              price_total=_money(n.price_setup + n.price_monthly), address_requirement="none")


def _dedicated(n: InventoryNumber, identity_id: str = "") -> pb.DedicatedNumber:
    return pb.DedicatedNumber(dedicated_number=n.number, country=n.country, price=_money(n.price_monthly),
                              country_name=_COUNTRY_NAMES.get(n.country, n.country), type=",".join(n.capabilities),
                              number_type="longcode", number_guid=identity_id.upper(), status=_READY)


def _paging(page: NumberPage, path: str) -> dict[str, object]:
    last = last_page(page.total, page.limit)
    first = (page.page - 1) * page.limit
    out: dict[str, object] = dict(total=page.total, per_page=page.limit, current_page=page.page, last_page=last)
    if page.page < last:
        out["next_page_url"] = f"{path}?{urlencode({'page': page.page + 1, 'limit': page.limit})}"
    if page.page > 1:
        out["prev_page_url"] = f"{path}?{urlencode({'page': page.page - 1, 'limit': page.limit})}"
    if page.items:
        out.update(first_index=first + 1, last_index=first + len(page.items))
    return out


def own_number(i: SenderIdentity) -> pb.OwnNumber:
    return pb.OwnNumber(
        id=i.id, phone_number=i.value, country=i.country, label=i.label,
        status="APPROVED" if i.state is SenderState.ACTIVE else "PENDING", verified_timestamp=_iso(i.activate_time),
        created_timestamp=_iso(i.create_time),
        updated_timestamp=_iso(i.release_time or i.activate_time or i.create_time), is_nearing_expiration=False)


def verification(v: Verification, updated: float | None = None) -> pb.OwnNumberVerification:
    return pb.OwnNumberVerification(
        id=v.id, own_number_id=v.identity_id, status="APPROVED" if v.verified else "PENDING",
        expires_timestamp=_iso(v.expire_time), remaining_attempts=v.attempts_left,
        created_timestamp=_iso(v.create_time), updated_timestamp=_iso(updated or v.create_time))


class SenderServicer(sender_service_pb2_grpc.SenderServiceServicer):
    def __init__(self, senders: Senders) -> None:
        self.senders = senders

    async def SearchNumbers(self, request: pb.SearchNumbersRequest, context: grpc.aio.ServicerContext
                            ) -> pb.SearchNumbersResponse:
        page = await self.senders.available(caller_from_context(), request.country, request.page, request.limit)
        return pb.SearchNumbersResponse(data=[_available(n) for n in page.items],
                                        **_paging(page, f"/v3/numbers/search/{request.country}"))  # type: ignore[arg-type]

    async def BuyNumber(self, request: pb.BuyNumberRequest, context: grpc.aio.ServicerContext) -> pb.BuyNumberResponse:
        n = await self.senders.buy(caller_from_context(), request.dedicated_number, request.type)
        return pb.BuyNumberResponse(dedicated_number=n.number, country=n.country,
                                    price_total=_money(n.price_setup + n.price_monthly),
                                    price_setup=_money(n.price_setup), price_monthly=_money(n.price_monthly))

    async def ListNumbers(self, request: pb.ListNumbersRequest, context: grpc.aio.ServicerContext
                          ) -> pb.ListNumbersResponse:
        page, identities = await self.senders.dedicated(caller_from_context(), request.page, request.limit)
        ids = {i.value: i.id for i in identities}
        return pb.ListNumbersResponse(data=[_dedicated(n, ids.get(n.number, "")) for n in page.items],
                                      **_paging(page, "/v3/numbers"))  # type: ignore[arg-type]

    async def ReleaseNumber(self, request: pb.ReleaseNumberRequest, context: grpc.aio.ServicerContext
                            ) -> pb.ReleaseNumberResponse:
        n = await self.senders.release(caller_from_context(), request.dedicated_number)
        return pb.ReleaseNumberResponse(number=_dedicated(n))

    async def RequestOwnNumberVerification(self, request: pb.RequestOwnNumberVerificationRequest,
                                           context: grpc.aio.ServicerContext
                                           ) -> pb.RequestOwnNumberVerificationResponse:
        _, v = await self.senders.start_verification(caller_from_context(), request.phone_number, request.country,
                                                     request.label)
        return pb.RequestOwnNumberVerificationResponse(verification=verification(v))

    async def VerifyOwnNumber(self, request: pb.VerifyOwnNumberRequest, context: grpc.aio.ServicerContext
                              ) -> pb.VerifyOwnNumberResponse:
        identity, v = await self.senders.verify(caller_from_context(), request.verification_id, request.code)
        return pb.VerifyOwnNumberResponse(verification=verification(v, identity.activate_time))

    async def ListOwnNumbers(self, request: pb.ListOwnNumbersRequest, context: grpc.aio.ServicerContext
                             ) -> pb.ListOwnNumbersResponse:
        items = await self.senders.own_numbers(caller_from_context())
        size = request.page_size or 1000
        pagination = pb.OwnNumberPagination(self_url=f"/v3/own-numbers?page_size={size}", next="", page_size=size)
        return pb.ListOwnNumbersResponse(own_numbers=[own_number(i) for i in items[:size]],
                                         metadata=pb.OwnNumberListMetadata(pagination=pagination))

    async def GetOwnNumber(self, request: pb.GetOwnNumberRequest, context: grpc.aio.ServicerContext
                           ) -> pb.GetOwnNumberResponse:
        return pb.GetOwnNumberResponse(
            own_number=own_number(await self.senders.own_number(caller_from_context(), request.own_number_id)))

    async def DeleteOwnNumber(self, request: pb.DeleteOwnNumberRequest, context: grpc.aio.ServicerContext
                              ) -> pb.DeleteOwnNumberResponse:
        return pb.DeleteOwnNumberResponse(
            own_number=own_number(await self.senders.delete_own_number(caller_from_context(), request.own_number_id)))

    async def LoadNumberInventory(self, request: pb.LoadNumberInventoryRequest, context: grpc.aio.ServicerContext
                                  ) -> pb.LoadNumberInventoryResponse:
        numbers = [inventory_number(n.number, n.country, n.capabilities, n.price_setup or "0", n.price_monthly or "0",
                                    line=f"numbers[{k}]") for k, n in enumerate(request.numbers)]
        added, updated = await self.senders.load_inventory(numbers)
        return pb.LoadNumberInventoryResponse(added=added, updated=updated)
