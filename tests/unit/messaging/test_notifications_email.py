"""The email branch of the notifications use case with fakes for its ports: security notices to the account's
owners, the refusals before anything is sent, evidence of every email (address masked, cause set), and a code
that could not be mailed being forgotten."""

from __future__ import annotations

from typing import Any

import pytest

from sendsafe.audit.v1 import event_pb2
from services.messaging.domain.destinations import ChannelNotAvailable, Destination, IdentityNotConfigured
from services.messaging.domain.emails import EMAIL, EmailContentInvalid, EmailUnavailable, NoAccountOwners
from services.messaging.domain.records import Caller
from services.messaging.service.notifications import Notifications


class Keys:
    async def indexer(self, account_id: int) -> Any:
        return lambda value: f"{account_id}:{value}".encode()

    async def get(self, account_id: int) -> bytes:
        return b"k" * 32


class FakeMessaging:
    keys = Keys()


class Mailer:
    def __init__(self, fail: Exception | None = None) -> None:
        self.sent: list[tuple[str, str, str]] = []
        self.fail = fail

    async def send(self, to: str, subject: str, body: str, *, account_id: int = 0, notification_id: str = "") -> str:
        if self.fail is not None:
            raise self.fail
        self.sent.append((to, subject, body))
        return f"<m{len(self.sent)}@sendsafe.example>"


class Contacts:
    def __init__(self, *emails: str) -> None:
        self.emails = list(emails)

    async def owner_emails(self, account_id: int) -> list[str]:
        return self.emails


class Destinations:
    def __init__(self) -> None:
        self.forgotten: list[str] = []

    async def start(self, account_id: int, channel: int, to_hash: bytes, to_masked: str, user_id: int,
                    code_hash: Any, ttl_s: int, per_hour: int) -> Destination:
        code_hash("d1")
        return Destination("d1", account_id, channel, to_masked, False, 0)

    async def forget_code(self, destination_id: str) -> None:
        self.forgotten.append(destination_id)

    async def is_verified(self, account_id: int, channel: int, to_hash: bytes) -> bool:
        return False


def notifications(mailer: Mailer | None, contacts: Contacts | None = None,
                  destinations: Destinations | None = None) -> tuple[Notifications, list[event_pb2.Event]]:
    events: list[event_pb2.Event] = []

    async def record(ev: event_pb2.Event) -> None:
        events.append(ev)

    n = Notifications(FakeMessaging(), destinations or Destinations(), record,  # type: ignore[arg-type]
                      mailer=mailer, contacts=contacts)
    return n, events


async def test_security_notices_go_to_each_owner_once_with_evidence_but_no_address() -> None:
    mailer = Mailer()
    n, events = notifications(mailer, Contacts("Owner@Example.com", "owner@example.com", "not-an-address"))
    got = await n.send(42, EMAIL, "", "A new API key was created.", subject="SendSafe security: new API key",
                       notification_id="sn-1", account_owners=True)
    assert got == "<m1@sendsafe.example>"
    assert mailer.sent == [("owner@example.com", "SendSafe security: new API key", "A new API key was created.")]
    [ev] = events
    assert (ev.action, ev.cause, ev.details["to"], ev.details["kind"]) == (
        "messaging.notification.email", "security_notification", "o***@example.com", "account_owners")
    assert "owner@example.com" not in str(ev)


async def test_refusals_before_anything_is_sent() -> None:
    mailer = Mailer()
    with pytest.raises(ChannelNotAvailable):
        await notifications(None, Contacts("a@example.com"))[0].send(42, EMAIL, "", "b", account_owners=True)
    with pytest.raises(IdentityNotConfigured):
        await notifications(mailer)[0].send(42, EMAIL, "", "b", account_owners=True)
    with pytest.raises(NoAccountOwners):
        await notifications(mailer, Contacts())[0].send(42, EMAIL, "", "b", account_owners=True)
    with pytest.raises(EmailContentInvalid):
        await notifications(mailer, Contacts("a@example.com"))[0].send(
            42, EMAIL, "", "b", subject="x\nBcc: y@evil.test", account_owners=True)
    with pytest.raises(ChannelNotAvailable):  # account_owners is an email thing
        await notifications(mailer, Contacts("a@example.com"))[0].send(42, 1, "", "b", account_owners=True)
    assert mailer.sent == []


async def test_a_mail_server_outage_is_recorded_and_raised_and_the_code_forgotten() -> None:
    mailer = Mailer(EmailUnavailable("down"))
    n, events = notifications(mailer, Contacts("a@example.com"))
    with pytest.raises(EmailUnavailable):
        await n.send(42, EMAIL, "", "b", account_owners=True)
    assert [(e.outcome, e.error_reason) for e in events] == [(event_pb2.OUTCOME_FAILURE, "EMAIL_UNAVAILABLE")]

    destinations = Destinations()
    n, events = notifications(mailer, destinations=destinations)
    with pytest.raises(EmailUnavailable):
        await n.start_verification(Caller(42, 7, "alice"), EMAIL, "ops@example.com")
    assert destinations.forgotten == ["d1"]
    assert [e.action for e in events] == ["messaging.notification_destination.code_sent",
                                          "messaging.notification.email"]
