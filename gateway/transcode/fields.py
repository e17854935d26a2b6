"""What the transcoder knows about one protobuf field: its JSON key (`wire_name`), the integers it accepts
(type limits narrowed by `(sendsafe.options.v1.range)`), the well-known types, the words errors use for its
type, and `TranscodeError`."""

from __future__ import annotations

from functools import cache
from typing import Any

from google.protobuf import descriptor, message, message_factory

from sendsafe.options.v1 import options_pb2

FD = descriptor.FieldDescriptor


class TranscodeError(Exception):
    """A request that cannot become the RPC's input message. `reason` is UPPER_SNAKE."""

    def __init__(self, message: str, *, reason: str = "INVALID_FIELD_VALUE", field: str = "", status: int = 400):
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.field = field
        self.status = status


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------

INT_RANGES: dict[int, tuple[int, int]] = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
}
FLOAT32_MAX = 3.4028234663852886e38
# google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
MIN_SECONDS = -62135596800
MAX_SECONDS = 253402300799

TIMESTAMP = "google.protobuf.Timestamp"
DURATION = "google.protobuf.Duration"
FIELD_MASK = "google.protobuf.FieldMask"
STRUCTLIKE = frozenset({"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"})
WRAPPERS = frozenset(
    f"google.protobuf.{n}Value"
    for n in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)
# Message types that read as one JSON scalar (usable in query strings and path templates).
SCALAR_MESSAGES = frozenset({TIMESTAMP, DURATION, FIELD_MASK}) | WRAPPERS


def wire_name(field: descriptor.FieldDescriptor) -> str:
    """The JSON key of `field` on the external surface."""
    opts = field.GetOptions()
    if opts.HasExtension(options_pb2.wire_name):
        name: str = opts.Extensions[options_pb2.wire_name]
        if name:
            return name
    return field.name


@cache
def message_class(desc: descriptor.Descriptor) -> type[message.Message]:
    return message_factory.GetMessageClass(desc)


@cache
def int_bounds(field: descriptor.FieldDescriptor) -> tuple[int, int]:
    """The values integer `field` accepts: its type's limits narrowed by its declared range option."""
    lo, hi = INT_RANGES[field.type]
    opts = field.GetOptions()
    if opts.HasExtension(options_pb2.range):
        declared = opts.Extensions[options_pb2.range]
        if declared.HasField("min"):
            lo = max(lo, declared.min)
        if declared.HasField("max"):
            hi = min(hi, declared.max)
    return lo, hi


def out_of_range(path: str, lo: int, hi: int, what: str = "Field") -> TranscodeError:
    return TranscodeError(
        f"{what} '{path}' must be between {lo} and {hi}.", reason="PARAMETER_OUT_OF_RANGE", field=path
    )


def message_of(field: descriptor.FieldDescriptor) -> descriptor.Descriptor:
    desc = field.message_type
    assert desc is not None, field.full_name
    return desc


def enum_of(field: descriptor.FieldDescriptor) -> descriptor.EnumDescriptor:
    desc = field.enum_type
    assert desc is not None, field.full_name
    return desc


def is_map(field: descriptor.FieldDescriptor) -> bool:
    return (
        field.is_repeated
        and field.type == FD.TYPE_MESSAGE
        and message_of(field).GetOptions().map_entry
    )


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def type_label(field: descriptor.FieldDescriptor) -> str:
    t = field.type
    if t in INT_RANGES:
        return "an integer"
    if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return "a number"
    if t == FD.TYPE_BOOL:
        return "a boolean"
    if t == FD.TYPE_STRING:
        return "a string"
    if t == FD.TYPE_BYTES:
        return "a base64 string"
    if t == FD.TYPE_ENUM:
        return "one of " + ", ".join(v.name for v in enum_of(field).values)
    return "an object"
