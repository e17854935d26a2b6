"""JSON <-> protobuf, generic over descriptors.

Rules (both surfaces):
- The JSON key of a field is its `(sendsafe.options.v1.wire_name)` option when set, else the proto
  field name. Nothing else is accepted (no camelCase aliases): unknown keys are errors.
- Responses: integer types -> JSON integers (never strings, whatever their width), double/float ->
  numbers (non-finite -> null), bool -> true/false, string -> string, bytes -> base64, enum -> its
  name, nested message -> object, repeated -> list, map -> object. Fields with explicit presence
  (`optional`, message fields, oneof members) are null when unset; every other scalar is always
  present, default values included.
- `google.protobuf.Timestamp` is an RFC 3339 string on `/v1`, unix seconds (int) on the ClickSend
  `/v3` surface (ClickSend's convention for times); Duration/FieldMask use their proto3 JSON strings,
  wrapper types their wrapped value, Struct/Value/ListValue their natural JSON.
- Requests are strict: the JSON type must match the field type (a string where an int is expected is
  an error naming the field), `null` leaves a field unset, duplicate object keys and NaN/Infinity
  literals are rejected as malformed JSON.
- Integers (body, query and path alike) must fit the field's type and its declared
  `(sendsafe.options.v1.range)`, else 400 PARAMETER_OUT_OF_RANGE naming the field and the bounds
  (a path value out of range is a resource that cannot exist: 404).
- Query and path values are parsed to the field's type; dotted names reach into nested messages;
  repeated fields take repeated query keys.

The per-message work is compiled once per (descriptor, surface) into small plans.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from google.protobuf import descriptor, json_format, message, message_factory

from sendsafe.options.v1 import options_pb2

FD = descriptor.FieldDescriptor


class Surface(enum.Enum):
    CLICKSEND = "clicksend"  # /v3/...
    V1 = "v1"  # /v1/... and anything else of our own

    @classmethod
    def for_path(cls, path: str) -> Surface:
        return cls.CLICKSEND if path == "/v3" or path.startswith("/v3/") else cls.V1


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

_INT_RANGES: dict[int, tuple[int, int]] = {
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
_FLOAT32_MAX = 3.4028234663852886e38
# google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
_MIN_SECONDS = -62135596800
_MAX_SECONDS = 253402300799

_TIMESTAMP = "google.protobuf.Timestamp"
_DURATION = "google.protobuf.Duration"
_FIELD_MASK = "google.protobuf.FieldMask"
_STRUCTLIKE = frozenset({"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"})
_WRAPPERS = frozenset(
    f"google.protobuf.{n}Value"
    for n in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)
# Message types that read as one JSON scalar (usable in query strings and path templates).
_SCALAR_MESSAGES = frozenset({_TIMESTAMP, _DURATION, _FIELD_MASK}) | _WRAPPERS


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
    lo, hi = _INT_RANGES[field.type]
    opts = field.GetOptions()
    if opts.HasExtension(options_pb2.range):
        declared = opts.Extensions[options_pb2.range]
        if declared.HasField("min"):
            lo = max(lo, declared.min)
        if declared.HasField("max"):
            hi = min(hi, declared.max)
    return lo, hi


def _out_of_range(path: str, lo: int, hi: int, what: str = "Field") -> TranscodeError:
    return TranscodeError(
        f"{what} '{path}' must be between {lo} and {hi}.", reason="PARAMETER_OUT_OF_RANGE", field=path
    )


def _msg(field: descriptor.FieldDescriptor) -> descriptor.Descriptor:
    desc = field.message_type
    assert desc is not None, field.full_name
    return desc


def _enum(field: descriptor.FieldDescriptor) -> descriptor.EnumDescriptor:
    desc = field.enum_type
    assert desc is not None, field.full_name
    return desc


def _is_map(field: descriptor.FieldDescriptor) -> bool:
    return (
        field.is_repeated
        and field.type == FD.TYPE_MESSAGE
        and _msg(field).GetOptions().map_entry
    )


def _json_type(value: Any) -> str:
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


def _type_label(field: descriptor.FieldDescriptor) -> str:
    t = field.type
    if t in _INT_RANGES:
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
        return "one of " + ", ".join(v.name for v in _enum(field).values)
    return "an object"


# --------------------------------------------------------------------------------------------------
# Responses: message -> JSON-ready Python objects
# --------------------------------------------------------------------------------------------------

Encoder = Callable[[Any], Any]


@dataclass(frozen=True)
class _EncodePlan:
    defaults: dict[str, Any]
    fresh_lists: tuple[str, ...]
    fresh_dicts: tuple[str, ...]
    by_number: dict[int, tuple[str, Encoder | None]]  # None: the value is already its JSON form


def message_to_json(msg: message.Message, surface: Surface) -> dict[str, Any]:
    """`msg` as a JSON object (a dict ready for json.dumps), following the module rules."""
    return _encode_with(_encode_plan(msg.DESCRIPTOR, surface), msg)


def _encode_with(plan: _EncodePlan, msg: message.Message) -> dict[str, Any]:
    out = plan.defaults.copy()
    for key in plan.fresh_lists:
        out[key] = []
    for key in plan.fresh_dicts:
        out[key] = {}
    by_number = plan.by_number
    for fd, value in msg.ListFields():
        entry = by_number.get(fd.number)
        if entry is not None:  # extensions are not part of the external surface
            key, enc = entry
            out[key] = value if enc is None else enc(value)
    return out


def field_to_json(msg: message.Message, field_name: str, surface: Surface) -> Any:
    """The JSON value of one field of `msg` (used for envelope `data_field`)."""
    field: descriptor.FieldDescriptor = msg.DESCRIPTOR.fields_by_name[field_name]  # type: ignore[assignment]
    return message_to_json(msg, surface)[wire_name(field)]


@cache
def _encode_plan(desc: descriptor.Descriptor, surface: Surface) -> _EncodePlan:
    defaults: dict[str, Any] = {}
    fresh_lists: list[str] = []
    fresh_dicts: list[str] = []
    by_number: dict[int, tuple[str, Encoder | None]] = {}
    for field in desc.fields:
        key = wire_name(field)
        if _is_map(field):
            defaults[key] = None
            fresh_dicts.append(key)
            by_number[field.number] = (key, _map_encoder(field, surface))
        elif field.is_repeated:
            defaults[key] = None
            fresh_lists.append(key)
            one = _value_encoder(field, surface)
            by_number[field.number] = (key, (lambda vs: list(vs)) if one is _identity else _list_encoder(one))
        else:
            enc = _value_encoder(field, surface)
            defaults[key] = None if field.has_presence else enc(field.default_value)
            by_number[field.number] = (key, None if enc is _identity else enc)
    return _EncodePlan(defaults, tuple(fresh_lists), tuple(fresh_dicts), by_number)


def _identity(v: Any) -> Any:
    return v


def _list_encoder(one: Encoder) -> Encoder:
    return lambda vs: [one(v) for v in vs]


def _map_encoder(field: descriptor.FieldDescriptor, surface: Surface) -> Encoder:
    value_field = _msg(field).fields_by_name["value"]
    key_field = _msg(field).fields_by_name["key"]
    venc = _value_encoder(value_field, surface)
    if key_field.type == FD.TYPE_BOOL:
        return lambda m: {("true" if k else "false"): venc(v) for k, v in m.items()}
    return lambda m: {str(k): venc(v) for k, v in m.items()}


def _encode_double(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _encode_float(v: float) -> float | None:
    # A float field holds a float32; print it with the precision it has (0.1, not 0.10000000149).
    return float(f"{v:.7g}") if math.isfinite(v) else None


def _value_encoder(field: descriptor.FieldDescriptor, surface: Surface) -> Encoder:
    t = field.type
    if t in _INT_RANGES or t in (FD.TYPE_BOOL, FD.TYPE_STRING):
        return _identity
    if t == FD.TYPE_DOUBLE:
        return _encode_double
    if t == FD.TYPE_FLOAT:
        return _encode_float
    if t == FD.TYPE_BYTES:
        return lambda v: base64.b64encode(v).decode("ascii")
    if t == FD.TYPE_ENUM:
        names = {v.number: v.name for v in _enum(field).values}
        return lambda v: names.get(v, v)
    return _message_encoder(_msg(field), surface)


def _message_encoder(desc: descriptor.Descriptor, surface: Surface) -> Encoder:
    name = desc.full_name
    if name == _TIMESTAMP:
        if surface is Surface.CLICKSEND:
            return lambda m: m.seconds
        return lambda m: m.ToJsonString()
    if name in (_DURATION, _FIELD_MASK):
        return lambda m: m.ToJsonString()
    if name in _WRAPPERS:
        inner = _value_encoder(desc.fields_by_name["value"], surface)
        return lambda m: inner(m.value)
    if name in _STRUCTLIKE or name == "google.protobuf.Any":
        return lambda m: json_format.MessageToDict(m)
    return _Nested(desc, surface)


class _Nested:
    """Encoder of a nested message: its plan looked up once, on first use (a message type may contain
    itself, so the plan cannot be built eagerly)."""

    __slots__ = ("_desc", "_plan", "_surface")

    def __init__(self, desc: descriptor.Descriptor, surface: Surface) -> None:
        self._desc = desc
        self._surface = surface
        self._plan: _EncodePlan | None = None

    def __call__(self, m: message.Message) -> dict[str, Any]:
        plan = self._plan
        if plan is None:
            plan = self._plan = _encode_plan(self._desc, self._surface)
        return _encode_with(plan, m)


# --------------------------------------------------------------------------------------------------
# Requests: JSON / query / path -> message
# --------------------------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def parse_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity. Raises TranscodeError(MALFORMED_JSON)."""
    try:
        text = raw.decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise TranscodeError(f"The request body is not valid JSON: {detail}.", reason="MALFORMED_JSON") from None


