"""The SMTP adapter against a real SMTP server (aiosmtpd, in-process): STARTTLS or implicit TLS with the
certificate verified, AUTH, well-formed messages, DKIM, and how failures are classified (retry later or for
good). Issue 14, "SMTP against aiosmtpd"."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from services.messaging.adapters.email import SmtpConfig, SmtpMailer
from services.messaging.domain.emails import EmailRejected, EmailUnavailable
from tests.conftest import foreign_tls
from tests.integration.messaging.smtp_server import smtp_server
from tests.support import CertBundle

SENDER = "alerts@sendsafe.example"
PASSWORD = "smtp-Pa55word-never-in-mail"


def mailer(certs: CertBundle, port: int, **kw: object) -> SmtpMailer:
    args: dict[str, object] = dict(host="127.0.0.1", port=port, tls="starttls", ca_file=str(certs.public_ca),
                                   sender=SENDER, timeout=2.0)
    args.update(kw)
    return SmtpMailer(SmtpConfig(**args))  # type: ignore[arg-type]


async def test_starttls_auth_and_a_well_formed_message(certs: CertBundle) -> None:
    async with smtp_server(certs.https_cert, certs.https_key, credentials=("relay-user", PASSWORD)) as inbox:
        m = mailer(certs, inbox.port, username="relay-user", password=PASSWORD)
        body = "SendSafe alert: rule 7 matched 1 event(s) (gateway.login) at 2026-12-04 10:00 UTC.\nÜnïcode ✓"
        message_id = await m.send("Ops@Example.com", "SendSafe alert", body, account_id=5, notification_id="n-1")
    [got] = inbox.received
    assert got.tls in ("TLSv1.2", "TLSv1.3") and got.login == "relay-user"
    assert got.mail_from == SENDER and got.rcpt_tos == ["Ops@Example.com"]
    msg = got.message
    assert msg["From"] == f"SendSafe <{SENDER}>" and msg["To"] == "Ops@Example.com"
    assert msg["Subject"] == "SendSafe alert" and msg["Auto-Submitted"] == "auto-generated"
    assert msg["Message-ID"] == message_id and message_id.endswith("@sendsafe.example>")
    assert abs(parsedate_to_datetime(msg["Date"]).timestamp() - time.time()) < 60
    assert msg.get_content_type() == "text/plain" and msg.get_content_charset() == "utf-8"
    assert msg.get_content().replace("\r\n", "\n").rstrip("\n") == body
    assert PASSWORD.encode() not in got.data and b"relay-user" not in got.data
    assert b"\r\n" in got.data and b"\n\n" not in got.data.replace(b"\r\n", b"")  # CRLF throughout


async def test_a_retry_of_one_notification_keeps_its_message_id(certs: CertBundle) -> None:
    async with smtp_server(certs.https_cert, certs.https_key) as inbox:
        m = mailer(certs, inbox.port)
        first = await m.send("a@example.com", "s", "b", account_id=5, notification_id="alert-delivery-9")
        again = await m.send("a@example.com", "s", "b", account_id=5, notification_id="alert-delivery-9")
        other = await m.send("b@example.com", "s", "b", account_id=5, notification_id="alert-delivery-9")
        fresh = await m.send("a@example.com", "s", "b")
    assert first == again and len({first, other, fresh}) == 3
    assert b"example.com" not in first.encode() and b"alert-delivery" not in first.encode()


async def test_implicit_tls(certs: CertBundle) -> None:
    async with smtp_server(certs.https_cert, certs.https_key, mode="implicit") as inbox:
        await mailer(certs, inbox.port, tls="implicit").send("a@example.com", "s", "body")
    assert [r.tls[:5] for r in inbox.received] == ["TLSv1"]


async def test_an_untrusted_certificate_is_refused(certs: CertBundle, tmp_path: Path) -> None:
    foreign = foreign_tls(tmp_path, "mail")
    for mode in ("starttls", "implicit"):
        async with smtp_server(foreign.cert, foreign.key, mode=mode) as inbox:
            with pytest.raises(EmailUnavailable) as info:
                await mailer(certs, inbox.port, tls=mode).send("a@example.com", "s", "body")
            assert info.value.reason == "EMAIL_UNAVAILABLE" and info.value.code == "UNAVAILABLE"
        assert inbox.received == []


async def test_a_server_without_starttls_is_refused_not_used_in_plaintext(certs: CertBundle) -> None:
    async with smtp_server(None, None, mode="plain") as inbox:
        with pytest.raises(EmailUnavailable):
            await mailer(certs, inbox.port).send("a@example.com", "s", "body")
    assert inbox.received == []


async def test_plaintext_only_to_a_loopback_relay(certs: CertBundle) -> None:
    async with smtp_server(None, None, mode="plain") as inbox:
        await mailer(certs, inbox.port, tls="none").send("a@example.com", "s", "body")
    assert [r.tls for r in inbox.received] == [""]
    for bad in (dict(tls="none", host="mail.example.com"), dict(tls="ssl"), dict(username="u"),
                dict(sender="not an address"), dict(dkim_selector="s1")):
        with pytest.raises(ValueError):
            mailer(certs, 25, **bad)


@pytest.fixture
async def closed_port() -> AsyncIterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    yield port


async def test_refused_silent_and_4xx_servers_are_retryable(certs: CertBundle, closed_port: int) -> None:
    with pytest.raises(EmailUnavailable):  # nothing listens
        await mailer(certs, closed_port).send("a@example.com", "s", "body")

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts and never greets
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        with pytest.raises(EmailUnavailable):
            await mailer(certs, server.sockets[0].getsockname()[1], timeout=0.3).send("a@example.com", "s", "b")
    finally:
        server.close()
    async with smtp_server(certs.https_cert, certs.https_key, credentials=("u", PASSWORD)) as inbox:
        inbox.rcpt_reply = "451 4.3.0 mailbox busy, try later"
        with pytest.raises(EmailUnavailable):
            await mailer(certs, inbox.port, username="u", password=PASSWORD).send("a@example.com", "s", "b")
        inbox.rcpt_reply = ""
        with pytest.raises(EmailUnavailable):  # our credentials are wrong: an operator fixes it, then it goes
            await mailer(certs, inbox.port, username="u", password="wrong").send("a@example.com", "s", "b")
    assert inbox.received == [] and set(inbox.auth_attempts) == {"u"}


async def test_a_5xx_to_the_recipient_or_the_message_is_final(certs: CertBundle) -> None:
    async with smtp_server(certs.https_cert, certs.https_key) as inbox:
        m = mailer(certs, inbox.port)
        inbox.rcpt_reply = "550 5.1.1 no such user here"
        with pytest.raises(EmailRejected) as info:
            await m.send("nobody@example.com", "s", "body")
        assert info.value.reason == "EMAIL_REJECTED" and info.value.code == "FAILED_PRECONDITION"
        assert "nobody" not in str(info.value)
        inbox.rcpt_reply, inbox.data_reply = "", "554 5.7.1 message refused"
        with pytest.raises(EmailRejected):
            await m.send("a@example.com", "s", "body")
    assert inbox.received == []


async def test_dkim_signature_verifies(certs: CertBundle, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "dkim.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    import base64

    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == b"s2026._domainkey.sendsafe.example." else None

    async with smtp_server(certs.https_cert, certs.https_key) as inbox:
        await mailer(certs, inbox.port, dkim_selector="s2026", dkim_domain="sendsafe.example",
                     dkim_key_file=str(key_file)).send("a@example.com", "SendSafe alert", "body ✓")
    [got] = inbox.received
    assert got.message["DKIM-Signature"] and "d=sendsafe.example" in got.message["DKIM-Signature"]
    assert dkim.verify(got.data, dnsfunc=dns)
    assert not dkim.verify(got.data.replace(b"SendSafe alert", b"SendSafe alarm"), dnsfunc=dns)
