"""svckit.webhooks: the one outbound-webhook URL policy and the Standard Webhooks signatures, the latter
checked with the spec's own Python library (`standardwebhooks`), not with our code."""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from svckit import webhooks as w

REFUSED_ADDRESSES = [
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1 (is_global is True for it)
    "64:ff9b::808:808",  # NAT64 as a whole: the platform's own NAT64 gateway is not the internet
    "64:ff9b:1::a00:1",
    "2002:a00:1::1",  # 6to4 of 10.0.0.1 (is_global is True for it)
    "2002:808:808::1",  # 6to4 as a whole
    "::127.0.0.1",  # IPv4-compatible loopback
    "::a00:1",
    "::ffff:10.0.0.1",  # IPv4-mapped
    "::ffff:8.8.8.8",
    "::ffff:0:a00:1",  # IPv4-translated
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo (embeds 10.0.0.1 as the client)
    "100.64.0.1",  # CGNAT (is_private is False for it)
    "169.254.169.254",  # cloud metadata
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "0.0.0.0", "255.255.255.255",  # noqa: S104
    "192.0.0.8", "192.0.2.1", "198.18.0.1", "198.51.100.7", "203.0.113.9", "224.0.0.1", "240.0.0.1",
    "::", "::1", "fe80::1", "fe80::1%eth0", "fc00::1", "fd12:3456::1", "fec0::1", "ff02::1", "2001:db8::1",
    "100::1", "100.100.100.200", "2002:c0a8:101::1", "64:ff9b::7f00:1", "not-an-address",
]


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not w.address_allowed(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "2a00:1450:4001::1"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert w.address_allowed(address)


def test_the_test_escape_hatch_admits_loopback_and_private_receivers_only() -> None:
    for ok in ("127.0.0.1", "::1", "10.0.0.1", "192.168.5.5", "fd00::5"):
        assert w.address_allowed(ok, allow_private=True)
    for still_refused in ("169.254.169.254", "100.64.0.1", "224.0.0.1", "0.0.0.0", "::ffff:127.0.0.1",  # noqa: S104
                          "64:ff9b::a00:1", "2002:a00:1::1", "::127.0.0.1", "fe80::1"):
        assert not w.address_allowed(still_refused, allow_private=True), still_refused


@pytest.mark.parametrize("url", [
    "http://hooks.example.com/x",  # not https
    "ftp://hooks.example.com/x",
    "https://hooks.example.com:22/x", "https://hooks.example.com:80/x", "https://hooks.example.com:8443/x",
    "https://user:pw@hooks.example.com/x", "https://user@hooks.example.com/x",
    "https://hooks.example.com/x#frag",
    "https://127.0.0.1:22/", "https://10.0.0.1/siem", "https://[64:ff9b::a00:1]/", "https://[2002:a00:1::1]/",
    "https://[::127.0.0.1]/", "https://[::ffff:10.0.0.1]/", "https://100.64.0.1/", "https://169.254.169.254/",
    "https://localhost/", "https://db.svc/", "https://printer.local/", "https://metadata.google.internal/",
    "https://intranet/", "https://hooks.example.com/" + "a" * w.MAX_URL, "https://hooks.example.com/a b",
    "https://hooks.example.com:99999/", "https://[::1/", "https://", "https://[::1]/h",
])
def test_urls_refused_by_the_policy(url: str) -> None:
    with pytest.raises(w.InvalidWebhookUrl) as err:
        w.parse_url(url)
    assert err.value.reason == "INVALID_WEBHOOK_URL" and err.value.code == "INVALID_ARGUMENT"
    assert err.value.message.endswith(".")  # a sentence a person can act on


def test_urls_are_normalised() -> None:
    t = w.parse_url("  https://Hooks.Example.COM:443/in?x=1 ")
    assert (t.host, t.port, t.path, t.url) == ("hooks.example.com", 443, "/in?x=1", "https://hooks.example.com/in?x=1")
    assert w.parse_url("https://bücher.example/h").host == "xn--bcher-kva.example"  # IDNA
    assert w.parse_url("https://[2606:4700:4700::1111]/").url == "https://[2606:4700:4700::1111]/"
    assert w.parse_url("https://localhost:8443/h", allow_private=True).url == "https://localhost:8443/h"
    with pytest.raises(w.InvalidWebhookUrl, match="port 443, not 8443"):
        w.parse_url("https://hooks.example.com:8443/h")


def _resolver(answers: dict[str, list[str]]) -> w.Resolve:
    async def resolve(host: str, port: int) -> list[tuple[socket.AddressFamily, str]]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "not found")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, a) for a in answers[host]]
    return resolve


