"""The HTTP route table, built from the services' descriptors.

Every RPC of `sendsafe.{identity,keys,messaging,audit}.v1.*_service_pb2` that carries a
`google.api.http` binding becomes a route; RPCs without one (internal RPCs) are unreachable from
outside by construction. The route knows everything the gateway needs to serve it generically:
input/output message descriptors, the gRPC method path, the backend service, the permission the
principal must hold (`sendsafe.options.v1.access`) -- or that it is public (interactive login: no
credentials, no permission) -- and the ClickSend envelope text (`sendsafe.options.v1.envelope`). A
server-streaming RPC returning `google.api.HttpBody` is a streamed route (`gateway.streaming`). A new
RPC with an http binding needs no gateway code.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import ModuleType

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor

from gateway.surface import Surface
from sendsafe.options.v1 import options_pb2

SERVICE_PACKAGES: tuple[str, ...] = (
    "sendsafe.identity.v1",
    "sendsafe.keys.v1",
    "sendsafe.messaging.v1",
    "sendsafe.audit.v1",
)
GATEWAY_CALLER = "gateway"
DEFAULT_RESPONSE_MSG = "Success"
HTTP_BODY = "google.api.HttpBody"  # what a server-streaming route returns, chunk by chunk

_VAR_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)(?:=([^{}]*))?\}")


class RouteError(Exception):
    """The descriptors declare something the gateway cannot (or must not) serve."""


@dataclass(frozen=True)
class Route:
    http_method: str  # "GET", "POST", ...
    template: str  # as declared: "/v3/sms/{message_id}/cancel"
    aiohttp_path: str  # the same for aiohttp's router
    path_vars: dict[str, str] = field(hash=False)  # aiohttp variable -> (dotted) field name
    body: str  # http rule body: "*", a field name, or ""
    service: str  # backend: the second part of the proto package ("messaging")
    rpc_path: str  # "/sendsafe.messaging.v1.MessagingService/SendSms"
    rpc_name: str  # "SendSms"
    input_desc: descriptor.Descriptor = field(hash=False, compare=False)
    output_desc: descriptor.Descriptor = field(hash=False, compare=False)
    permission: str  # "" only for public routes
    privileged: bool
    surface: Surface
    response_msg: str  # ClickSend envelope text on success
    data_field: str  # "" whole message, "-" null, else the field that becomes `data`
    public: bool = False  # reachable without credentials
    streaming: bool = False  # server-streaming google.api.HttpBody: the body is streamed as it comes (a download)
    bare: bool = False  # /v3 answer without the envelope (ClickSend's newer resources: the model is the body)
    coalesce: bool = False  # concurrent calls travel together to the service (svckit.batching)

    @property
    def key(self) -> str:
        return f"{self.http_method} {self.template}"

    @property
    def upload(self) -> bool:
        """The http rule's body is a google.api.HttpBody field: the raw request body of any content type goes
        into it as is (an upload, e.g. a CSV file), bounded by the body-size cap like every body."""
        f = self.input_desc.fields_by_name.get(self.body) if self.body not in ("", "*") else None
        return f is not None and f.message_type is not None and f.message_type.full_name == HTTP_BODY


def service_modules(packages: Iterable[str] = SERVICE_PACKAGES) -> list[ModuleType]:
    """Every `*_service_pb2` module of the given packages."""
    modules: list[ModuleType] = []
    for pkg_name in packages:
        pkg = importlib.import_module(pkg_name)
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
            if info.name.endswith("_service_pb2"):
                modules.append(importlib.import_module(f"{pkg_name}.{info.name}"))
    return modules


def discover_routes(packages: Iterable[str] = SERVICE_PACKAGES) -> list[Route]:
    """All routes declared by the services' descriptors; raises RouteError listing every problem."""
    routes: list[Route] = []
    problems: list[str] = []
    for module in service_modules(packages):
        file_desc: descriptor.FileDescriptor = module.DESCRIPTOR
        for service in file_desc.services_by_name.values():
            for method in service.methods:
                opts = method.GetOptions()
                if not opts.HasExtension(annotations_pb2.http):
                    continue
                rule = opts.Extensions[annotations_pb2.http]
                for binding in [rule, *rule.additional_bindings]:
                    try:
                        routes.append(_route(method, binding))
                    except RouteError as exc:
                        problems.append(str(exc))
    seen: dict[tuple[str, str], str] = {}
    for r in routes:
        k = (r.http_method, r.aiohttp_path)
        if k in seen:
            problems.append(f"{r.rpc_path}: {r.key} is already bound to {seen[k]}")
        seen[k] = r.rpc_path
    if problems:
        raise RouteError("; ".join(problems))
    return routes


