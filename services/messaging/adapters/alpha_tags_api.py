"""gRPC edge of alpha tags (AlphaTagService): protobuf <-> domain, nothing else. It lives here rather than in
api.py, which is near the 500-line limit; app.py registers it like the others."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

import grpc
from google.protobuf import timestamp_pb2

from sendsafe.messaging.v1 import alpha_tag_service_pb2 as pb
from sendsafe.messaging.v1 import alpha_tag_service_pb2_grpc
from services.messaging.api import caller_from_context
from services.messaging.domain.alpha_tags import AlphaTag, AlphaTagState, ProtectedName
from services.messaging.service.alpha_tags import AlphaTags, ReviewItem, TagPage
from svckit.errors import InvalidArgument

LIST_PATH = "/v3/alpha-tags"


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ts(unix: float | None) -> timestamp_pb2.Timestamp | None:
    if unix is None:
        return None
    return timestamp_pb2.Timestamp(seconds=int(unix), nanos=int((unix % 1) * 1e9))


def clicksend_tag(t: AlphaTag) -> pb.AlphaTag:
    return pb.AlphaTag(
        id=t.id, account_id=str(t.account_id), workspace_id=str(t.account_id), user_id=str(t.user_id),
        alpha_tag=t.tag, status=t.status, reason=t.shown_reason, countries=list(t.countries),
        created_timestamp=_iso(t.create_time), updated_timestamp=_iso(t.update_time),
    )


def review_proto(item: ReviewItem) -> pb.AlphaTagReview:
    t = item.tag
    return pb.AlphaTagReview(
        alpha_tag_id=t.id, account_id=t.account_id, user_id=t.user_id, alpha_tag=t.tag,
        state=pb.AlphaTagState.Value(f"ALPHA_TAG_STATE_{t.state.name}"), request_reason=t.request_reason,
        countries=list(t.countries), protected_name=item.protected_name or t.protected_name,
        reviewer_staff_id=t.reviewer_staff_id, review_reason=t.review_reason, evidence=t.evidence,
        create_time=_ts(t.create_time), review_time=_ts(t.review_time),
    )


def name_proto(n: ProtectedName) -> pb.ProtectedSenderName:
    return pb.ProtectedSenderName(name=n.name, skeleton=n.skeleton, category=n.category, added_by=n.added_by,
                                  create_time=_ts(n.create_time))


def _sort(value: str) -> bool:
    """True for newest first."""
    v = (value or "asc").strip().lower()
    if v not in ("asc", "desc"):
        raise InvalidArgument("sort_direction must be asc or desc")
    return v == "desc"


def _cursor(value: str) -> int:
    if not value:
        return 0
    if not value.isdigit():
        raise InvalidArgument("offset must be the cursor a previous page's `next` link gave")
    return int(value)


def _link(page_size: int, sort: str, offset: int) -> str:
    query = {"page_size": page_size, **({"sort_direction": sort} if sort else {}), **({"offset": offset} if offset
                                                                                      else {})}
    return f"{LIST_PATH}?{urlencode(query)}"


def list_response(page: TagPage, req: pb.ListAlphaTagsRequest) -> pb.ListAlphaTagsResponse:
    size = req.page_size or 10
    pagination = pb.AlphaTagPagination(
        self_url=_link(size, req.sort_direction, _cursor(req.offset)),
        next=_link(size, req.sort_direction, page.next_cursor) if page.next_cursor else "", page_size=size)
    return pb.ListAlphaTagsResponse(alpha_tags=[clicksend_tag(t) for t in page.items],
                                    metadata=pb.AlphaTagListMetadata(pagination=pagination))


def _state(value: int) -> AlphaTagState | None:
    if value == pb.ALPHA_TAG_STATE_UNSPECIFIED:
        return None
    return AlphaTagState[pb.AlphaTagState.Name(value).removeprefix("ALPHA_TAG_STATE_")]  # type: ignore[arg-type]


class AlphaTagServicer(alpha_tag_service_pb2_grpc.AlphaTagServiceServicer):
    def __init__(self, tags: AlphaTags) -> None:
        self.tags = tags

    async def RequestAlphaTag(self, request: pb.RequestAlphaTagRequest, context: grpc.aio.ServicerContext
                              ) -> pb.RequestAlphaTagResponse:
        t = await self.tags.request(caller_from_context(), request.alpha_tag, request.reason, list(request.countries))
        return pb.RequestAlphaTagResponse(alpha_tag=clicksend_tag(t))

    async def ListAlphaTags(self, request: pb.ListAlphaTagsRequest, context: grpc.aio.ServicerContext
                            ) -> pb.ListAlphaTagsResponse:
        page = await self.tags.page(caller_from_context(), _sort(request.sort_direction), request.page_size,
                                    _cursor(request.offset))
        return list_response(page, request)

    async def GetAlphaTag(self, request: pb.GetAlphaTagRequest, context: grpc.aio.ServicerContext
                          ) -> pb.GetAlphaTagResponse:
        return pb.GetAlphaTagResponse(
            alpha_tag=clicksend_tag(await self.tags.get(caller_from_context(), request.alpha_tag_id)))

    async def DeleteAlphaTag(self, request: pb.DeleteAlphaTagRequest, context: grpc.aio.ServicerContext
                             ) -> pb.DeleteAlphaTagResponse:
        await self.tags.cancel(caller_from_context(), request.alpha_tag_id)
        return pb.DeleteAlphaTagResponse()

    async def ListAlphaTagReviews(self, request: pb.ListAlphaTagReviewsRequest, context: grpc.aio.ServicerContext
                                  ) -> pb.ListAlphaTagReviewsResponse:
        items, after = await self.tags.reviews(caller_from_context(), _state(request.state), request.after,
                                               request.limit)
        return pb.ListAlphaTagReviewsResponse(alpha_tags=[review_proto(i) for i in items], next_after=after)

    async def ApproveAlphaTag(self, request: pb.ApproveAlphaTagRequest, context: grpc.aio.ServicerContext
                              ) -> pb.ApproveAlphaTagResponse:
        item = await self.tags.approve(caller_from_context(), request.alpha_tag_id, request.reason, request.evidence)
        return pb.ApproveAlphaTagResponse(alpha_tag=review_proto(item))

    async def RejectAlphaTag(self, request: pb.RejectAlphaTagRequest, context: grpc.aio.ServicerContext
                             ) -> pb.RejectAlphaTagResponse:
        item = await self.tags.reject(caller_from_context(), request.alpha_tag_id, request.reason)
        return pb.RejectAlphaTagResponse(alpha_tag=review_proto(item))

    async def RevokeAlphaTag(self, request: pb.RevokeAlphaTagRequest, context: grpc.aio.ServicerContext
                             ) -> pb.RevokeAlphaTagResponse:
        item = await self.tags.revoke(caller_from_context(), request.alpha_tag_id, request.reason)
        return pb.RevokeAlphaTagResponse(alpha_tag=review_proto(item))

    async def ListProtectedSenderNames(self, request: pb.ListProtectedSenderNamesRequest,
                                       context: grpc.aio.ServicerContext) -> pb.ListProtectedSenderNamesResponse:
        names = await self.tags.protected_names(caller_from_context())
        return pb.ListProtectedSenderNamesResponse(names=[name_proto(n) for n in names])

    async def AddProtectedSenderName(self, request: pb.AddProtectedSenderNameRequest,
                                     context: grpc.aio.ServicerContext) -> pb.AddProtectedSenderNameResponse:
        n = await self.tags.add_protected_name(caller_from_context(), request.name, request.category, request.reason)
        return pb.AddProtectedSenderNameResponse(name=name_proto(n))

    async def RemoveProtectedSenderName(self, request: pb.RemoveProtectedSenderNameRequest,
                                        context: grpc.aio.ServicerContext) -> pb.RemoveProtectedSenderNameResponse:
        await self.tags.remove_protected_name(caller_from_context(), request.skeleton, request.reason)
        return pb.RemoveProtectedSenderNameResponse()
