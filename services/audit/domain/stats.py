"""Figures the metrics endpoint reports: a Prometheus-style histogram and its buckets, and the log's counters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


class Histogram:
    """Cumulative buckets, as Prometheus histograms count them."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1


LAG_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


@dataclass
class LogStats:
    """What the metrics endpoint reports about the log."""

    appended: int = 0
    batches: int = 0
    last_lag_seconds: float = 0.0
    lag: Histogram = field(default_factory=lambda: Histogram(LAG_BUCKETS))
    integrity_ok: bool | None = None
    integrity_failures: int = 0
    last_verified_size: int = 0
    last_verify_time: float = 0.0
    checkpoint_size: int = 0
    checkpoint_time: float = 0.0
    proof_violations: int = 0
