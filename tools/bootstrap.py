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

In a cluster (the ops-bootstrap Job) it runs with `--to-secret NAME` instead: --certs is the mounted
cert-manager Secret (tls.crt, tls.key, ca.crt), and the credentials (SENDSAFE_URL, SENDSAFE_USERNAME,
SENDSAFE_API_KEY) go into the Kubernetes Secret NAME of the pod's namespace (tools.kube_secret), never to
stdout or a file: pod logs outlive the key's secrecy, and the root filesystem is read-only. A re-run keeps a
Secret whose user is still active; the operator reads the key once and deletes the Secret (docs/runbook.md).
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
from tools.keyadmin import ops_tls
from tools.kube_secret import InCluster, KubeApiError

URL, USERNAME, API_KEY, CA_CERT = "SENDSAFE_URL", "SENDSAFE_USERNAME", "SENDSAFE_API_KEY", "SENDSAFE_CA_CERT"
ENV_KEYS = (URL, USERNAME, API_KEY, CA_CERT)
SECRET_KEYS = (URL, USERNAME, API_KEY)
KUBE_SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
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


async def _credentials(
    identity: str, keys: str, tls: TlsFiles, previous: dict[str, str], timeout: float
) -> tuple[str, str, bool]:
    """(username, API key, fresh): the previous ones while their user exists and is active, else the demo
    account's main user (created or found) with a newly issued key."""
    async with (
        secure_channel(identity, tls, server_name="identity", timeout=timeout) as identity_channel,
        secure_channel(keys, tls, server_name="keys", timeout=timeout) as keys_channel,
    ):
        ids = identity_service_pb2_grpc.IdentityServiceStub(identity_channel)
        if previous.get(USERNAME) and previous.get(API_KEY):
            user = await _find_user(ids, previous[USERNAME])
            if user is not None and user.active:
                return previous[USERNAME], previous[API_KEY], False
        user = await _demo_user(ids)
        if not user.active:
            raise RuntimeError(f"the demo user {user.api_username!r} is disabled; a new key would not work")
        issued = await keys_service_pb2_grpc.KeysServiceStub(keys_channel).IssueApiKey(
            keys_service_pb2.IssueApiKeyRequest(
                account_id=user.account_id, user_id=user.user_id, name="demo", test_mode=user.test_mode
            ),
            wait_for_ready=True,
        )
    return user.api_username, issued.api_key, True


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
    ca = str((certs / "public-ca.crt").resolve())
    previous = read_env(out)
    username, api_key, fresh = await _credentials(identity, keys, ops_tls(certs), previous, timeout)
    creds = {URL: gateway_url.rstrip("/"), USERNAME: username, API_KEY: api_key, CA_CERT: ca}
    if fresh or {k: previous.get(k) for k in ENV_KEYS} != creds:
        write_env(out, creds)
    if announce_to_stdout:
        announce(creds, out, fresh=fresh)
    return creds


async def bootstrap_to_secret(
    *,
    identity: str,
    keys: str,
    certs: Path | str,
    api: InCluster,
    secret: str,
    gateway_url: str,
    timeout: float = 15.0,
) -> str:
    """Ensure the first account and an API key held in Secret `secret`; print and return only the username."""
    previous = api.get_secret(secret) or {}
    username, api_key, fresh = await _credentials(identity, keys, ops_tls(Path(certs)), previous, timeout)
    creds = {URL: gateway_url.rstrip("/"), USERNAME: username, API_KEY: api_key}
    if fresh or {k: previous.get(k) for k in SECRET_KEYS} != creds:
        api.put_secret(secret, creds, {"app.kubernetes.io/part-of": "sendsafe", "sendsafe.io/handover": "bootstrap"})
    state = "a new API key" if fresh else "the API key it already had"
    print(
        f"First account ready: user {username}, {state} in Secret {api.namespace}/{secret}.\n"
        "Read the key once, store it where your credentials live, then delete the Secret:\n"
        f"  kubectl -n {api.namespace} get secret {secret} -o jsonpath='{{.data.{API_KEY}}}' | base64 -d\n"
        f"  kubectl -n {api.namespace} delete secret {secret}",
        flush=True,
    )
    return username


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bootstrap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--identity", required=True, help="identity service host:port")
    parser.add_argument("--keys", required=True, help="keys service host:port")
    parser.add_argument("--certs", required=True, type=Path,
                        help="folder with ops.crt/.key and internal-ca.crt, or tls.crt/.key and ca.crt")
    parser.add_argument("--out", type=Path, default=Path(".dev/demo.env"))
    parser.add_argument("--to-secret", metavar="NAME", default="",
                        help="in a pod: hand the credentials over in this Secret (no --out, nothing printed)")
    parser.add_argument("--kube-api", type=Path, default=KUBE_SA_DIR, metavar="DIR",
                        help="with --to-secret: folder holding the API token, ca.crt and namespace")
    parser.add_argument("--gateway-url", default="https://localhost:8443")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds per call")
    args = parser.parse_args(argv)
    try:
        if args.to_secret:
            asyncio.run(bootstrap_to_secret(
                identity=args.identity, keys=args.keys, certs=args.certs, api=InCluster.load(args.kube_api),
                secret=args.to_secret, gateway_url=args.gateway_url, timeout=args.timeout,
            ))
        else:
            asyncio.run(bootstrap(
                identity=args.identity, keys=args.keys, certs=args.certs, out=args.out,
                gateway_url=args.gateway_url, timeout=args.timeout,
            ))
    except grpc.aio.AioRpcError as err:
        print(f"bootstrap failed: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    except (RuntimeError, KubeApiError) as err:
        print(f"bootstrap failed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
