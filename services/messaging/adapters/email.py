"""SMTP (aiosmtplib): notification emails, over STARTTLS or implicit TLS with the certificate always verified.

One connection per email (notifications are rare; no pool to keep healthy). TLS is 1.2 or newer with the
server's certificate checked against the system's CAs (or MESSAGING_SMTP_CA_FILE) and its name; STARTTLS is
required, never opportunistic (a server that does not offer it is refused, so no one on the path can
downgrade the session to plaintext). Plaintext (`none`) is accepted only to a relay on the loopback
interface (a local MTA or sidecar), where neither credentials nor mail cross a network. AUTH (PLAIN/LOGIN
inside TLS) when a username is set. Optional DKIM signing (dkimpy, rsa-sha256).

Failures become EMAIL_UNAVAILABLE (retry later: refused, unreachable, timed out, 4xx, TLS or login failed)
or EMAIL_REJECTED (a 5xx to the recipient or the message: for good); see domain.emails.classify. Neither the
error, the log nor the span says the address, the subject or the body.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import time
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate
from pathlib import Path
from typing import Final, NoReturn

import aiosmtplib
from opentelemetry import trace

from services.messaging.config import Settings
from services.messaging.domain.emails import (
    EmailAddressInvalid,
    SmtpReply,
    check_address,
    classify,
    message_id_local,
)

_LOG = logging.getLogger(__name__)
_TRACER = trace.get_tracer("sendsafe.messaging.email")
TLS_MODES: Final = ("starttls", "implicit", "none")
_SIGNED_HEADERS: Final = (b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type",
                          b"content-transfer-encoding")


@dataclass(frozen=True, kw_only=True)
class SmtpConfig:
    host: str
    port: int
    tls: str = "starttls"
    ca_file: str = ""
    username: str = ""
    password: str = ""
    sender: str = ""
    timeout: float = 4.0
    dkim_selector: str = ""
    dkim_domain: str = ""
    dkim_key_file: str = ""


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_context(ca_file: str = "") -> ssl.SSLContext:
    """Verify the server (chain and name), TLS 1.2 at least."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class SmtpMailer:
    """`Mailer` over SMTP. Built once at start-up: a bad setting stops the service there, not at the first
    notification."""

    def __init__(self, config: SmtpConfig) -> None:
        if config.tls not in TLS_MODES:
            raise ValueError(f"MESSAGING_SMTP_TLS must be one of {', '.join(TLS_MODES)}, got {config.tls!r}")
        if config.tls == "none" and not _loopback(config.host):
            raise ValueError("MESSAGING_SMTP_TLS=none is allowed only to a relay on loopback (127.0.0.1, ::1,"
                             " localhost); use starttls or implicit")
        if not 0 < config.port < 65536:
            raise ValueError("MESSAGING_SMTP_PORT must be a TCP port")
        if bool(config.username) != bool(config.password):
            raise ValueError("MESSAGING_SMTP_USERNAME and MESSAGING_SMTP_PASSWORD go together")
        try:
            self._sender = check_address(config.sender)
        except EmailAddressInvalid:
            raise ValueError("MESSAGING_SMTP_FROM must be an email address (the sender)") from None
        self._domain = self._sender.rsplit("@", 1)[1]
        self._config = config
        self._ctx = tls_context(config.ca_file) if config.tls != "none" else None
        self._dkim: tuple[bytes, bytes, bytes] | None = None
        if config.dkim_selector or config.dkim_domain or config.dkim_key_file:
            if not (config.dkim_selector and config.dkim_domain and config.dkim_key_file):
                raise ValueError("DKIM needs MESSAGING_DKIM_SELECTOR, _DOMAIN and _KEY_FILE together")
            self._dkim = (config.dkim_selector.encode("ascii"), config.dkim_domain.encode("ascii"),
                          Path(config.dkim_key_file).read_bytes())
        self.sent = 0
        self.failed = 0

    @property
    def sender(self) -> str:
        return self._sender

    def build(self, to: str, subject: str, body: str, *, account_id: int = 0, notification_id: str = "") -> bytes:
        """The message as sent (CRLF line ends), DKIM-signed when configured."""
        msg = EmailMessage(policy=SMTP)
        msg["From"] = f"SendSafe <{self._sender}>"
        msg["To"] = to
        msg["Subject"] = subject
        msg["Date"] = formatdate(time.time(), usegmt=True)
        local = message_id_local(account_id, notification_id, to) if notification_id else f"r.{uuid.uuid4().hex}"
        msg["Message-ID"] = f"<{local}@{self._domain}>"
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to a notification
        msg.set_content(body, subtype="plain", charset="utf-8")
        data = msg.as_bytes()
        if self._dkim is not None:
            import dkim

            selector, domain, key = self._dkim
            data = dkim.sign(data, selector, domain, key, include_headers=list(_SIGNED_HEADERS)) + data
        return data

    async def send(self, to: str, subject: str, body: str, *, account_id: int = 0, notification_id: str = "") -> str:
        """Send one email to one recipient; returns its Message-ID. EMAIL_UNAVAILABLE / EMAIL_REJECTED."""
        data = self.build(to, subject, body, account_id=account_id, notification_id=notification_id)
        message_id = _message_id(data)
        c = self._config
        # The span names the relay and how it was reached, never the recipient, subject or body.
        with _TRACER.start_as_current_span("smtp.send", kind=trace.SpanKind.CLIENT, attributes={
                "server.address": c.host, "server.port": c.port, "sendsafe.smtp.tls": c.tls}):
            await self._deliver(to, data)
        self.sent += 1
        return message_id

    async def _deliver(self, to: str, data: bytes) -> None:
        c = self._config
        smtp = aiosmtplib.SMTP(
            hostname=c.host, port=c.port, timeout=c.timeout, use_tls=c.tls == "implicit",
            start_tls=c.tls == "starttls", tls_context=self._ctx, validate_certs=self._ctx is not None,
        )
        stage = "connect"
        try:
            async with smtp:
                stage = "auth"
                if c.username:
                    await smtp.login(c.username, c.password)
                stage = "data"
                await smtp.sendmail(self._sender, [to], data)
        except aiosmtplib.SMTPRecipientsRefused as err:
            self._fail(SmtpReply(min((r.code for r in err.recipients), default=0), "recipient"), err)
        except aiosmtplib.SMTPRecipientRefused as err:
            self._fail(SmtpReply(err.code, "recipient"), err)
        except aiosmtplib.SMTPSenderRefused as err:
            self._fail(SmtpReply(err.code, "sender"), err)
        except aiosmtplib.SMTPResponseException as err:
            self._fail(SmtpReply(err.code, stage), err)
        except ssl.SSLError as err:
            self._fail(SmtpReply(0, "tls"), err)
        except (aiosmtplib.SMTPException, OSError) as err:  # refused, unreachable, timed out, dropped, no STARTTLS
            cause = err.__cause__ or err.__context__
            if isinstance(cause, ssl.SSLError):  # implicit TLS: the handshake failed inside the connect
                self._fail(SmtpReply(0, "tls"), cause)
            self._fail(None, err)

    def _fail(self, reply: SmtpReply | None, err: BaseException) -> NoReturn:
        self.failed += 1
        kind = classify(reply)
        # The class and the server's code only: a server's message can quote the address.
        where = "" if reply is None else f" {reply.code or ''} at {reply.stage}".replace("  ", " ")
        _LOG.warning("smtp send failed: %s%s (%s)", type(err).__name__, where, kind.reason)
        if kind.reason == "EMAIL_REJECTED":
            raise kind("the mail server refused this recipient or message for good") from None
        raise kind("the mail server cannot take the email now; try again later") from None


def _message_id(data: bytes) -> str:
    for line in data.split(b"\r\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode("ascii")
    return ""


def open_mailer(settings: Settings) -> SmtpMailer | None:
    """None when MESSAGING_SMTP_HOST is unset: email notifications then answer CHANNEL_NOT_AVAILABLE."""
    if not settings.smtp_host:
        return None
    return SmtpMailer(SmtpConfig(
        host=settings.smtp_host, port=settings.smtp_port, tls=settings.smtp_tls, ca_file=settings.smtp_ca_file,
        username=settings.smtp_username, password=settings.smtp_password, sender=settings.smtp_from,
        timeout=settings.smtp_timeout_seconds, dkim_selector=settings.dkim_selector,
        dkim_domain=settings.dkim_domain, dkim_key_file=settings.dkim_key_file,
    ))
