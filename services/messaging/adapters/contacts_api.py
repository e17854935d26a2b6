"""gRPC edge of contact lists (ContactService): protobuf <-> domain, nothing else. It lives here rather than in
api.py, which is near the 500-line limit; app.py registers it like the others."""

from __future__ import annotations

import grpc
from google.protobuf import timestamp_pb2

from sendsafe.messaging.v1 import contact_service_pb2 as pb
from sendsafe.messaging.v1 import contact_service_pb2_grpc
from services.messaging.api import caller_from_context
from services.messaging.domain.contacts import FIELDS, Contact, ContactImport, ContactList
from services.messaging.service.contacts import ContactLists, Page
from svckit.paging import clicksend_paging

_STATES = {"pending": pb.CONTACT_IMPORT_STATE_PENDING, "running": pb.CONTACT_IMPORT_STATE_RUNNING,
           "done": pb.CONTACT_IMPORT_STATE_DONE, "failed": pb.CONTACT_IMPORT_STATE_FAILED}


def list_proto(x: ContactList) -> pb.ContactList:
    return pb.ContactList(list_id=x.list_id, list_name=x.name, list_email_id="", contacts_count=x.contacts_count,
                          import_in_progress=int(x.import_in_progress), optout_in_progress=0)


def contact_proto(c: Contact) -> pb.Contact:
    return pb.Contact(contact_id=c.contact_id, list_id=c.list_id, date_added=c.create_time,
                      date_updated=c.update_time, **{k: v for k, v in c.fields.items() if k in FIELDS})


def _ts(unix: int) -> timestamp_pb2.Timestamp | None:
    return timestamp_pb2.Timestamp(seconds=unix) if unix else None


def import_proto(i: ContactImport) -> pb.ContactImport:
    return pb.ContactImport(
        import_id=i.import_id, list_id=i.list_id, state=_STATES.get(i.state, pb.CONTACT_IMPORT_STATE_UNSPECIFIED),
        rows_read=i.rows_read, imported=i.imported, duplicates=i.duplicates, invalid=i.invalid,
        problems=[pb.ContactImportProblem(line=p.line, reason=p.reason) for p in i.problems], failure=i.failure,
        create_time=_ts(i.create_time), finish_time=_ts(i.finish_time))


def _fields(request: pb.CreateContactRequest | pb.UpdateContactRequest) -> dict[str, str]:
    """The contact fields a request sets (ClickSend's date_added is accepted and ignored: the store dates it)."""
    return {name: getattr(request, name) for name in FIELDS if getattr(request, name)}


def _paging(page: Page) -> dict[str, object]:
    return clicksend_paging(page.window, page.total, len(page.items))


class ContactServicer(contact_service_pb2_grpc.ContactServiceServicer):
    def __init__(self, lists: ContactLists) -> None:
        self.lists = lists

    async def ListContactLists(self, request: pb.ListContactListsRequest, context: grpc.aio.ServicerContext
                               ) -> pb.ListContactListsResponse:
        page = await self.lists.lists(caller_from_context(), request.page, request.limit)
        return pb.ListContactListsResponse(data=[list_proto(x) for x in page.items], **_paging(page))  # type: ignore[arg-type]

    async def CreateContactList(self, request: pb.CreateContactListRequest, context: grpc.aio.ServicerContext
                                ) -> pb.CreateContactListResponse:
        return pb.CreateContactListResponse(
            list=list_proto(await self.lists.create_list(caller_from_context(), request.list_name)))

    async def GetContactList(self, request: pb.GetContactListRequest, context: grpc.aio.ServicerContext
                             ) -> pb.GetContactListResponse:
        return pb.GetContactListResponse(list=list_proto(await self.lists.get_list(caller_from_context(),
                                                                                   request.list_id)))

    async def UpdateContactList(self, request: pb.UpdateContactListRequest, context: grpc.aio.ServicerContext
                                ) -> pb.UpdateContactListResponse:
        renamed = await self.lists.rename_list(caller_from_context(), request.list_id, request.list_name)
        return pb.UpdateContactListResponse(list=list_proto(renamed))

    async def DeleteContactList(self, request: pb.DeleteContactListRequest, context: grpc.aio.ServicerContext
                                ) -> pb.DeleteContactListResponse:
        await self.lists.delete_list(caller_from_context(), request.list_id)
        return pb.DeleteContactListResponse()

    async def ListContacts(self, request: pb.ListContactsRequest, context: grpc.aio.ServicerContext
                           ) -> pb.ListContactsResponse:
        page = await self.lists.contacts(caller_from_context(), request.list_id, request.page, request.limit)
        return pb.ListContactsResponse(data=[contact_proto(c) for c in page.items], **_paging(page))  # type: ignore[arg-type]

    async def CreateContact(self, request: pb.CreateContactRequest, context: grpc.aio.ServicerContext
                            ) -> pb.CreateContactResponse:
        c = await self.lists.add_contact(caller_from_context(), request.list_id, _fields(request))
        return pb.CreateContactResponse(contact=contact_proto(c))

    async def GetContact(self, request: pb.GetContactRequest, context: grpc.aio.ServicerContext
                         ) -> pb.GetContactResponse:
        c = await self.lists.get_contact(caller_from_context(), request.list_id, request.contact_id)
        return pb.GetContactResponse(contact=contact_proto(c))

    async def UpdateContact(self, request: pb.UpdateContactRequest, context: grpc.aio.ServicerContext
                            ) -> pb.UpdateContactResponse:
        c = await self.lists.update_contact(caller_from_context(), request.list_id, request.contact_id,
                                            _fields(request))
        return pb.UpdateContactResponse(contact=contact_proto(c))

    async def DeleteContact(self, request: pb.DeleteContactRequest, context: grpc.aio.ServicerContext
                            ) -> pb.DeleteContactResponse:
        await self.lists.delete_contact(caller_from_context(), request.list_id, request.contact_id)
        return pb.DeleteContactResponse()

    async def ImportContacts(self, request: pb.ImportContactsRequest, context: grpc.aio.ServicerContext
                             ) -> pb.ImportContactsResponse:
        started = await self.lists.start_import(caller_from_context(), request.list_id, request.file.data,
                                                request.field_order, request.has_header)
        return pb.ImportContactsResponse(contact_import=import_proto(started))

    async def GetContactImport(self, request: pb.GetContactImportRequest, context: grpc.aio.ServicerContext
                               ) -> pb.GetContactImportResponse:
        found = await self.lists.get_import(caller_from_context(), request.list_id, request.import_id)
        return pb.GetContactImportResponse(contact_import=import_proto(found))
