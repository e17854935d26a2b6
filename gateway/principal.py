"""Where a request came from and who it is for: the client's address behind trusted proxies, the TLS it
used, and the principal the gateway forwards to the services (`x-sendsafe-principal-bin`)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from gateway.auth import Identity
from gateway.config import Network
from sendsafe.context.v1 import principal_pb2


@dataclass(frozen=True)
class Connection:
    """Where a request came from (per request, not cached)."""

    client_address: str
    user_agent: str = ""
    tls_version: str = ""
    tls_cipher: str = ""


def client_address(peer: str, forwarded_for: list[str], trusted: tuple[Network, ...]) -> str:
    """The client's IP: the TCP peer, unless the peer is a trusted proxy.

    Behind trusted proxies, X-Forwarded-For is read right to left and the first hop that is not a
    trusted proxy is the client (hops added by the client itself sit further left and are ignored).
    A malformed hop stops the walk at the last trusted proxy seen.
    """
    if not trusted or not _in_networks(peer, trusted):
        return peer
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    current = peer
    for hop in reversed(hops):
        try:
            ip = ipaddress.ip_address(hop)
        except ValueError:
            return current
        current = str(ip)
        if not _in_networks(current, trusted):
            return current
    return current


def _in_networks(addr: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def anonymous_principal(conn: Connection, request_id: str) -> principal_pb2.Principal:
    """What a public route (interactive login) forwards: where the request came from, nobody yet."""
    return principal_pb2.Principal(
        client_address=conn.client_address,
        user_agent=conn.user_agent,
        tls_version=conn.tls_version,
        tls_cipher=conn.tls_cipher,
        request_id=request_id,
    )


def build_principal(identity: Identity, conn: Connection, request_id: str) -> principal_pb2.Principal:
    p = principal_pb2.Principal(
        account_id=identity.account_id,
        user_id=identity.user_id,
        api_username=identity.api_username,
        auth_method=identity.auth_method,  # type: ignore[arg-type]
        api_key_id=identity.api_key_id,
        session_id=identity.session_id,
        permissions=sorted(identity.permissions),
        client_address=conn.client_address,
        user_agent=conn.user_agent,
        tls_version=conn.tls_version,
        tls_cipher=conn.tls_cipher,
        request_id=request_id,
        test_mode=identity.test_mode,
        staff=identity.staff,
        sms_deidentify_message=identity.sms_deidentify_message,
    )
    if identity.mfa_time is not None:
        p.mfa_time.CopyFrom(identity.mfa_time)
    if identity.send_limits is not None:
        p.send_limits.CopyFrom(identity.send_limits)
    return p
