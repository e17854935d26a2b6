"""Security notifications (issue 14): which events notify, the fixed templates (no secret ever reaches
them), the new-address rule, and what each delivery outcome leaves (pure rules and the use case with fakes)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

import pytest

from sendsafe.audit.v1 import event_pb2
from services.audit.domain import security_notices as sn
from services.audit.domain.evaluation import EventFacts
from services.audit.service import formats
from services.audit.service.ports import DeliveryError
from services.audit.service.security_notices import SecurityNotices

T0 = datetime(2026, 5, 1, 22, 30, 5, tzinfo=timezone(timedelta(hours=10)))  # 12:30:05 UTC

# What must never reach an email, fed in through every field an emitter controls.
KEY_SECRET = "ss_live_AbCdEf0123456789SECRETsecretSECRET"
TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
PASSWORD = "Correct-Horse-Battery-9"
CODE = "493817"
RECOVERY = "abcd-efgh-ijkl"
PHONE = "+61411222333"
BODY = "Your one-time code is 493817"
KEY_NAME = "prod key for Bob +61411222333"
SECRETS = (KEY_SECRET, TOTP_SECRET, PASSWORD, CODE, RECOVERY, PHONE, "61411222333", BODY, KEY_NAME, "Bob")
LEAKY = {"api_key": KEY_SECRET, "secret": TOTP_SECRET, "totp_secret": TOTP_SECRET, "password": PASSWORD,
         "code": CODE, "recovery_code": RECOVERY, "phone_number": PHONE, "body": BODY, "name": KEY_NAME,
         "reason": f"customer asked, call {PHONE}", "justification": PASSWORD}


def ev(action: str, *, seq: int = 10, account: int = 42, outcome: int = 1, actor_type: str = "user",
       actor_id: str = "7", resource_id: str = "", details: dict[str, str] | None = None,
       address: str = "203.0.113.10", agent: str = "curl/8.5") -> sn.NoticeEvent:
    return sn.NoticeEvent(seq, f"ev{seq}", account, T0, action, outcome, actor_type, actor_id, "", resource_id,
                          address, agent, {**LEAKY, **(details or {})})


CASES = [
    ("keys.api_key.created", {}, sn.API_KEY_CREATED),
    ("keys.api_key.rolled", {}, sn.API_KEY_CREATED),
    ("keys.api_key.issued", {}, sn.API_KEY_CREATED),
    ("auth.login", {}, sn.NEW_SIGN_IN),
    ("auth.mfa.enrol", {}, sn.MFA_ENROLLED),
    ("auth.mfa.remove", {}, sn.MFA_REMOVED),
    ("auth.password.change", {}, sn.PASSWORD_CHANGED),
    ("subaccount.update", {"fields": "email,password"}, sn.PASSWORD_CHANGED),
    ("staff.customer_access", {"operation": "GetCustomerAccount"}, sn.STAFF_ACCESS),
    ("audit.events.read_by_staff", {}, sn.STAFF_ACCESS),
    ("messaging.staff.history_read", {"content_visible": "false"}, sn.STAFF_ACCESS),
    ("keys.account_keys.destruction_scheduled", {"destroy_time": "2026-05-08T12:30:05+00:00"},
     sn.KEY_DESTRUCTION_SCHEDULED),
    ("messaging.sender.activated", {"sender_type": "alpha_tag"}, sn.SENDER_IDENTITY_ADDED),
]


@pytest.mark.parametrize(("action", "details", "kind"), CASES)
def test_each_security_event_maps_to_its_notice(action: str, details: dict[str, str], kind: str) -> None:
    assert sn.notice_kind(ev(action, details=details)) == kind
    # Only what succeeded, and only in a customer's feed.
    assert sn.notice_kind(ev(action, details=details, outcome=event_pb2.OUTCOME_FAILURE)) == ""
    assert sn.notice_kind(ev(action, details=details, outcome=event_pb2.OUTCOME_DENIED)) == ""
    assert sn.notice_kind(ev(action, details=details, account=0)) == ""


def test_what_does_not_notify() -> None:
    assert sn.notice_kind(ev("subaccount.update", details={"fields": "email,first_name"})) == ""
    assert sn.notice_kind(ev("auth.login", actor_type="staff")) == ""  # staff sign in to the platform
    # The platform feed's copy of a staff access names the customer account: only the customer's copy notifies.
    assert sn.notice_kind(ev("staff.customer_access", details={"customer_account_id": "42"})) == ""
    for action in ("auth.mfa.enrol_start", "keys.api_key.verify_failed", "auth.lockout", "messaging.sms.sent",
                   "keys.account_keys.destruction_cancelled", "gateway.CreateApiKey"):
        assert sn.notice_kind(ev(action)) == "", action
    assert {a for a, _, _ in CASES} == sn.CANDIDATE_ACTIONS


@pytest.mark.parametrize(("action", "details", "kind"), CASES)
def test_no_secret_ever_reaches_a_notice(action: str, details: dict[str, str], kind: str) -> None:
    nasty_agent = f"Mozilla/5.0\r\nBcc: evil@example.com\x00 {'x' * 300}"
    notice = sn.render(kind, ev(action, details=details, resource_id="ak_live_1234<script>", agent=nasty_agent))
    text = notice.subject + "\n" + notice.body
    for secret in SECRETS:
        assert secret not in text, (kind, secret)
    assert not re.search(r"\b\d{6}\b", text.replace("2026", "")), text  # no verification/TOTP code shape
    assert "\r" not in text and "\x00" not in text and "Bcc: evil@example.com\n" not in text
    assert "<script>" not in text and "<" not in text
    assert all(len(line) <= 200 for line in text.split("\n"))
    assert "When: 2026-05-01 12:30:05 UTC" in notice.body  # the event's time, in UTC
    assert notice.event_id == "ev10" and notice.event_sequence == 10 and notice.account_id == 42
    assert notice.subject.startswith("SendSafe security notice: ")


def test_templates_say_what_happened_when_where_and_which_key() -> None:
    key = sn.render(sn.API_KEY_CREATED, ev("keys.api_key.created", resource_id="ak_live_0a1b2c"))
    assert "API key id: ak_live_0a1b2c." in key.body
    assert "From address: 203.0.113.10" in key.body and "User agent: curl/8.5" in key.body
    assert "By user: 7" in key.body and "Audit event: ev10" in key.body
    sign_in = sn.render(sn.NEW_SIGN_IN, ev("auth.login", address="2001:db8::1", agent="Firefox/133"))
    assert "User 7 signed in" in sign_in.body and "From address: 2001:db8::1" in sign_in.body
    assert "not seen for this user in the last 90 days" in sign_in.body
    reset = sn.render(sn.PASSWORD_CHANGED, ev("subaccount.update", resource_id="9",
                                              details={"fields": "password"}))
    assert "The password of user 9 was reset by user 7." in reset.body
    staff = sn.render(sn.STAFF_ACCESS, ev("staff.customer_access", actor_type="staff", actor_id="3",
                                          details={"operation": "SetCustomerUserStatus"}))
    assert "staff id 3" in staff.body and "(SetCustomerUserStatus)" in staff.body and "User agent" not in staff.body
    doom = sn.render(sn.KEY_DESTRUCTION_SCHEDULED, ev("keys.account_keys.destruction_scheduled",
                                                     details={"destroy_time": "2026-05-08T22:30:05+10:00"}))
    assert "they will be destroyed at 2026-05-08 12:30:05 UTC" in doom.body
    # A detail that is not a timestamp is left out, not copied.
    odd = sn.render(sn.KEY_DESTRUCTION_SCHEDULED, ev("keys.account_keys.destruction_scheduled",
                                                    details={"destroy_time": PASSWORD}))
    assert PASSWORD not in odd.body and "was scheduled." in odd.body
    # A new sender: its type from a fixed list, never the number or the tag itself (customer text).
    sender = sn.render(sn.SENDER_IDENTITY_ADDED, ev("messaging.sender.activated", resource_id="abc-1",
                                                    details={"sender_type": "verified_number", "alpha_tag": PASSWORD,
                                                             "number": "+61*******678"}))
    assert "A new verified number can now be used" in sender.body and "abc-1" in sender.body
    assert PASSWORD not in sender.body and "678" not in sender.body
    odd_type = sn.render(sn.SENDER_IDENTITY_ADDED, ev("messaging.sender.activated", details={"sender_type": PASSWORD}))
    assert PASSWORD not in odd_type.body and "A new sender can now be used" in odd_type.body
    # An address that is not an IP address is not printed.
    assert "From address" not in sn.render(sn.API_KEY_CREATED, ev("keys.api_key.created", address="evil\nx")).body


def test_sign_in_networks() -> None:
    assert sn.sign_in_network("203.0.113.10") == "203.0.113.10/32"
    assert sn.sign_in_network("::ffff:203.0.113.10") == "203.0.113.10/32"
    assert sn.sign_in_network("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert sn.sign_in_network("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert sn.sign_in_network("2001:db8:1:3::1") != sn.sign_in_network("2001:db8:1:2::1")
    assert sn.sign_in_network("") == sn.sign_in_network("localhost") == ""


def test_new_sign_in_rule() -> None:
    assert sn.is_new_sign_in(signed_in_before=True, seen_in_window=False)
    assert not sn.is_new_sign_in(signed_in_before=True, seen_in_window=True)
    assert not sn.is_new_sign_in(signed_in_before=False, seen_in_window=False)  # the first sign-in: the baseline


def test_delivery_outcomes() -> None:
    assert sn.delivery_outcome("CHANNEL_NOT_AVAILABLE", False, 1) == (sn.NOT_SENT, "EMAIL_NOT_CONFIGURED")
    assert sn.delivery_outcome("MESSAGING_NOT_CONFIGURED", False, 1) == (sn.NOT_SENT, "MESSAGING_NOT_CONFIGURED")
    assert sn.delivery_outcome("EMAIL_REJECTED", False, 1) == (sn.FAILED, "EMAIL_REJECTED")
    assert sn.delivery_outcome("EMAIL_UNAVAILABLE", True, 1) == (sn.PENDING, "EMAIL_UNAVAILABLE")
    assert sn.delivery_outcome("EMAIL_UNAVAILABLE", True, sn.MAX_NOTICE_ATTEMPTS) == (sn.FAILED, "EMAIL_UNAVAILABLE")


# -- the use case, with fakes ---------------------------------------------------------------------------------


@dataclass
class FakeTx:
    history: dict[tuple[int, str], tuple[bool, bool]] = field(default_factory=dict)
    asked: list[sn.SignInAsk] = field(default_factory=list)
    calls: int = 0
    inserted: list[sn.Notice] = field(default_factory=list)

    async def sign_in_history(self, asks: Sequence[sn.SignInAsk]) -> list[tuple[bool, bool]]:
        self.calls += 1
        self.asked += asks
        return [self.history.get((a.account_id, a.actor_id), (False, False)) for a in asks]

    async def insert_notices(self, notices: Sequence[sn.Notice]) -> int:
        self.inserted += notices
        return len(notices)


def _row(seq: int, action: str, *, actor: str = "7", address: str = "198.51.100.7", outcome: int = 1,
         details: dict[str, str] | None = None) -> tuple[tuple[int, bytes], EventFacts]:
    e = event_pb2.Event(event_id=f"e{seq}", action=action, outcome=outcome,  # type: ignore[arg-type]
                        details=details or {})
    e.event_time.FromDatetime(T0.astimezone(UTC).replace(tzinfo=None))
    e.actor.type, e.actor.id, e.actor.account_id = "user", actor, 42
    e.source.client_address = address
    leaf = e.SerializeToString()
    return (seq, leaf), formats.facts(seq, leaf)


async def test_record_asks_the_sign_in_history_and_notices_only_what_calls_for_it() -> None:
    tx = FakeTx(history={(42, "7"): (True, False), (42, "8"): (True, True), (42, "9"): (False, False)})
    pairs = [_row(1, "auth.login"), _row(2, "auth.login", actor="8"), _row(3, "auth.login", actor="9"),
             _row(4, "keys.api_key.created", details={"name": KEY_NAME}), _row(5, "messaging.sms.sent"),
             _row(6, "auth.login", outcome=2), _row(7, "auth.login", address="")]
    notices = SecurityNotices(FakeStore(), None)
    assert await notices.record(tx, [r for r, _ in pairs], [f for _, f in pairs]) == 2
    assert [(n.event_sequence, n.kind) for n in tx.inserted] == [(1, sn.NEW_SIGN_IN), (4, sn.API_KEY_CREATED)]
    # The history is asked (once for the batch) for each sign-in with an address, before it, over the
    # 90-day window, by network.
    assert tx.calls == 1
    assert [(a.actor_id, a.before_sequence, a.network) for a in tx.asked] == [
        ("7", 1, "198.51.100.7/32"), ("8", 2, "198.51.100.7/32"), ("9", 3, "198.51.100.7/32")]
    assert tx.asked[0].since == T0 - timedelta(days=90) and tx.asked[0].account_id == 42
    assert notices.recorded == 2


@dataclass
class FakeStore:
    due: list[sn.StoredNotice] = field(default_factory=list)
    finished: list[tuple[int, int, int, str, float]] = field(default_factory=list)

    async def notices(self, account_id: int, before_id: int, limit: int) -> list[sn.StoredNotice]:
        return []

    async def claim_notices(self, limit: int, lease_seconds: float) -> list[sn.StoredNotice]:
        out, self.due = self.due, []
        return out

    async def finish_notice(self, notice_id: int, status: int, attempts: int, error: str, retry_in: float) -> None:
        self.finished.append((notice_id, status, attempts, error, retry_in))


@dataclass
class FakeMailer:
    error: DeliveryError | None = None
    sent: list[tuple[int, str, str, str]] = field(default_factory=list)

    async def email_owners(self, account_id: int, subject: str, body: str, notification_id: str) -> None:
        if self.error is not None:
            raise self.error
        self.sent.append((account_id, subject, body, notification_id))


def _stored(notice_id: int, attempts: int = 0) -> sn.StoredNotice:
    return sn.StoredNotice(notice_id, 42, sn.API_KEY_CREATED, "e1", T0, "s", "b", sn.PENDING, attempts, "", T0, T0)


@pytest.mark.parametrize(("error", "attempts", "expected"), [
    (None, 0, (sn.SENT, 1, "", 0.0)),
    (DeliveryError("EMAIL_UNAVAILABLE", retryable=True), 0, (sn.PENDING, 1, "EMAIL_UNAVAILABLE", 5.0)),
    (DeliveryError("EMAIL_UNAVAILABLE", retryable=True), 2, (sn.PENDING, 3, "EMAIL_UNAVAILABLE", 20.0)),
    (DeliveryError("EMAIL_UNAVAILABLE", retryable=True), 7, (sn.FAILED, 8, "EMAIL_UNAVAILABLE", 0.0)),
    (DeliveryError("EMAIL_REJECTED", retryable=False), 0, (sn.FAILED, 1, "EMAIL_REJECTED", 0.0)),
    (DeliveryError("CHANNEL_NOT_AVAILABLE", retryable=False), 0, (sn.NOT_SENT, 1, "EMAIL_NOT_CONFIGURED", 0.0)),
])
async def test_each_delivery_outcome_is_recorded(error: DeliveryError | None, attempts: int,
                                                 expected: tuple[int, int, str, float]) -> None:
    store, mailer = FakeStore([_stored(5, attempts)]), FakeMailer(error)
    notices = SecurityNotices(store, mailer, retry_base=5.0)
    assert await notices.deliver_due() == 1
    assert store.finished == [(5, *expected)]
    if error is None:
        assert mailer.sent == [(42, "s", "b", "security-notice-5")]


async def test_without_messaging_a_notice_is_not_sent_and_not_retried() -> None:
    store = FakeStore([_stored(6)])
    await SecurityNotices(store, None).deliver_due()
    assert store.finished == [(6, sn.NOT_SENT, 1, "MESSAGING_NOT_CONFIGURED", 0.0)]


def test_the_sign_in_index_and_query_name_the_action_the_rule_uses() -> None:
    from pathlib import Path

    import services.audit.adapters.store.security_notices as store

    root = Path(store.__file__).parents[2]
    literal = f"action = '{sn.SIGN_IN_ACTION}'"
    assert literal in (root / "migrations" / "0004_security_notices.sql").read_text()
    assert f"e.{literal}" in Path(store.__file__).read_text()
