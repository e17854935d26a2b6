"""Contact lists end to end (issue 21, Must show), through the HTTPS gateway and the official SDK (ListsApi and
ContactsApi, their strict models validating every answer): create a list, add, read, change and delete a contact,
import 10,000 contacts from a CSV generated here (uploaded as the request body; a few duplicate and invalid lines
reported by line number and reason, never by content), watch the import's progress, send to `list_id`, and find
exactly one message per contact in history, minus the contact who replied STOP, whose message is reported
RECIPIENT_OPTED_OUT. Another account's list is NOT_ENOUGH_PERMISSION_TO_LIST_ID with nothing stored."""

from __future__ import annotations

import time
import uuid
from typing import Any

import clicksend
import pytest
from clicksend.exceptions import ApiException, BadRequestException, NotFoundException

from tests.e2e.api_client import Http, sdk_client, until
from tests.e2e.conftest import Customer
from tests.e2e.test_sms_api import tester  # noqa: F401  (a test-mode account: sends free, never delivered)

N = 10_000


def _number(i: int) -> str:
    return f"+6142{i:07d}"


def _csv() -> tuple[bytes, dict[int, str]]:
    """10,000 good lines (numbers _number(0..9999)) with two repeats and two bad lines among them; the expected
    problems by line number."""
    lines = ["phone_number,first_name,last_name,email"]
    lines += [f"{_number(i)},Given{i},Family{i},c{i}@example.org" for i in range(N)]
    # Line numbers count the header as line 1.
    lines.insert(11, f"{_number(3)},Again,Repeat,again@example.org")  # line 12: repeats line 5
    lines.insert(101, "12ab,Bad,Number,bad@example.org")  # line 102
    lines.insert(5001, f"{_number(7)},Twice,Repeat,twice@example.org")  # line 5002: repeats line 9
    lines.append(f"{_number(N)},Too,Many,x@example.org,extra")  # the last line: one column too many
    problems = {12: "DUPLICATE", 102: "INVALID_PHONE_NUMBER", 5002: "DUPLICATE", len(lines): "TOO_MANY_COLUMNS"}
    return ("\n".join(lines) + "\n").encode(), problems


def _import(http: Http, auth: tuple[str, str], list_id: int, body: bytes) -> dict[str, Any]:
    r = http.call("POST", f"/v1/lists/{list_id}/imports", auth=auth, body=body,
                  headers={"Content-Type": "text/csv"})
    assert r.status == 200, r.body[:300]
    started: dict[str, Any] = r.json()["contact_import"]
    return started


