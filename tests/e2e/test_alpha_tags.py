"""Alpha tags end to end (issue 21, Must show), through the HTTPS gateway and the official SDK: a customer requests
tags (AlphaTagsApi, its strict models validating every answer); a staff member signed in with password + TOTP finds
them waiting, cannot approve the one that imitates a bank on the protected list without evidence
(PROTECTED_SENDER_NAME, nothing changed), approves the ordinary one with a reason the customer then reads in the
tag's view and in the account's own audit feed (the platform's feed has it too; the owners get a security
notice of the new sender identity); sends from the approved tag
succeed and sends from any other sender get INVALID_SENDER_ID; once revoked, the tag stops working."""

from __future__ import annotations

import time
import uuid
from typing import Any

import clicksend
import pyotp
import pytest
from clicksend.exceptions import BadRequestException, NotFoundException

from sendsafe.identity.v1 import staff_service_pb2
from tests.e2e.api_client import Http, sdk_client, until
from tests.e2e.conftest import Customer
from tests.e2e.identity_support import bearer, reason, wait_feed
from tests.e2e.test_identity_staff import _create_staff, _staff_login
from tests.support import CertBundle
from tools.suite import Suite

REAL = "+61412345678"


def _send(sms: clicksend.SmsApi, sender: str) -> str:
    out = sms.send_sms(send_sms_request={"messages": [{"to": REAL, "body": "order ready", "from": sender}]}).data
    return str(out.messages[0].status)


