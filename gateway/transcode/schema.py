"""JSON Schema (draft 2020-12, the dialect of OpenAPI 3.1) of the JSON this package reads and writes for a message
on one surface, following the rules in `gateway.transcode`: keys are wire names, integers are JSON integers within
the field's bounds, enums their names, Timestamps unix seconds on `/v3` and RFC 3339 on `/v1`, fields with
explicit presence null when unset, every other key always present in answers, unknown keys refused in requests.

`Schemas` collects one component per message and surface; a message whose JSON is the same on both surfaces
(nothing in it is a Timestamp) has one component named by its full proto name, one that differs has one per
surface (`<full name>-v1`, `<full name>-v3`).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from google.protobuf import descriptor

from gateway.surface import Surface
from gateway.transcode.fields import (
    DURATION,
    FD,
    FIELD_MASK,
    INT_RANGES,
    STRUCTLIKE,
    TIMESTAMP,
    WRAPPERS,
    enum_of,
    int_bounds,
    is_map,
    message_of,
    wire_name,
)
from sendsafe.options.v1 import options_pb2

Schema = dict[str, Any]
COMPONENTS = "#/components/schemas/"
_INT_FORMATS = {
    FD.TYPE_INT32: "int32", FD.TYPE_SINT32: "int32", FD.TYPE_SFIXED32: "int32",
    FD.TYPE_INT64: "int64", FD.TYPE_SINT64: "int64", FD.TYPE_SFIXED64: "int64",
    FD.TYPE_UINT32: "uint32", FD.TYPE_FIXED32: "uint32", FD.TYPE_UINT64: "uint64", FD.TYPE_FIXED64: "uint64",
}
_SUFFIX = {Surface.V1: "-v1", Surface.CLICKSEND: "-v3"}


@cache
def surface_dependent(desc: descriptor.Descriptor) -> bool:
    """Whether `desc`'s JSON differs between the surfaces (it holds a Timestamp somewhere)."""
    return _holds_timestamp(desc, frozenset())


def _holds_timestamp(desc: descriptor.Descriptor, seen: frozenset[str]) -> bool:
    if desc.full_name == TIMESTAMP:
        return True
    if desc.full_name in seen:
        return False
    seen = seen | {desc.full_name}
    return any(f.type == FD.TYPE_MESSAGE and _holds_timestamp(message_of(f), seen) for f in desc.fields)


def nullable(schema: Schema) -> Schema:
    """`schema` or JSON null."""
    if "$ref" in schema or "type" not in schema:
        outer = {k: v for k, v in schema.items() if k == "description"}
        inner = {k: v for k, v in schema.items() if k != "description"}
        return {"anyOf": [inner, {"type": "null"}], **outer}
    out = dict(schema)
    out["type"] = [schema["type"], "null"] if isinstance(schema["type"], str) else [*schema["type"], "null"]
    if "enum" in out:
        out["enum"] = [*out["enum"], None]
    return out


class Schemas:
    """The components gathered while describing messages (`ref`) and fields (`field`, `value`)."""

    def __init__(self, comments: Mapping[str, str] | None = None) -> None:
        self.components: dict[str, Schema] = {}
        self._comments = comments or {}

    def comment(self, full_name: str) -> str:
        return self._comments.get(full_name, "")

    def name(self, desc: descriptor.Descriptor, surface: Surface) -> str:
        return desc.full_name + (_SUFFIX[surface] if surface_dependent(desc) else "")

    def ref(self, desc: descriptor.Descriptor, surface: Surface) -> Schema:
        """A `$ref` to the component of `desc` on `surface`, added (with everything it refers to) when new."""
        name = self.name(desc, surface)
        if name not in self.components:
            self.components[name] = {}  # a message may contain itself
            self.components[name] = self._message(desc, surface)
        return {"$ref": COMPONENTS + name}

    def _message(self, desc: descriptor.Descriptor, surface: Surface) -> Schema:
        props = {wire_name(f): self.field(f, surface) for f in desc.fields}
        schema: Schema = {"type": "object", "properties": props, "additionalProperties": False}
        oneofs = [o for o in desc.oneofs if len(o.fields) > 1]  # not proto3 `optional`'s synthetic oneofs
        notes = [self.comment(desc.full_name)]
        for o in oneofs:
            notes.append("At most one of " + ", ".join(f"`{wire_name(f)}`" for f in o.fields) + " is set.")
        text = "\n\n".join(n for n in notes if n)
        if text:
            schema["description"] = text
        return schema

    def field(self, field: descriptor.FieldDescriptor, surface: Surface) -> Schema:
        """The JSON value of `field` as a key of its message: a list, an object for a map, null when unset."""
        if is_map(field):
            entry = message_of(field)
            values = self.value(entry.fields_by_name["value"], surface)
            schema: Schema = {"type": "object", "additionalProperties": values}
            key = entry.fields_by_name["key"]
            if key.type in INT_RANGES:
                schema["propertyNames"] = {"pattern": "^-?[0-9]+$"}
        elif field.is_repeated:
            schema = {"type": "array", "items": self.value(field, surface)}
        else:
            schema = self.value(field, surface)
            if field.has_presence:
                schema = nullable(schema)
        text = self.comment(field.full_name)
        if text:
            schema = {**schema, "description": text}
        return schema

    def value(self, field: descriptor.FieldDescriptor, surface: Surface) -> Schema:
        """One value of `field` (an item of a repeated field), never null."""
        t = field.type
        if t in INT_RANGES:
            schema: Schema = {"type": "integer", "format": _INT_FORMATS[t]}
            lo, hi = int_bounds(field)
            if field.GetOptions().HasExtension(options_pb2.range):
                schema.update(minimum=lo, maximum=hi)
            elif lo == 0:
                schema["minimum"] = 0
            return schema
        if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
            return {"type": "number", "format": "double" if t == FD.TYPE_DOUBLE else "float"}
        if t == FD.TYPE_BOOL:
            return {"type": "boolean"}
        if t == FD.TYPE_STRING:
            return {"type": "string"}
        if t == FD.TYPE_BYTES:
            return {"type": "string", "contentEncoding": "base64"}
        if t == FD.TYPE_ENUM:
            return {"type": "string", "enum": [v.name for v in enum_of(field).values]}
        return self._message_value(message_of(field), surface)

    def _message_value(self, desc: descriptor.Descriptor, surface: Surface) -> Schema:
        name = desc.full_name
        if name == TIMESTAMP:
            if surface is Surface.CLICKSEND:
                return {"type": "integer", "format": "int64", "description": "unix seconds"}
            return {"type": "string", "format": "date-time"}
        if name == DURATION:
            return {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$", "description": "seconds, e.g. `1.5s`"}
        if name == FIELD_MASK:
            return {"type": "string", "description": "comma-separated field paths"}
        if name in WRAPPERS:
            return self.value(desc.fields_by_name["value"], surface)
        if name in STRUCTLIKE:
            return {"google.protobuf.Struct": {"type": "object"}, "google.protobuf.ListValue": {"type": "array"}}.get(
                name, {})
        if name == "google.protobuf.Any":
            return {"type": "object"}
        return self.ref(desc, surface)
