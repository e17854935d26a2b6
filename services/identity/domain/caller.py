"""Who is calling: the authenticated principal the gateway forwarded, as api.py maps it for the use cases.
Pure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    """The end user (or staff member) behind a call. The defaults are a call without an identity: a login
    knows only where it came from."""

    account_id: int = 0
    user_id: int = 0  # a staff member's staff id when `staff`
    staff: bool = False
    session_id: str = ""  # set only when the call was authenticated with a session (not an API key)
    client_address: str = ""
    user_agent: str = ""
