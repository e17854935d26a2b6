"""svckit.metrics' own rules (issue 16): a certificate's seconds to expiry follow the file as rotated, a cache's
hit ratio and webhook outcomes are counted without any destination or key in a label, and one failing
scrape-time collector is counted and logged without hiding the others' figures."""

from __future__ import annotations

import os
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from svckit import metrics
from svckit.ttlcache import TtlCache
from svckit.webhooks import WebhookClient
from tools.pki import issue_leaf, make_ca, write_pem


def _samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text.decode()) for s in fam.samples}


def test_certificate_expiry_follows_the_file_when_it_is_rotated(tmp_path: Path) -> None:
    ca, ca_key = make_ca("test ca")
    path = tmp_path / "tls.crt"
    write_pem(path, issue_leaf(ca, ca_key, "keys", days=10)[0])
    expiry = metrics.CertificateExpiry(path)
    assert 9 * 86400 < expiry.seconds_left() <= 10 * 86400
    write_pem(path, issue_leaf(ca, ca_key, "keys", days=90)[0])
    later = time.time() + 5
    os.utime(path, (later, later))  # a rotation is a new file: a new mtime
    assert 89 * 86400 < expiry.seconds_left() <= 90 * 86400


async def test_a_failing_collector_is_counted_and_hides_nothing(tmp_path: Path) -> None:
    ca, ca_key = make_ca("test ca")
    path = write_pem(tmp_path / "tls.crt", issue_leaf(ca, ca_key, "gateway", days=30)[0])
    scrape = metrics.Scrape()
    scrape.certificate("internal", path)
    cache: TtlCache[str, int] = TtlCache(60, 10)
    scrape.cache("unit_cache", cache)

    async def broken() -> list[metrics.Metric]:
        raise ConnectionError("redis is down")

    scrape.add("unit broken", broken)
    await cache.get_or_load("a", _one)
    await cache.get_or_load("a", _one)
    before = _samples(await scrape.render())
    after = _samples(await scrape.render())
    assert after[("sendsafe_tls_cert_expiry_seconds", frozenset({("certificate", "internal")}))] > 29 * 86400
    assert after[("sendsafe_cache_lookups_total", frozenset({("cache", "unit_cache"), ("result", "hit")}))] == 1
    assert after[("sendsafe_cache_lookups_total", frozenset({("cache", "unit_cache"), ("result", "miss")}))] == 1
    key = ("sendsafe_metrics_collector_errors_total", frozenset({("collector", "unit broken")}))
    assert after[key] == before[key] + 1


async def _one() -> int:
    return 1


async def test_webhook_attempts_are_counted_by_outcome_only() -> None:
    def refused() -> float:
        text = metrics.generate_latest(metrics.REGISTRY)
        return _samples(text).get(("sendsafe_webhook_deliveries_total", frozenset({("outcome", "refused")})), 0.0)

    before = refused()
    attempt = await WebhookClient().post("https://127.0.0.1/hook", b"{}", {})  # a private address: refused
    assert attempt.refused and not attempt.ok
    assert refused() == before + 1
    labels = {k for (n, ls) in _samples(metrics.generate_latest(metrics.REGISTRY))
              if n == "sendsafe_webhook_deliveries_total" for k, _ in ls}
    assert labels == {"outcome"}
