"""domain.emails: which addresses are accepted, masking, what a notification email may say, and how a mail
server's answers are classified."""

from __future__ import annotations

import pytest

from services.messaging.domain.emails import (
    DEFAULT_SUBJECT,
    EmailAddressInvalid,
    EmailContentInvalid,
    EmailRejected,
    EmailUnavailable,
    SmtpReply,
    check_address,
    check_content,
    classify,
    mask_address,
    message_id_local,
    verification_email,
)


def test_addresses_are_lowercased_and_strict() -> None:
    assert check_address("  Ops.Team+alerts@Example.COM ") == "ops.team+alerts@example.com"
    assert check_address("a@xn--bcher-kva.example") == "a@xn--bcher-kva.example"
    for bad in ("", "ops", "ops@", "@example.com", "ops@localhost", "ops@example", "o..ps@example.com",
                "ops@-example.com", "ops@exa_mple.com", "öps@example.com", "ops@example.com\r\nBcc: x@y.zz",
                "a b@example.com", "<ops@example.com>", "x" * 65 + "@example.com",
                "a@" + ("b" * 60 + ".") * 5 + "com"):
        with pytest.raises(EmailAddressInvalid):
            check_address(bad)


def test_masking_keeps_the_first_letter_and_the_domain() -> None:
    assert mask_address("ops@example.com") == "o***@example.com"
    assert mask_address("x@example.com") == "x***@example.com"


def test_content_is_one_line_subject_and_bounded_text() -> None:
    assert check_content("", "body") == (DEFAULT_SUBJECT, "body")
    assert check_content(" SendSafe alert ", "line 1\nline 2\ttab") == ("SendSafe alert", "line 1\nline 2\ttab")
    for subject, body in (("a\r\nBcc: x@evil.test", "b"), ("a\nb", "b"), ("s" * 201, "b"), ("s", ""),
                          ("s", "  "), ("s", "b" * 20_001), ("s", "nul\x00byte"), ("bell\x07", "b")):
        with pytest.raises(EmailContentInvalid):
            check_content(subject, body)


def test_failures_retry_unless_the_recipient_or_message_is_refused_for_good() -> None:
    assert classify(None) is EmailUnavailable  # refused, unreachable, timed out
    assert classify(SmtpReply(451, "recipient")) is EmailUnavailable
    assert classify(SmtpReply(421, "connect")) is EmailUnavailable
    assert classify(SmtpReply(535, "auth")) is EmailUnavailable  # our login: an operator fixes it
    assert classify(SmtpReply(550, "sender")) is EmailUnavailable  # our From: likewise
    assert classify(SmtpReply(550, "recipient")) is EmailRejected
    assert classify(SmtpReply(554, "data")) is EmailRejected
    assert EmailUnavailable.code == "UNAVAILABLE" and EmailRejected.code == "FAILED_PRECONDITION"


def test_message_ids_are_stable_per_notification_and_recipient_and_name_neither() -> None:
    a = message_id_local(5, "alert-delivery-1", "ops@example.com")
    assert a == message_id_local(5, "alert-delivery-1", "ops@example.com")
    assert len({a, message_id_local(5, "alert-delivery-2", "ops@example.com"),
                message_id_local(6, "alert-delivery-1", "ops@example.com"),
                message_id_local(5, "alert-delivery-1", "dev@example.com")}) == 4
    assert "ops" not in a and "alert" not in a


def test_the_verification_email_carries_the_code_and_nothing_else_of_the_account() -> None:
    subject, body = verification_email("123456")
    assert subject == "SendSafe verification code" and body.splitlines()[0] == "SendSafe verification code: 123456"


def test_smtp_settings_read_the_password_from_a_file_and_build_a_mailer(tmp_path: object) -> None:
    from pathlib import Path

    from services.messaging.adapters.email import open_mailer
    from services.messaging.config import Settings
    from svckit.config import load

    secret = Path(str(tmp_path)) / "smtp-password"
    secret.write_text("from-a-file\n")
    base = {"TLS_CERT_FILE": "c", "TLS_KEY_FILE": "k", "TLS_CA_FILE": "ca", "DATABASE_URL": "postgresql://x/y",
            "KEYS_ADDR": "127.0.0.1:1"}
    assert open_mailer(load(Settings, base)) is None  # no host: email is not available
    settings = load(Settings, {**base, "MESSAGING_SMTP_HOST": "smtp.example.com",
                               "MESSAGING_SMTP_FROM": "a@example.com", "MESSAGING_SMTP_USERNAME": "relay",
                               "MESSAGING_SMTP_PASSWORD_FILE": str(secret)})
    assert settings.smtp_password == "from-a-file" and settings.smtp_tls == "starttls" and settings.smtp_port == 587
    mailer = open_mailer(settings)
    assert mailer is not None and mailer.sender == "a@example.com"
    with pytest.raises(ValueError):  # plaintext to a remote relay is refused at start-up
        open_mailer(load(Settings, {**base, "MESSAGING_SMTP_HOST": "smtp.example.com", "MESSAGING_SMTP_TLS": "none",
                                    "MESSAGING_SMTP_FROM": "a@example.com"}))
