"""The send pipeline's counters and histograms (svckit.metrics serves them on the process's /metrics).

Labels are carriers and outcomes only, never accounts, numbers or message ids. The backlog gauges (stream
length, consumer lag, oldest entry age, dead letters) are read from Redis when scraped
(adapters/stream.py `collect_metrics`), not counted here.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from svckit.metrics import LATENCY_BUCKETS

ACCEPTED = Counter("sendsafe_messages_accepted", "Messages stored for sending (queued or scheduled).")
DELIVERY_RESULTS = Counter(
    "sendsafe_delivery_results",
    "Delivery attempts by carrier and outcome: sent (a carrier took it), retry (tried again later), failed.",
    ["carrier", "outcome"],
)
DEAD_LETTERED = Counter("sendsafe_messages_dead_lettered", "Messages that reached a final failure (dead letters).")
CARRIER_SUBMIT = Histogram(
    "sendsafe_carrier_submit_duration_seconds",
    "Seconds one batch submit to a carrier took, by carrier and outcome (ok: it answered; error: it raised).",
    ["carrier", "outcome"], buckets=LATENCY_BUCKETS,
)

ACCEPT_TO_FINAL = Histogram(
    "sendsafe_message_accept_to_final_seconds",
    "Seconds from a message's acceptance to its final state (DELIVERED or FAILED), by that state.",
    ["status"], buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 6 * 3600, 24 * 3600),
)


def count_results(carrier: str, sent_by: list[str], retry: int, failed: int) -> None:
    """A delivered batch's outcomes; `sent_by` names the carrier of each sent message ("" = `carrier`)."""
    for name in sent_by:
        DELIVERY_RESULTS.labels(name or carrier, "sent").inc()
    if retry:
        DELIVERY_RESULTS.labels(carrier, "retry").inc(retry)
    if failed:
        DELIVERY_RESULTS.labels(carrier, "failed").inc(failed)
