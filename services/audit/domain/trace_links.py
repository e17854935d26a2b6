"""Links from audit events to the trace UI (Jaeger, Tempo/Grafana, ...): AUDIT_TRACE_URL_TEMPLATE with a
`{trace_id}` placeholder, e.g. `https://tempo.example.com/explore?traceId={trace_id}`. Empty = no links.

The link is never part of an event's stored bytes (the template can change; the evidence cannot): the audit
service adds it on the way out, next to `trace_id`, in the API's events and in CEF/JSON Lines exports."""

from __future__ import annotations

import re

PLACEHOLDER = "{trace_id}"
_TRACE_ID = re.compile(r"[0-9a-f]{32}")


def check_template(template: str) -> str:
    """The template, or ValueError: it must be an http(s) URL holding `{trace_id}` (or be empty)."""
    if template and (PLACEHOLDER not in template or not re.match(r"https?://[^/\s{}]+", template)
                     or any(c.isspace() for c in template)):
        raise ValueError("AUDIT_TRACE_URL_TEMPLATE must be an http(s) URL containing {trace_id}, or empty")
    return template


def trace_url(template: str, trace_id: str) -> str:
    """The trace UI's URL for `trace_id`, or "" (no template, or not a W3C trace id: nothing to link)."""
    if not template or not _TRACE_ID.fullmatch(trace_id) or trace_id == "0" * 32:
        return ""
    return template.replace(PLACEHOLDER, trace_id)