def _path(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _bad(path: str, field: descriptor.FieldDescriptor, value: Any, extra: str = "") -> TranscodeError:
    got = _json_type(value)
    msg = f"Field '{path}' must be {_type_label(field)}, got {got}{extra}."
    return TranscodeError(msg, reason="INVALID_FIELD_VALUE", field=path)


Decoder = Callable[[Any, str], Any]


@dataclass(frozen=True)
class _DecodePlan:
    by_key: dict[str, tuple[descriptor.FieldDescriptor, Decoder]]
    oneof_of: dict[str, str]


@cache
def _decode_plan(desc: descriptor.Descriptor, surface: Surface) -> _DecodePlan:
    by_key: dict[str, tuple[descriptor.FieldDescriptor, Decoder]] = {}
    oneof_of: dict[str, str] = {}
    for field in desc.fields:
        key = wire_name(field)
        if _is_map(field):
            dec = _map_decoder(field, surface)
        elif field.is_repeated:
            dec = _list_decoder(field, _value_decoder(field, surface))
        else:
            dec = _value_decoder(field, surface)
        by_key[key] = (field, dec)
        oneof = field.containing_oneof
        if oneof is not None and len(oneof.fields) > 1:  # not a proto3 `optional` (synthetic) oneof
            oneof_of[key] = oneof.full_name
    return _DecodePlan(by_key, oneof_of)


def _object_to_kwargs(obj: Any, desc: descriptor.Descriptor, surface: Surface, path: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        where = f"'{path}'" if path else "The request body"
        raise TranscodeError(f"{where} must be a JSON object, got {_json_type(obj)}.", field=path)
    plan = _decode_plan(desc, surface)
    kwargs: dict[str, Any] = {}
    seen_oneofs: dict[str, str] = {}
    for key, value in obj.items():
        entry = plan.by_key.get(key)
        here = _path(path, key)
        if entry is None:
            raise TranscodeError(f"Unknown field '{here}'.", reason="UNKNOWN_FIELD", field=here)
        if value is None:
            continue
        field, dec = entry
        oneof = plan.oneof_of.get(key)
        if oneof is not None:
            if oneof in seen_oneofs:
                raise TranscodeError(
                    f"Fields '{_path(path, seen_oneofs[oneof])}' and '{here}' cannot both be set.", field=here
                )
            seen_oneofs[oneof] = key
        kwargs[field.name] = dec(value, here)
    return kwargs


def _list_decoder(field: descriptor.FieldDescriptor, one: Decoder) -> Decoder:
    def dec(value: Any, path: str) -> list[Any]:
        if not isinstance(value, list):
            raise TranscodeError(f"Field '{path}' must be an array, got {_json_type(value)}.", field=path)
        out = []
        for i, item in enumerate(value):
            here = f"{path}[{i}]"
            if item is None:
                raise TranscodeError(f"Field '{here}' must not be null.", field=here)
            out.append(one(item, here))
        return out

    return dec


def _map_decoder(field: descriptor.FieldDescriptor, surface: Surface) -> Decoder:
    key_field = _msg(field).fields_by_name["key"]
    vdec = _value_decoder(_msg(field).fields_by_name["value"], surface)

    def dec(value: Any, path: str) -> dict[Any, Any]:
        if not isinstance(value, dict):
            raise TranscodeError(f"Field '{path}' must be an object, got {_json_type(value)}.", field=path)
        out = {}
        for k, v in value.items():
            here = f"{path}[{k!r}]"
            if v is None:
                raise TranscodeError(f"Field '{here}' must not be null.", field=here)
            out[parse_text_value(key_field, k, here, surface)] = vdec(v, here)
        return out

    return dec


def _value_decoder(field: descriptor.FieldDescriptor, surface: Surface) -> Decoder:
    t = field.type
    if t in _INT_RANGES:
        lo, hi = int_bounds(field)

        def dec_int(v: Any, path: str) -> int:
            if type(v) is not int:
                raise _bad(path, field, v)
            if not lo <= v <= hi:
                raise _out_of_range(path, lo, hi)
            return v

        return dec_int
    if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        limit = _FLOAT32_MAX if t == FD.TYPE_FLOAT else math.inf

        def dec_float(v: Any, path: str) -> float:
            if type(v) not in (int, float):
                raise _bad(path, field, v)
            try:
                f = float(v)
            except OverflowError:
                f = math.inf
            if not math.isfinite(f) or abs(f) > limit:
                raise TranscodeError(f"Field '{path}' is out of range.", reason="PARAMETER_OUT_OF_RANGE", field=path)
            return f

        return dec_float
    if t == FD.TYPE_BOOL:

        def dec_bool(v: Any, path: str) -> bool:
            if type(v) is not bool:
                raise _bad(path, field, v)
            return v

        return dec_bool
    if t == FD.TYPE_STRING:

        def dec_str(v: Any, path: str) -> str:
            if type(v) is not str:
                raise _bad(path, field, v)
            return v

        return dec_str
    if t == FD.TYPE_BYTES:

        def dec_bytes(v: Any, path: str) -> bytes:
            if type(v) is not str:
                raise _bad(path, field, v)
            return _b64(v, path)

        return dec_bytes
    if t == FD.TYPE_ENUM:
        by_name = {v.name: v.number for v in _enum(field).values}
        numbers = set(by_name.values())

        def dec_enum(v: Any, path: str) -> int:
            if type(v) is str and v in by_name:
                return by_name[v]
            if type(v) is int and v in numbers:
                return v
            raise _bad(path, field, v)

        return dec_enum
    return _message_decoder(field, surface)


def _message_decoder(field: descriptor.FieldDescriptor, surface: Surface) -> Decoder:
    desc = _msg(field)
    name = desc.full_name
    if name == _TIMESTAMP or name in (_DURATION, _FIELD_MASK):

        def dec_wkt(v: Any, path: str) -> Any:
            if name == _TIMESTAMP and surface is Surface.CLICKSEND:
                if type(v) is not int:
                    raise TranscodeError(f"Field '{path}' must be unix seconds (an integer).", field=path)
                return _timestamp_from_seconds(v, path)
            if type(v) is not str:
                raise TranscodeError(f"Field '{path}' must be a string, got {_json_type(v)}.", field=path)
            return parse_text_value(field, v, path, surface)

        return dec_wkt
    if name in _WRAPPERS:
        inner = _value_decoder(desc.fields_by_name["value"], surface)
        cls = message_class(desc)
        return lambda v, path: cls(value=inner(v, path))
    if name in _STRUCTLIKE:
        cls = message_class(desc)

        def dec_struct(v: Any, path: str) -> Any:
            try:
                return json_format.ParseDict(v, cls())
            except json_format.ParseError as exc:
                raise TranscodeError(f"Field '{path}': {exc}.", field=path) from None

        return dec_struct
    return lambda v, path: _object_to_kwargs(v, desc, surface, path)


def _b64(text: str, path: str) -> bytes:
    try:
        padded = text + "=" * (-len(text) % 4)
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise TranscodeError(f"Field '{path}' is not valid base64.", field=path) from None


def _timestamp_from_seconds(seconds: int, path: str) -> Any:
    from google.protobuf import timestamp_pb2

    if not _MIN_SECONDS <= seconds <= _MAX_SECONDS:
        raise _out_of_range(path, _MIN_SECONDS, _MAX_SECONDS)
    return timestamp_pb2.Timestamp(seconds=seconds)


_INT_RE = re.compile(r"-?[0-9]+")
_FLOAT_RE = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def parse_text_value(field: descriptor.FieldDescriptor, text: str, path: str, surface: Surface) -> Any:
    """A query-string / path-segment / map-key value parsed to `field`'s (scalar) type."""
    t = field.type
    shown = text if len(text) <= 40 else text[:40] + "..."
    bad = TranscodeError(f"Parameter '{path}' must be {_type_label(field)}, got {shown!r}.", field=path)
    if t in _INT_RANGES:
        if not _INT_RE.fullmatch(text):
            raise bad
        lo, hi = int_bounds(field)
        value = int(text)
        if not lo <= value <= hi:
            raise _out_of_range(path, lo, hi, "Parameter")
        return value
    if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        if not _FLOAT_RE.fullmatch(text):
            raise bad
        f = float(text)
        if not math.isfinite(f) or (t == FD.TYPE_FLOAT and abs(f) > _FLOAT32_MAX):
            raise TranscodeError(f"Parameter '{path}' is out of range.", reason="PARAMETER_OUT_OF_RANGE", field=path)
        return f
    if t == FD.TYPE_BOOL:
        low = text.lower()
        if low in ("true", "1"):
            return True
        if low in ("false", "0"):
            return False
        raise bad
    if t == FD.TYPE_STRING:
        return text
    if t == FD.TYPE_BYTES:
        return _b64(text, path)
    if t == FD.TYPE_ENUM:
        for v in _enum(field).values:
            if v.name == text or (_INT_RE.fullmatch(text) and int(text) == v.number):
                return v.number
        raise bad
    if t == FD.TYPE_MESSAGE:
        name = _msg(field).full_name
        cls = message_class(_msg(field))
        if name == _TIMESTAMP and surface is Surface.CLICKSEND:
            if not _INT_RE.fullmatch(text):
                raise TranscodeError(f"Parameter '{path}' must be unix seconds (an integer).", field=path)
            return _timestamp_from_seconds(int(text), path)
        if name in (_TIMESTAMP, _DURATION, _FIELD_MASK):
            wkt: Any = cls()
            try:
                wkt.FromJsonString(text)
            except (ValueError, TypeError):
                what = {"google.protobuf.Timestamp": "an RFC 3339 time", "google.protobuf.Duration": "a duration"}
                raise TranscodeError(
                    f"Parameter '{path}' must be {what.get(name, 'a field mask')}, got {shown!r}.", field=path
                ) from None
            return wkt
        if name in _WRAPPERS:
            return cls(value=parse_text_value(_msg(field).fields_by_name["value"], text, path, surface))
    raise TranscodeError(f"Parameter '{path}' cannot be given as text.", field=path)


def _resolve_dotted(
    desc: descriptor.Descriptor, dotted: str, *, by_wire_name: bool = True
) -> tuple[list[descriptor.FieldDescriptor], descriptor.FieldDescriptor] | None:
    """Fields along `a.b.c`; None when any part is unknown or not traversable.

    Query keys use the JSON (wire) names; path templates use proto field names (google.api.http).
    """
    parts = dotted.split(".")
    parents: list[descriptor.FieldDescriptor] = []
    current = desc
    for i, part in enumerate(parts):
        field = next((f for f in current.fields if (wire_name(f) if by_wire_name else f.name) == part), None)
        if field is None:
            return None
        if i == len(parts) - 1:
            return parents, field
        if field.is_repeated or field.type != FD.TYPE_MESSAGE or _msg(field).full_name in _SCALAR_MESSAGES:
            return None
        parents.append(field)
        current = _msg(field)
    return None


def _set_dotted(kwargs: dict[str, Any], parents: list[descriptor.FieldDescriptor], leaf: str, value: Any) -> None:
    target = kwargs
    for p in parents:
        nxt = target.get(p.name)
        if not isinstance(nxt, dict):
            nxt = {}
            target[p.name] = nxt
        target = nxt
    target[leaf] = value


def _is_text_field(field: descriptor.FieldDescriptor) -> bool:
    if _is_map(field):
        return False
    return field.type != FD.TYPE_MESSAGE or _msg(field).full_name in _SCALAR_MESSAGES


def build_request(
    desc: descriptor.Descriptor,
    surface: Surface,
    *,
    body: Any = None,
    body_field: str = "",
    query: Iterable[tuple[str, str]] = (),
    path_params: Mapping[str, str] | None = None,
) -> message.Message:
    """The RPC input message from a parsed JSON body, query pairs and path variables.

    `body_field` is the http rule's `body`: "*" (the body is the message), a field name (the body is
    that field), or "" (no body; every non-path field may come from the query).
    Path values that do not parse give 404 (a resource that cannot exist); everything else 400.
    """
    kwargs: dict[str, Any] = {}
    if body_field == "*":
        kwargs = _object_to_kwargs(body if body is not None else {}, desc, surface, "")
    elif body_field:
        field = desc.fields_by_name[body_field]
        plan = _decode_plan(desc, surface)
        key = wire_name(field)
        if body is not None:
            kwargs[field.name] = plan.by_key[key][1](body, key)

    bound = set(path_params or ())
    grouped: dict[str, list[str]] = {}
    for key, value in query:
        grouped.setdefault(key, []).append(value)
    for key, values in grouped.items():
        # With body "*" every field comes from the body; otherwise the body field, and the path
        # variables, cannot also come from the query.
        resolved = None if body_field == "*" or key in bound else _resolve_dotted(desc, key)
        if resolved is None or (body_field and (resolved[0] or [resolved[1]])[0].name == body_field):
            raise TranscodeError(f"Unknown query parameter '{key}'.", reason="UNKNOWN_FIELD", field=key)
        parents, leaf = resolved
        if not _is_text_field(leaf):
            raise TranscodeError(f"Query parameter '{key}' cannot be given as text.", field=key)
        if leaf.is_repeated:
            parsed: Any = [parse_text_value(leaf, v, key, surface) for v in values]
        else:
            if len(values) > 1:
                raise TranscodeError(f"Query parameter '{key}' given more than once.", field=key)
            parsed = parse_text_value(leaf, values[0], key, surface)
        _set_dotted(kwargs, parents, leaf.name, parsed)

    for key, text in (path_params or {}).items():
        resolved = _resolve_dotted(desc, key, by_wire_name=False)
        if resolved is None or not _is_text_field(resolved[1]) or resolved[1].is_repeated:
            raise ValueError(f"path variable {key!r} does not name a scalar field of {desc.full_name}")
        parents, leaf = resolved
        try:
            value = parse_text_value(leaf, text, key, surface)
        except TranscodeError as exc:
            raise TranscodeError("Resource not found.", reason="NOT_FOUND", field=exc.field, status=404) from None
        _set_dotted(kwargs, parents, leaf.name, value)

    cls = message_class(desc)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # should not happen after validation; never echo values
        raise TranscodeError(f"The request does not fit {desc.name}: {type(exc).__name__}.") from None
