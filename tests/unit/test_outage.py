"""Which failures the guard reports as UNAVAILABLE (retry shortly) rather than INTERNAL (a bug)."""

from __future__ import annotations

import socket

import asyncpg
import pytest
import redis.exceptions

from svckit.server import is_outage


@pytest.mark.parametrize("exc", [
    ConnectionRefusedError(111, "refused"),
    ConnectionResetError(104, "reset"),
    socket.gaierror(-2, "Name or service not known"),
    TimeoutError(),
    asyncpg.CannotConnectNowError("the database system is shutting down"),
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.TooManyConnectionsError("sorry, too many clients already"),
    redis.exceptions.ConnectionError("Error 111 connecting"),
    redis.exceptions.TimeoutError("Timeout reading from socket"),
])
def test_store_outages_are_retryable(exc: BaseException) -> None:
    assert is_outage(exc)


@pytest.mark.parametrize("exc", [
    ValueError("bad"),
    KeyError("k"),
    PermissionError(13, "denied"),  # an OSError, but a misconfiguration, not an outage
    asyncpg.UniqueViolationError("duplicate key"),
    asyncpg.InterfaceError("cannot call Transaction.__aexit__(): the underlying connection is closed"),
    redis.exceptions.ResponseError("WRONGTYPE"),
])
def test_other_errors_are_not(exc: BaseException) -> None:
    assert not is_outage(exc)


def test_an_error_raised_while_handling_an_outage_is_one() -> None:
    # A transaction that cannot roll back on a connection the server closed raises InterfaceError over
    # the original error.
    try:
        try:
            raise asyncpg.AdminShutdownError("terminating connection due to administrator command")
        except asyncpg.AdminShutdownError:
            raise asyncpg.InterfaceError("the underlying connection is closed")  # noqa: B904
    except asyncpg.InterfaceError as exc:
        assert is_outage(exc)
    try:
        try:
            raise ValueError("a bug")
        except ValueError:
            raise asyncpg.InterfaceError("the underlying connection is closed")  # noqa: B904
    except asyncpg.InterfaceError as exc:
        assert not is_outage(exc)