def test_lists_import_10000_contacts_and_send_to_the_list(tester: Customer, customer: Customer) -> None:  # noqa: F811
    auth = (tester.username, tester.api_key)
    http = Http(tester.url, str(tester.ca))
    with sdk_client(tester.url, tester.username, tester.api_key, str(tester.ca)) as client:
        lists, contacts, sms = clicksend.ListsApi(client), clicksend.ContactsApi(client), clicksend.SmsApi(client)
        made = lists.create_list(create_list_request={"list_name": "Winter customers"})
        assert isinstance(made, clicksend.CreateList) and made.response_code == "SUCCESS"
        assert made.data is not None and made.data.list_name == "Winter customers"
        list_id = made.data.list_id
        assert isinstance(list_id, int) and made.data.contacts_count == 0 and made.data.import_in_progress == 0
        renamed = lists.update_list(str(list_id), create_list_request={"list_name": "Winter 2026"})
        assert renamed.data is not None and renamed.data.list_name == "Winter 2026"

        # One contact by hand: read, changed, deleted (the SDK's own models for each answer).
        one = lists.create_new_contact(str(list_id), create_new_contact_request={
            "phone_number": "0491 570 006", "address_country": "AU", "first_name": "Pat", "email": "pat@example.org"})
        assert one.data is not None and one.data.phone_number == "+61491570006" and one.data.list_id == list_id
        cid = str(one.data.contact_id)
        got = contacts.get_specific_contact(str(list_id), cid)
        assert isinstance(got, clicksend.GetSpecificContact) and got.data is not None
        assert (got.data.first_name, got.data.email) == ("Pat", "pat@example.org")
        changed = contacts.update_contact(str(list_id), cid, create_new_contact_request={"last_name": "Lee"})
        assert changed.data is not None and (changed.data.first_name, changed.data.last_name) == ("Pat", "Lee")
        with pytest.raises(BadRequestException):  # the same number again
            lists.create_new_contact(str(list_id), create_new_contact_request={"phone_number": "+61491570006"})
        assert contacts.delete_contact(str(list_id), cid).data == []
        with pytest.raises(NotFoundException):
            contacts.get_specific_contact(str(list_id), cid)

        # 10,000 contacts from a CSV upload: the job reports progress, then every good line at once.
        body, expected = _csv()
        started_at = time.monotonic()
        started = _import(http, auth, list_id, body)
        assert started["state"] in ("CONTACT_IMPORT_STATE_PENDING", "CONTACT_IMPORT_STATE_RUNNING",
                                    "CONTACT_IMPORT_STATE_DONE")
        seen: set[str] = set()

        def progress() -> dict[str, Any]:
            r = http.call("GET", f"/v1/lists/{list_id}/imports/{started['import_id']}", auth=auth)
            assert r.status == 200, r.body[:300]
            now: dict[str, Any] = r.json()["contact_import"]
            seen.add(now["state"])
            if now["state"] != "CONTACT_IMPORT_STATE_DONE":  # ClickSend's flag shows it meanwhile
                assert lists.view_specific_list(str(list_id)).data.import_in_progress in (0, 1)
            return now

        done = until(progress, lambda x: x["state"] in ("CONTACT_IMPORT_STATE_DONE", "CONTACT_IMPORT_STATE_FAILED"),
                     "the import", deadline_s=60)
        took = time.monotonic() - started_at
        assert done["state"] == "CONTACT_IMPORT_STATE_DONE", done
        assert (int(done["rows_read"]), int(done["imported"]), int(done["duplicates"]), int(done["invalid"])) == (
            N + 4, N, 2, 2)
        assert {int(p["line"]): p["reason"] for p in done["problems"]} == expected
        assert "+6142" not in str(done) and "example.org" not in str(done)  # line numbers and reasons only
        assert took < 30, f"10,000 contacts took {took:.1f}s"
        shown = lists.view_specific_list(str(list_id)).data
        assert (shown.contacts_count, shown.import_in_progress) == (N, 0)
        page = lists.view_list_contacts(str(list_id))
        assert isinstance(page, clicksend.ViewListContacts) and page.data is not None and page.data.total == N
        assert page.data.data and page.data.data[0].phone_number == _number(0)
        every = lists.view_lists()
        assert isinstance(every, clicksend.ViewLists) and list_id in [x.list_id for x in every.data.data or []]

        # The contact with _number(42) replies STOP to an earlier message: the list send skips it.
        stopped = _number(42)
        mid = sms.send_sms(send_sms_request={"messages": [{"to": stopped, "body": "Reply STOP to opt out"}]}
                           ).data.messages[0].message_id
        r = http.call("POST", "/v3/sms/inbound", auth=auth,
                      json_body={"url": "poll", "original_message_id": mid, "body": "STOP"})
        assert r.status == 200, r.body[:300]

        # Another account cannot send to the list; nothing is stored for it.
        with (sdk_client(customer.url, customer.username, customer.api_key, str(customer.ca)) as other,
              pytest.raises(ApiException) as refused):
            clicksend.SmsApi(other).send_sms(send_sms_request={"messages": [
                {"list_id": str(list_id), "body": "not yours"}]})
        assert refused.value.status == 403 and "NOT_ENOUGH_PERMISSION_TO_LIST_ID" in str(refused.value.body)

        sent = sms.send_sms(send_sms_request={"messages": [{"list_id": str(list_id), "body": "Winter sale"}]})
        assert isinstance(sent, clicksend.SendSms) and sent.data is not None
        statuses = {m.to: m.status for m in sent.data.messages}
        assert len(statuses) == N and statuses[stopped] == "RECIPIENT_OPTED_OUT"
        assert sum(1 for s in statuses.values() if s == "SUCCESS") == N - 1
        assert (sent.data.queued_count, sent.data.blocked_count) == (N - 1, 1)
        assert {m.list_id for m in sent.data.messages} == {str(list_id)}

        # History: the earlier message plus one per contact but the opted-out one, each with the list's id.
        history = sms.view_sms_history(limit=100, order_by="date:desc").data
        assert history.total == 1 + (N - 1)
        assert all(h.list_id == str(list_id) for h in history.data if h.message_id != mid)

        assert lists.delete_list(str(list_id)).data == []
        with pytest.raises(NotFoundException):
            lists.view_specific_list(str(list_id))


def test_an_import_needs_a_list_of_the_account(tester: Customer, customer: Customer) -> None:  # noqa: F811
    http = Http(tester.url, str(tester.ca))
    with sdk_client(customer.url, customer.username, customer.api_key, str(customer.ca)) as client:
        theirs = clicksend.ListsApi(client).create_list(create_list_request={"list_name": uuid.uuid4().hex}).data
    r = http.call("POST", f"/v1/lists/{theirs.list_id}/imports", auth=(tester.username, tester.api_key),
                  body=b"phone_number\n+61420000001\n", headers={"Content-Type": "text/csv"})
    assert r.status == 404 and r.json()["error"]["reason"] == "LIST_NOT_FOUND", r.body[:300]
    r = http.call("POST", f"/v1/lists/{theirs.list_id}/imports?field_order=phone_number,shoe_size",
                  auth=(customer.username, customer.api_key), body=b"+61420000001,44\n",
                  headers={"Content-Type": "text/csv"})
    assert r.status == 400 and r.json()["error"]["reason"] == "INVALID_IMPORT", r.body[:300]
