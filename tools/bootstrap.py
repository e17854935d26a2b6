"""The demo account `make run` creates on first start, and the credentials it prints.

    python -m tools.bootstrap --identity HOST:PORT --keys HOST:PORT --certs .dev/certs \\
        --out .dev/demo.env --gateway-url https://localhost:8443

Runs as the `ops` service identity (its mTLS certificate under --certs):
- if --out exists and its user still exists in identity, the same credentials are printed again;
- otherwise it creates the account "Demo" with main user `demo` (CreateAccount) -- or, when that user
  already exists (the file was lost), finds it -- issues it an API key (KeysService.IssueApiKey), writes
  --out (mode 0600) with exactly SENDSAFE_URL, SENDSAFE_USERNAME, SENDSAFE_API_KEY and SENDSAFE_CA_CERT,
  and prints the credentials and a curl line that sends an SMS through the gateway.

The key is printed on purpose (a development convenience); it is never logged.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from pathlib import Path

import grpc

from sendsafe.identity.v1 import account_pb2, identity_service_pb2, identity_service_pb2_grpc
from sendsafe.keys.v1 import keys_service_pb2, keys_service_pb2_grpc
from svckit.rpc import secure_channel
from svckit.tls import TlsFiles

URL, USERNAME, API_KEY, CA_CERT = "SENDSAFE_URL", "SENDSAFE_USERNAME", "SENDSAFE_API_KEY", "SENDSAFE_CA_CERT"
ENV_KEYS = (URL, USERNAME, API_KEY, CA_CERT)
DEMO = identity_service_pb2.CreateAccountRequest(
    account_name="Demo",
    api_username="demo",
    email="demo@example.com",
    first_name="Demo",
    last_name="User",
    country="AU",
    test_mode=False,
)
SAMPLE_BODY = '{"messages":[{"to":"+61411111111","body":"Hello from SendSafe"}]}'


def read_env(path: Path) -> dict[str, str]:
    """KEY=value lines (values possibly shell-quoted); {} when the file does not exist."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            parts = shlex.split(value)
        except ValueError:
            continue
        out[key.strip()] = parts[0] if parts else ""
    return out


def write_env(path: Path, values: dict[str, str]) -> None:
    """Write atomically, readable by the owner only (it holds an API key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, "".join(f"{k}={shlex.quote(values[k])}\n" for k in ENV_KEYS).encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def curl_line(creds: dict[str, str]) -> str:
    return (
        f"curl --cacert {shlex.quote(creds[CA_CERT])} -u {shlex.quote(creds[USERNAME] + ':' + creds[API_KEY])}"
        f" -H 'Content-Type: application/json' -d '{SAMPLE_BODY}' {creds[URL]}/v3/sms/send"
    )


def announce(creds: dict[str, str], out: Path, *, fresh: bool) -> None:
    state = "a new API key" if fresh else "the existing credentials"
    print(f"\nDemo account ready with {state}, saved in {out.resolve()}:")
    for key in ENV_KEYS:
        print(f"  {key}={creds[key]}")
    print("\nSend an SMS:\n" + curl_line(creds), flush=True)


async def _find_user(stub: identity_service_pb2_grpc.IdentityServiceStub, username: str) -> account_pb2.User | None:
    try:
        resp = await stub.GetUser(identity_service_pb2.GetUserRequest(api_username=username), wait_for_ready=True)
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    return resp.user


async def _demo_user(stub: identity_service_pb2_grpc.IdentityServiceStub) -> account_pb2.User:
    """The demo account's main user: created now, or the one already there."""
    try:
        return (await stub.CreateAccount(DEMO, wait_for_ready=True)).user
    except grpc.aio.AioRpcError as err:
        if err.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
    user = await _find_user(stub, DEMO.api_username)
    if user is None:  # deleted between the two calls
        raise RuntimeError("the demo user exists and does not; run the bootstrap again")
    return user


async def bootstrap(
    *,
    identity: str,
    keys: str,
    certs: Path | str,
    out: Path | str,
    gateway_url: str = "https://localhost:8443",
    timeout: float = 15.0,
    announce_to_stdout: bool = True,
) -> dict[str, str]:
    """Ensure the demo account and a working API key; return the four SENDSAFE_* values."""
    certs, out = Path(certs), Path(out)
    tls = TlsFiles(certs / "ops.crt", certs / "ops.key", certs / "internal-ca.crt")
    ca = str((certs / "public-ca.crt").resolve())
    url = gateway_url.rstrip("/")
    previous = read_env(out)
    async with (
        secure_channel(identity, tls, server_name="identity", timeout=timeout) as identity_channel,
        secure_channel(keys, tls, server_name="keys", timeout=timeout) as keys_channel,
    ):
        ids = identity_service_pb2_grpc.IdentityServiceStub(identity_channel)
        if previous.get(USERNAME) and previous.get(API_KEY):
            user = await _find_user(ids, previous[USERNAME])
            if user is not None and user.active:
                creds = {URL: url, USERNAME: previous[USERNAME], API_KEY: previous[API_KEY], CA_CERT: ca}
                if {k: previous.get(k) for k in ENV_KEYS} != creds:
                    write_env(out, creds)
                if announce_to_stdout:
                    announce(creds, out, fresh=False)
                return creds
        user = await _demo_user(ids)
        if not user.active:
            raise RuntimeError(f"the demo user {user.api_username!r} is disabled; a new key would not work")
        issued = await keys_service_pb2_grpc.KeysServiceStub(keys_channel).IssueApiKey(
            keys_service_pb2.IssueApiKeyRequest(
                account_id=user.account_id, user_id=user.user_id, name="demo", test_mode=user.test_mode
            ),
            wait_for_ready=True,
        )
    creds = {URL: url, USERNAME: user.api_username, API_KEY: issued.api_key, CA_CERT: ca}
    write_env(out, creds)
    if announce_to_stdout:
        announce(creds, out, fresh=True)
    return creds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bootstrap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--identity", required=True, help="identity service host:port")
    parser.add_argument("--keys", required=True, help="keys service host:port")
    parser.add_argument("--certs", required=True, type=Path, help="folder with ops.crt/.key, internal-ca.crt")
    parser.add_argument("--out", type=Path, default=Path(".dev/demo.env"))
    parser.add_argument("--gateway-url", default="https://localhost:8443")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds per call")
    args = parser.parse_args(argv)
    try:
        asyncio.run(
            bootstrap(
                identity=args.identity,
                keys=args.keys,
                certs=args.certs,
                out=args.out,
                gateway_url=args.gateway_url,
                timeout=args.timeout,
            )
        )
    except grpc.aio.AioRpcError as err:
        print(f"bootstrap failed: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    except RuntimeError as err:
        print(f"bootstrap failed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