def test_alpha_tag_request_review_and_send(suite: Suite, customer: Customer, certs: CertBundle) -> None:
    http = Http(customer.url, str(customer.ca))
    main = (customer.username, customer.api_key)
    account_id = http.call("GET", "/v3/account", auth=main).json()["data"]["account"]
    suffix = uuid.uuid4().hex[:4].upper()
    ordinary, other = f"Cafe {suffix}", f"Deli {suffix}"
    with sdk_client(customer.url, customer.username, customer.api_key, str(customer.ca)) as client:
        tags, sms = clicksend.AlphaTagsApi(client), clicksend.SmsApi(client)
        asked = tags.request_alpha_tag(request_alpha_tag_request={
            "alpha_tag": ordinary, "reason": "the name over our shop door", "countries": ["AU"]})
        assert isinstance(asked, clicksend.AlphaTag)
        assert (asked.alpha_tag, asked.status, asked.reason, asked.countries) == (
            ordinary, "PENDING", "the name over our shop door", ["AU"])
        assert asked.account_id == str(account_id) and asked.created_timestamp and asked.id
        bank = tags.request_alpha_tag(request_alpha_tag_request={"alpha_tag": f"C0mmBank{suffix[:3]}",
                                                                 "reason": "alerts"})
        with pytest.raises(BadRequestException):  # digits only: a phone number, not a tag
            tags.request_alpha_tag(request_alpha_tag_request={"alpha_tag": "0412345678", "reason": "x"})
        listed = tags.list_alpha_tags(sort_direction="desc", page_size=100)
        assert isinstance(listed, clicksend.ListAlphaTags) and listed.metadata is not None
        assert [t.id for t in listed.alpha_tags or []][:2] == [bank.id, asked.id]
        # Nothing pending can be sent from yet.
        assert _send(sms, ordinary) == "INVALID_SENDER_ID"

        # A support agent signs in (password + TOTP) and finds both waiting, the bank one flagged.
        created = _create_staff(suite, certs, staff_service_pb2.STAFF_ROLE_SUPPORT_AGENT)
        session = _staff_login(http, created, pyotp.TOTP(created.totp_secret).at(int(time.time()) // 30 * 30))
        staff = bearer(session["session_token"])
        waiting = http.call("GET", "/v1/staff/alpha-tags?limit=200", headers=staff)
        assert waiting.status == 200, waiting.body
        flagged = {t["alpha_tag_id"]: t["protected_name"] for t in waiting.json()["alpha_tags"]}
        assert flagged[asked.id] == "" and flagged[bank.id] == "CommBank"

        # The protected name is refused without evidence, and stays pending.
        refused = http.call("POST", f"/v1/staff/alpha-tags/{bank.id}/approve", headers=staff,
                            json_body={"reason": "customer says so"})
        assert refused.status == 400 and reason(refused) == "PROTECTED_SENDER_NAME", refused.body
        assert tags.get_alpha_tag(bank.id).status == "PENDING"
        # A reason is required.
        bare = http.call("POST", f"/v1/staff/alpha-tags/{asked.id}/approve", headers=staff, json_body={})
        assert bare.status == 400 and reason(bare) == "REASON_REQUIRED"
        # The ordinary tag is approved with a reason, which the customer reads in the tag's view.
        why = f"shop name {suffix} matches the business register"
        approved = http.call("POST", f"/v1/staff/alpha-tags/{asked.id}/approve", headers=staff,
                             json_body={"reason": why})
        assert approved.status == 200, approved.body
        view = tags.get_alpha_tag(asked.id)
        assert isinstance(view, clicksend.AlphaTag) and (view.status, view.reason) == ("APPROVED", why)

        # Sends from it succeed; from any other sender they do not (nothing stored or charged for those).
        assert _send(sms, ordinary) == "SUCCESS"
        assert _send(sms, other) == "INVALID_SENDER_ID"
        assert _send(sms, f"C0mmBank{suffix[:3]}") == "INVALID_SENDER_ID"  # requested, never approved

        # Revoked: it stops working at once.
        revoked = http.call("POST", f"/v1/staff/alpha-tags/{asked.id}/revoke", headers=staff,
                            json_body={"reason": "reported as spam"})
        assert revoked.status == 200, revoked.body
        assert (tags.get_alpha_tag(asked.id).status, tags.get_alpha_tag(asked.id).reason) == (
            "REVOKED", "reported as spam")
        assert _send(sms, ordinary) == "INVALID_SENDER_ID"
        tags.delete_alpha_tag(bank.id)
        assert tags.get_alpha_tag(bank.id).status == "CANCELLED"
        with pytest.raises(NotFoundException):
            tags.get_alpha_tag(str(uuid.uuid4()))

    # The customer's own feed has the decision with the staff member and the reason; the platform's has it too.
    def decision(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in events if e["details"].get("alpha_tag_id") == asked.id]

    theirs = wait_feed(http, decision, auth=main, action="messaging.alpha_tag.approved")
    (seen,) = decision(theirs)
    assert seen["actor"]["type"] == "staff" and seen["actor"]["id"] == str(created.staff_user.staff_id)
    assert seen["details"]["reason"] == why and seen["details"]["alpha_tag"] == ordinary
    activated = wait_feed(http, decision, auth=main, action="messaging.sender.activated")
    (new_sender,) = decision(activated)
    assert new_sender["details"]["sender_type"] == "alpha_tag"
    # ...which is a security notice to the owners (emailed; the tag itself, customer text, is not in it).
    notices = until(lambda: http.call("GET", "/v1/audit/security-notifications?page_size=500", auth=main).json(),
                    lambda got: any(n["event_id"] == new_sender["event_id"] for n in got["notifications"]),
                    "the owners' notice of the new sender identity")
    (notice,) = [n for n in notices["notifications"] if n["event_id"] == new_sender["event_id"]]
    assert notice["kind"] == "sender_identity_added" and ordinary not in notice["body"]
    security = _create_staff(suite, certs, staff_service_pb2.STAFF_ROLE_SECURITY_ADMIN)
    sec = bearer(_staff_login(http, security, pyotp.TOTP(security.totp_secret).at(int(time.time()) // 30 * 30))[
        "session_token"])
    ours = wait_feed(http, decision, headers=sec, action="messaging.alpha_tag.approved")
    assert decision(ours)[0]["details"]["customer_account_id"] == str(account_id)
