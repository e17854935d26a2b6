"""Response shaping: an RPC's output message -> JSON-ready Python objects (the module rules in
`gateway.transcode`), compiled once per (descriptor, surface) into small plans."""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from google.protobuf import descriptor, json_format, message

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
    is_map,
    message_of,
    wire_name,
)

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
        if is_map(field):
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
    value_field = message_of(field).fields_by_name["value"]
    key_field = message_of(field).fields_by_name["key"]
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
    if t in INT_RANGES or t in (FD.TYPE_BOOL, FD.TYPE_STRING):
        return _identity
    if t == FD.TYPE_DOUBLE:
        return _encode_double
    if t == FD.TYPE_FLOAT:
        return _encode_float
    if t == FD.TYPE_BYTES:
        return lambda v: base64.b64encode(v).decode("ascii")
    if t == FD.TYPE_ENUM:
        names = {v.number: v.name for v in enum_of(field).values}
        return lambda v: names.get(v, v)
    return _message_encoder(message_of(field), surface)


def _message_encoder(desc: descriptor.Descriptor, surface: Surface) -> Encoder:
    name = desc.full_name
    if name == TIMESTAMP:
        if surface is Surface.CLICKSEND:
            return lambda m: m.seconds
        return lambda m: m.ToJsonString()
    if name in (DURATION, FIELD_MASK):
        return lambda m: m.ToJsonString()
    if name in WRAPPERS:
        inner = _value_encoder(desc.fields_by_name["value"], surface)
        return lambda m: inner(m.value)
    if name in STRUCTLIKE or name == "google.protobuf.Any":
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
