"""A real SMTP server for the email tests: aiosmtpd in this process and event loop, STARTTLS (required) or
implicit TLS with a certificate from the tests' public CA (or any other), optional AUTH, and answers a test
can set (a 4xx or 5xx to RCPT or DATA). What it accepted is kept, with how the session was secured."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: str  # the TLS version of the session ("" in plaintext)
    login: str  # the AUTH user ("" without AUTH)

    @property
    def message(self) -> EmailMessage:
        parsed = BytesParser(policy=policy.default).parsebytes(self.data)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Inbox:
    """The server's state: what arrived, what it answers, the credentials it takes."""

    port: int = 0
    received: list[Received] = field(default_factory=list)
    rcpt_reply: str = ""  # e.g. "550 5.1.1 no such user" or "451 4.3.0 try later"; "" accepts
    data_reply: str = ""
    credentials: tuple[str, str] | None = None
    auth_attempts: list[str] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def stop(self) -> None:
        """Stop listening (new connections are refused)."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    # aiosmtpd handler hooks
    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply:
            return self.data_reply
        tls = server.transport.get_extra_info("ssl_object")
        login = session.auth_data.decode() if session.authenticated and isinstance(session.auth_data, bytes) else ""
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content),
                                      (tls.version() or "") if tls is not None else "", login))
        return "250 2.0.0 accepted"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword) or self.credentials is None:
            return AuthResult(success=False, handled=False)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        self.auth_attempts.append(login)
        return AuthResult(success=(login, password) == self.credentials, handled=False, auth_data=login.encode())


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


@asynccontextmanager
async def smtp_server(cert: Path | None, key: Path | None, *, mode: str = "starttls",
                      credentials: tuple[str, str] | None = None) -> AsyncIterator[Inbox]:
    """mode: "starttls" (required before MAIL), "implicit" (TLS from the first byte) or "plain" (no TLS offered)."""
    inbox = Inbox(credentials=credentials)
    ctx = server_context(cert, key) if cert and key else None

    def factory() -> SMTP:
        return SMTP(
            inbox, hostname="mail.test", ident="aiosmtpd-test",
            tls_context=ctx if mode == "starttls" else None, require_starttls=mode == "starttls",
            authenticator=inbox.authenticate if credentials else None, auth_required=bool(credentials),
            auth_require_tls=True,
        )

    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", 0, ssl=ctx if mode == "implicit" else None)
    inbox.port, inbox.server = server.sockets[0].getsockname()[1], server
    try:
        yield inbox
    finally:
        await inbox.stop()
