"""One value given as text (a query-string value, a path segment, a map key) parsed to a scalar field's type."""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import Any

from google.protobuf import descriptor

from gateway.surface import Surface
from gateway.transcode.fields import (
    DURATION,
    FD,
    FIELD_MASK,
    FLOAT32_MAX,
    INT_RANGES,
    MAX_SECONDS,
    MIN_SECONDS,
    TIMESTAMP,
    WRAPPERS,
    TranscodeError,
    enum_of,
    int_bounds,
    message_class,
    message_of,
    out_of_range,
    type_label,
)


def b64(text: str, path: str) -> bytes:
    try:
        padded = text + "=" * (-len(text) % 4)
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise TranscodeError(f"Field '{path}' is not valid base64.", field=path) from None


def timestamp_from_seconds(seconds: int, path: str) -> Any:
    from google.protobuf import timestamp_pb2

    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise out_of_range(path, MIN_SECONDS, MAX_SECONDS)
    return timestamp_pb2.Timestamp(seconds=seconds)


_INT_RE = re.compile(r"-?[0-9]+")
_FLOAT_RE = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def parse_text_value(field: descriptor.FieldDescriptor, text: str, path: str, surface: Surface) -> Any:
    """A query-string / path-segment / map-key value parsed to `field`'s (scalar) type."""
    t = field.type
    shown = text if len(text) <= 40 else text[:40] + "..."
    bad = TranscodeError(f"Parameter '{path}' must be {type_label(field)}, got {shown!r}.", field=path)
    if t in INT_RANGES:
        if not _INT_RE.fullmatch(text):
            raise bad
        lo, hi = int_bounds(field)
        value = int(text)
        if not lo <= value <= hi:
            raise out_of_range(path, lo, hi, "Parameter")
        return value
    if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        if not _FLOAT_RE.fullmatch(text):
            raise bad
        f = float(text)
        if not math.isfinite(f) or (t == FD.TYPE_FLOAT and abs(f) > FLOAT32_MAX):
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
        return b64(text, path)
    if t == FD.TYPE_ENUM:
        for v in enum_of(field).values:
            if v.name == text or (_INT_RE.fullmatch(text) and int(text) == v.number):
                return v.number
        raise bad
    if t == FD.TYPE_MESSAGE:
        name = message_of(field).full_name
        cls = message_class(message_of(field))
        if name == TIMESTAMP and surface is Surface.CLICKSEND:
            if not _INT_RE.fullmatch(text):
                raise TranscodeError(f"Parameter '{path}' must be unix seconds (an integer).", field=path)
            return timestamp_from_seconds(int(text), path)
        if name in (TIMESTAMP, DURATION, FIELD_MASK):
            wkt: Any = cls()
            try:
                wkt.FromJsonString(text)
            except (ValueError, TypeError):
                what = {"google.protobuf.Timestamp": "an RFC 3339 time", "google.protobuf.Duration": "a duration"}
                raise TranscodeError(
                    f"Parameter '{path}' must be {what.get(name, 'a field mask')}, got {shown!r}.", field=path
                ) from None
            return wkt
        if name in WRAPPERS:
            return cls(value=parse_text_value(message_of(field).fields_by_name["value"], text, path, surface))
    raise TranscodeError(f"Parameter '{path}' cannot be given as text.", field=path)
