"""The JSON request body: strict parsing (`parse_json`) and its objects checked and turned into a message's
constructor arguments, compiled once per (descriptor, surface) into small plans."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from google.protobuf import descriptor, json_format

from gateway.surface import Surface
from gateway.transcode.fields import (
    DURATION,
    FD,
    FIELD_MASK,
    FLOAT32_MAX,
    INT_RANGES,
    STRUCTLIKE,
    TIMESTAMP,
    WRAPPERS,
    TranscodeError,
    enum_of,
    int_bounds,
    is_map,
    json_type,
    message_class,
    message_of,
    out_of_range,
    type_label,
    wire_name,
)
from gateway.transcode.text import b64, parse_text_value, timestamp_from_seconds


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
    got = json_type(value)
    msg = f"Field '{path}' must be {type_label(field)}, got {got}{extra}."
    return TranscodeError(msg, reason="INVALID_FIELD_VALUE", field=path)


Decoder = Callable[[Any, str], Any]


@dataclass(frozen=True)
class _DecodePlan:
    by_key: dict[str, tuple[descriptor.FieldDescriptor, Decoder]]
    oneof_of: dict[str, str]


@cache
def decode_plan(desc: descriptor.Descriptor, surface: Surface) -> _DecodePlan:
    by_key: dict[str, tuple[descriptor.FieldDescriptor, Decoder]] = {}
    oneof_of: dict[str, str] = {}
    for field in desc.fields:
        key = wire_name(field)
        if is_map(field):
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


def object_to_kwargs(obj: Any, desc: descriptor.Descriptor, surface: Surface, path: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        where = f"'{path}'" if path else "The request body"
        raise TranscodeError(f"{where} must be a JSON object, got {json_type(obj)}.", field=path)
    plan = decode_plan(desc, surface)
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
            raise TranscodeError(f"Field '{path}' must be an array, got {json_type(value)}.", field=path)
        out = []
        for i, item in enumerate(value):
            here = f"{path}[{i}]"
            if item is None:
                raise TranscodeError(f"Field '{here}' must not be null.", field=here)
            out.append(one(item, here))
        return out

    return dec


def _map_decoder(field: descriptor.FieldDescriptor, surface: Surface) -> Decoder:
    key_field = message_of(field).fields_by_name["key"]
    vdec = _value_decoder(message_of(field).fields_by_name["value"], surface)

    def dec(value: Any, path: str) -> dict[Any, Any]:
        if not isinstance(value, dict):
            raise TranscodeError(f"Field '{path}' must be an object, got {json_type(value)}.", field=path)
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
    if t in INT_RANGES:
        lo, hi = int_bounds(field)

        def dec_int(v: Any, path: str) -> int:
            if type(v) is not int:
                raise _bad(path, field, v)
            if not lo <= v <= hi:
                raise out_of_range(path, lo, hi)
            return v

        return dec_int
    if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        limit = FLOAT32_MAX if t == FD.TYPE_FLOAT else math.inf

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
            return b64(v, path)

        return dec_bytes
    if t == FD.TYPE_ENUM:
        by_name = {v.name: v.number for v in enum_of(field).values}
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
    desc = message_of(field)
    name = desc.full_name
    if name == TIMESTAMP or name in (DURATION, FIELD_MASK):

        def dec_wkt(v: Any, path: str) -> Any:
            if name == TIMESTAMP and surface is Surface.CLICKSEND:
                if type(v) is not int:
                    raise TranscodeError(f"Field '{path}' must be unix seconds (an integer).", field=path)
                return timestamp_from_seconds(v, path)
            if type(v) is not str:
                raise TranscodeError(f"Field '{path}' must be a string, got {json_type(v)}.", field=path)
            return parse_text_value(field, v, path, surface)

        return dec_wkt
    if name in WRAPPERS:
        inner = _value_decoder(desc.fields_by_name["value"], surface)
        cls = message_class(desc)
        return lambda v, path: cls(value=inner(v, path))
    if name in STRUCTLIKE:
        cls = message_class(desc)

        def dec_struct(v: Any, path: str) -> Any:
            try:
                return json_format.ParseDict(v, cls())
            except json_format.ParseError as exc:
                raise TranscodeError(f"Field '{path}': {exc}.", field=path) from None

        return dec_struct
    return lambda v, path: object_to_kwargs(v, desc, surface, path)
