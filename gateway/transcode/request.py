"""Request binding: the RPC input message from the JSON body, the query string and the path variables
(`build_request`), following the http rule's `body`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import descriptor, message

from gateway.surface import Surface
from gateway.transcode.body import decode_plan, object_to_kwargs
from gateway.transcode.fields import FD, SCALAR_MESSAGES, TranscodeError, is_map, message_class, message_of, wire_name
from gateway.transcode.text import parse_text_value


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
        if field.is_repeated or field.type != FD.TYPE_MESSAGE or message_of(field).full_name in SCALAR_MESSAGES:
            return None
        parents.append(field)
        current = message_of(field)
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
    if is_map(field):
        return False
    return field.type != FD.TYPE_MESSAGE or message_of(field).full_name in SCALAR_MESSAGES


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
        kwargs = object_to_kwargs(body if body is not None else {}, desc, surface, "")
    elif body_field:
        field = desc.fields_by_name[body_field]
        plan = decode_plan(desc, surface)
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
