"""Platform metrics for SREs, in the Prometheus text format, on a plaintext port (AUDIT_METRICS_LISTEN).

What to alert on (see docs/runbook.md): `sendsafe_audit_integrity_ok == 0` (the stored log does not
reproduce its signed checkpoints), `increase(sendsafe_audit_proof_violations_total[5m]) > 0`, a high
`sendsafe_audit_ingest_lag_seconds` quantile (emitters are buffering), a growing
`sendsafe_audit_alert_backlog_events` or `sendsafe_audit_forwarding_backlog_events`, and a stale
`sendsafe_audit_checkpoint_timestamp_seconds`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from services.audit.domain.stats import Histogram

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Sample:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    value: float | Histogram


def render(samples: list[Sample]) -> str:
    out: list[str] = []
    for s in samples:
        out.append(f"# HELP {s.name} {s.help}")
        out.append(f"# TYPE {s.name} {s.kind}")
        if isinstance(s.value, Histogram):
            h = s.value
            for bound, count in zip(h.bounds, h.counts, strict=True):
                out.append(f'{s.name}_bucket{{le="{bound:g}"}} {count}')
            out.append(f'{s.name}_bucket{{le="+Inf"}} {h.count}')
            out.append(f"{s.name}_sum {h.sum:.6f}")
            out.append(f"{s.name}_count {h.count}")
        else:
            out.append(f"{s.name} {s.value}" if isinstance(s.value, int) else f"{s.name} {s.value:.6f}")
    return "\n".join(out) + "\n"


async def start(listen: str, collect: Callable[[], Awaitable[list[Sample]]]) -> tuple[web.AppRunner, int]:
    """Serve GET /metrics on `listen` (host:port, port 0 = any); returns the runner and the bound port."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=render(await collect()).encode(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    site = web.TCPSite(runner, host or "127.0.0.1", int(port))
    await site.start()
    return runner, int(runner.addresses[0][1])