async def test_every_resolved_address_must_be_public() -> None:
    dns = _resolver({"hooks.example.com": ["93.184.216.34", "2606:4700:4700::1111"],
                     "half.example.com": ["93.184.216.34", "10.0.0.1"],  # one private answer is enough
                     "nat64.example.com": ["64:ff9b::a00:1"], "empty.example.com": []})
    assert await w.check_destination("https://hooks.example.com/x", resolve=dns) == "https://hooks.example.com/x"
    for host in ("half", "nat64"):
        with pytest.raises(w.InvalidWebhookUrl, match="public"):
            await w.check_destination(f"https://{host}.example.com/x", resolve=dns)
    for host in ("missing", "empty"):
        with pytest.raises(w.InvalidWebhookUrl, match="does not resolve"):
            await w.check_destination(f"https://{host}.example.com/x", resolve=dns)


async def test_the_system_resolver_answers_localhost_with_loopback_which_is_refused() -> None:
    assert {a for _, a in await w.system_resolve("localhost", 443)} <= {"127.0.0.1", "::1"}
    with pytest.raises(w.InvalidWebhookUrl):
        await w.check_destination("https://localhost/")
    assert await w.check_destination("https://localhost:9/x", allow_private=True) == "https://localhost:9/x"


# -- signatures -------------------------------------------------------------------------------------------


def test_signatures_verify_with_the_standardwebhooks_library() -> None:
    secret = w.new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    body = '{"type":"sms.receipt","data":{"x":"é"}}'.encode()
    now = int(time.time())
    headers = w.signed_headers([secret], "msg_42", now, body)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, headers) == {"type": "sms.receipt", "data": {"x": "é"}}
    # The library's own signature of the same message is ours, byte for byte.
    lib = Webhook(secret).sign("msg_42", datetime.fromtimestamp(now, UTC), body.decode())
    assert headers["webhook-signature"] == lib
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)
    with pytest.raises(WebhookVerificationError):  # the id is signed too
        Webhook(secret).verify(body, {**headers, "webhook-id": "msg_43"})
    with pytest.raises(WebhookVerificationError):
        Webhook(w.new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(body, w.signed_headers([secret], "msg_42", now - 301, body))
    with pytest.raises(ValueError):
        w.signed_headers([secret], "msg.42", now, body)


def test_rotation_overlap_sends_both_signatures_and_either_secret_verifies() -> None:
    old, new = w.new_secret(), w.new_secret()
    body = b'{"a":1}'
    headers = w.signed_headers([new, old], "alert_7", int(time.time()), body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert Webhook(old).verify(body, headers) == Webhook(new).verify(body, headers) == {"a": 1}


def test_secrets_issued_before_standard_webhooks_keep_their_key() -> None:
    # Messaging issued "whsec_" + URL-safe base64 without padding: the key is the bytes it encodes, and the
    # same key in the standard alphabet (what the libraries expect) verifies.
    raw = bytes(range(200, 232))  # encodes with '-' and '_' in the URL-safe alphabet
    legacy = "whsec_" + base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert "-" in legacy or "_" in legacy
    assert w.secret_key(legacy) == raw
    body = b'{"b":2}'
    headers = w.signed_headers([legacy], "msg_1", int(time.time()), body)
    assert Webhook("whsec_" + base64.b64encode(raw).decode()).verify(body, headers) == {"b": 2}
    # Audit's derived secrets ("whsec_" + 64 hex digits) are valid base64 already: libraries take them as is.
    audit = "whsec_" + hashlib.sha256(b"x").hexdigest()
    assert Webhook(audit).verify(body, w.signed_headers([audit], "alert_1", int(time.time()), body)) == {"b": 2}
    mac = hmac.new(base64.b64decode(audit[6:]), b"alert_1.1.{}", hashlib.sha256).digest()
    assert w.sign(audit, "alert_1", 1, b"{}") == "v1," + base64.b64encode(mac).decode()
    with pytest.raises(ValueError):
        w.secret_key("whsec_")
