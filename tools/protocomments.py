"""The protos' comments as JSON, for what is generated from the descriptors at run time (the OpenAPI document).

    python -m tools.protocomments DESCRIPTOR_SET OUT.json

Generated `*_pb2` modules carry no comments (protoc leaves source info out of them), so `tools/genprotos.sh`
asks protoc for a descriptor set with source info and this writes the leading comment of every service,
method, message, field, enum and enum value, keyed by its full proto name
(`sendsafe.messaging.v1.MessagingService.SendSms`, `sendsafe.messaging.v1.SendSmsRequest.messages`), to
`gen/python/sendsafe/proto_comments.json` (read by `gateway.openapi`). Trailing comments are used when there is
no leading one. Only `sendsafe.*` files are kept.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

# FileDescriptorProto / DescriptorProto / ServiceDescriptorProto / EnumDescriptorProto field numbers.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MSG_FIELD, _MSG_NESTED, _MSG_ENUM = 2, 3, 4
_SERVICE_METHOD = 2
_ENUM_VALUE = 2


def _clean(text: str) -> str:
    lines = [line.strip() for line in text.strip("\n").splitlines()]
    return "\n".join(lines).strip()


def _names(fd: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    """Source-info path -> full name of every element that can carry a comment."""
    out: dict[tuple[int, ...], str] = {}
    pkg = fd.package

    def enum(path: tuple[int, ...], e: descriptor_pb2.EnumDescriptorProto, prefix: str) -> None:
        name = f"{prefix}.{e.name}"
        out[path] = name
        for i, v in enumerate(e.value):
            out[(*path, _ENUM_VALUE, i)] = f"{name}.{v.name}"

    def message(path: tuple[int, ...], m: descriptor_pb2.DescriptorProto, prefix: str) -> None:
        name = f"{prefix}.{m.name}"
        out[path] = name
        for i, f in enumerate(m.field):
            out[(*path, _MSG_FIELD, i)] = f"{name}.{f.name}"
        for i, n in enumerate(m.nested_type):
            message((*path, _MSG_NESTED, i), n, name)
        for i, e in enumerate(m.enum_type):
            enum((*path, _MSG_ENUM, i), e, name)

    for i, m in enumerate(fd.message_type):
        message((_FILE_MESSAGE, i), m, pkg)
    for i, e in enumerate(fd.enum_type):
        enum((_FILE_ENUM, i), e, pkg)
    for i, s in enumerate(fd.service):
        out[(_FILE_SERVICE, i)] = f"{pkg}.{s.name}"
        for j, method in enumerate(s.method):
            out[(_FILE_SERVICE, i, _SERVICE_METHOD, j)] = f"{pkg}.{s.name}.{method.name}"
    return out


def comments(descriptor_set: descriptor_pb2.FileDescriptorSet) -> dict[str, str]:
    found: dict[str, str] = {}
    for fd in descriptor_set.file:
        if not fd.package.startswith("sendsafe."):
            continue
        names = _names(fd)
        for loc in fd.source_code_info.location:
            name = names.get(tuple(loc.path))
            text = _clean(loc.leading_comments or loc.trailing_comments)
            if name and text:
                found[name] = text
    return dict(sorted(found.items()))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    fds = descriptor_pb2.FileDescriptorSet.FromString(Path(args[0]).read_bytes())
    Path(args[1]).write_text(json.dumps(comments(fds), indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