def _route(method: descriptor.MethodDescriptor, rule: http_pb2.HttpRule) -> Route:
    where = f"/{method.containing_service.full_name}/{method.name}"
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise RouteError(f"{where}: http rule without a pattern")
    if kind == "custom":
        http_method, template = rule.custom.kind.upper(), rule.custom.path
    else:
        http_method, template = kind.upper(), getattr(rule, kind)
    if not template.startswith("/"):
        raise RouteError(f"{where}: path {template!r} must start with '/'")

    opts = method.GetOptions()
    if not opts.HasExtension(options_pb2.access):
        raise RouteError(f"{where}: has an http binding but no (sendsafe.options.v1.access) option")
    access = opts.Extensions[options_pb2.access]
    if GATEWAY_CALLER not in access.allowed_callers:
        raise RouteError(f"{where}: has an http binding but does not allow the gateway as caller")
    if access.public and access.permission:
        raise RouteError(f"{where}: is public but declares a permission")
    if not access.permission and not access.public:
        raise RouteError(f"{where}: has an http binding but declares no permission (and is not public)")
    envelope = opts.Extensions[options_pb2.envelope]

    input_desc, output_desc = method.input_type, method.output_type
    if method.client_streaming:
        raise RouteError(f"{where}: client-streaming RPCs cannot be bound to HTTP")
    if method.server_streaming and output_desc.full_name != HTTP_BODY:
        raise RouteError(f"{where}: a server-streaming RPC bound to HTTP must return {HTTP_BODY}")
    aiohttp_path, path_vars = _aiohttp_path(template, where)
    for dotted in path_vars.values():
        if not _field_exists(input_desc, dotted):
            raise RouteError(f"{where}: path variable {dotted!r} is not a field of {input_desc.full_name}")
    body = rule.body
    if body not in ("", "*") and body not in input_desc.fields_by_name:
        raise RouteError(f"{where}: body {body!r} is not a field of {input_desc.full_name}")
    data_field = envelope.data_field
    if data_field not in ("", "-") and data_field not in output_desc.fields_by_name:
        raise RouteError(f"{where}: envelope data_field {data_field!r} is not a field of {output_desc.full_name}")

    return Route(
        http_method=http_method,
        template=template,
        aiohttp_path=aiohttp_path,
        path_vars=path_vars,
        body=body,
        service=method.containing_service.file.package.split(".")[1],
        rpc_path=where,
        rpc_name=method.name,
        input_desc=input_desc,
        output_desc=output_desc,
        permission=access.permission,
        privileged=access.privileged,
        surface=Surface.for_path(template),
        response_msg=envelope.response_msg or DEFAULT_RESPONSE_MSG,
        data_field=data_field,
        public=access.public,
        streaming=method.server_streaming,
        bare=envelope.bare,
        coalesce=access.coalesce,
    )


def _aiohttp_path(template: str, where: str) -> tuple[str, dict[str, str]]:
    """`/v1/things/{thing.id}` -> (`/v1/things/{thing__id}`, {"thing__id": "thing.id"})."""
    path_vars: dict[str, str] = {}

    def repl(m: re.Match[str]) -> str:
        dotted, pattern = m.group(1), m.group(2)
        var = dotted.replace(".", "__")
        if var in path_vars:
            raise RouteError(f"{where}: path variable {dotted!r} used twice")
        path_vars[var] = dotted
        if pattern in (None, "*"):
            return "{" + var + "}"
        if pattern == "**":
            return "{" + var + ":.+}"
        raise RouteError(f"{where}: path pattern {{{dotted}={pattern}}} is not supported")

    path = _VAR_RE.sub(repl, template)
    if any(c in _VAR_RE.sub("", template) for c in "{}"):
        raise RouteError(f"{where}: malformed path template {template!r}")
    return path, path_vars


def _field_exists(desc: descriptor.Descriptor, dotted: str) -> bool:
    current: descriptor.Descriptor | None = desc
    for part in dotted.split("."):
        if current is None or part not in current.fields_by_name:
            return False
        f = current.fields_by_name[part]
        current = f.message_type if f.type == descriptor.FieldDescriptor.TYPE_MESSAGE else None
    return True
