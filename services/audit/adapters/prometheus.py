"""The log's metrics for SREs, computed when scraped, on the process's /metrics (METRICS_LISTEN, svckit.metrics).

What to alert on (see docs/runbook.md): `sendsafe_audit_integrity_ok == 0` (the stored log does not
reproduce its signed checkpoints), `increase(sendsafe_audit_proof_violations_total[5m]) > 0`, a high
`sendsafe_audit_ingest_lag_seconds` quantile (emitters are buffering), a growing
`sendsafe_audit_alert_backlog_events` or `sendsafe_audit_forwarding_backlog_events`, and a stale
`sendsafe_audit_checkpoint_timestamp_seconds`.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from services.audit.domain.stats import Histogram


@dataclass(frozen=True)
class Sample:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    value: float | Histogram


def families(samples: list[Sample]) -> list[Metric]:
    """The samples as prometheus-client families, for the process's /metrics (svckit.metrics)."""
    out: list[Metric] = []
    for s in samples:
        if isinstance(s.value, Histogram):
            h = s.value
            buckets = [(f"{b:g}", float(c)) for b, c in zip(h.bounds, h.counts, strict=True)]
            out.append(HistogramMetricFamily(s.name, s.help, buckets=[*buckets, ("+Inf", float(h.count))],
                                             sum_value=h.sum))
        elif s.kind == "counter":
            out.append(CounterMetricFamily(s.name.removesuffix("_total"), s.help, value=float(s.value)))
        else:
            out.append(GaugeMetricFamily(s.name, s.help, value=float(s.value)))
    return out
