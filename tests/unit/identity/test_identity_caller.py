"""api.py maps the principal the gateway forwarded to the Caller every use case takes."""

from __future__ import annotations

from sendsafe.context.v1 import principal_pb2
from services.identity.api import caller_of
from services.identity.domain.caller import Caller


def test_no_principal_is_an_anonymous_caller() -> None:
    assert caller_of(None) == Caller()
    assert caller_of(principal_pb2.Principal(client_address="192.0.2.1", user_agent="ua")) == Caller(
        client_address="192.0.2.1", user_agent="ua"
    )


def test_only_a_session_authenticated_call_carries_its_session() -> None:
    """Self-service needs an interactive session: an API key call has no session id, whatever it says."""
    session = principal_pb2.Principal(
        account_id=7, user_id=8, session_id="ses_1", auth_method=principal_pb2.AUTH_METHOD_SESSION, staff=True
    )
    assert caller_of(session) == Caller(account_id=7, user_id=8, staff=True, session_id="ses_1")
    key = principal_pb2.Principal(
        account_id=7, user_id=8, session_id="ses_1", auth_method=principal_pb2.AUTH_METHOD_API_KEY
    )
    assert caller_of(key).session_id == ""
