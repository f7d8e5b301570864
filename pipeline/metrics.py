"""Prometheus metrics of the API, on a registry of its own per app (so tests can build several).

Labels are bounded sets only: route templates (never raw paths), status codes, outcomes,
policy categories and context segments (flags and choices, never counts or ids).  No account,
upload or key ever becomes a label.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128, 256)


class OutboxCollector(Collector):
    """Messages for the platform per status (pending = backlog, dead = dead letters), read at
    scrape time from the outbox table."""

    def __init__(self, backlog: Callable[[], Mapping[str, int]]) -> None:
        self._backlog = backlog

    def collect(self) -> Iterator[Metric]:
        fam = GaugeMetricFamily(
            "lookfirst_outbox_messages", "Outbox messages per status.", labels=["status"]
        )
        try:
            counts = dict(self._backlog())
        except Exception as exc:  # a scrape must not fail because the database is down
            log.warning("outbox backlog unavailable", extra={"error": type(exc).__name__})
            return
        for status, n in sorted(counts.items()):
            fam.add_metric([status], float(n))
        yield fam


class ReviewQueueCollector(Collector):
    """Queue depth, claims, oldest age and SLA breaches per review queue, read at scrape time
    from the database of record (so several API processes report the same truth)."""

    def __init__(self, stats: Callable[[], Sequence[Mapping[str, Any]]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "lookfirst_review_stats_up", "1 if the review queue statistics could be read."
        )
        try:
            rows = list(self._stats())
        except Exception as exc:  # a scrape must not fail because the database is down
            log.warning("review stats unavailable", extra={"error": type(exc).__name__})
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        families = {
            "depth": GaugeMetricFamily(
                "lookfirst_review_queue_depth", "Open review items per queue.", labels=["queue"]
            ),
            "claimed": GaugeMetricFamily(
                "lookfirst_review_queue_claimed", "Items leased to a reviewer.", labels=["queue"]
            ),
            "oldest_age_s": GaugeMetricFamily(
                "lookfirst_review_queue_oldest_age_seconds",
                "Age of the oldest open item.",
                labels=["queue"],
            ),
            "breaches": GaugeMetricFamily(
                "lookfirst_review_queue_sla_breaches",
                "Open items past their due time.",
                labels=["queue"],
            ),
        }
        for row in rows:
            for key, fam in families.items():
                fam.add_metric([str(row["queue"])], float(row[key]))
        yield from families.values()


class FalsePositiveCollector(Collector):
    """The false-positive rate people see, per context segment: of the uploads the policy
    flagged and a person decided in the window, the share found benign.  Read at scrape time
    from the database of record (one grouped query)."""

    def __init__(self, rates: Callable[[], Sequence[Mapping[str, Any]]], *,
                 window_days: int) -> None:
        self._rates = rates
        self._window = window_days

    def collect(self) -> Iterator[Metric]:
        try:
            rows = list(self._rates())
        except Exception as exc:  # a scrape must not fail because the database is down
            log.warning("false-positive rates unavailable",
                        extra={"error": type(exc).__name__})
            return
        w = f"the last {self._window} days"
        rate = GaugeMetricFamily(
            "lookfirst_review_false_positive_rate",
            f"Share of flagged uploads people decided in {w} that they found benign "
            "(absent where none was decided).", labels=["segment"])
        decided = GaugeMetricFamily(
            "lookfirst_review_flagged_decided",
            f"Flagged (held or queued) uploads people decided in {w}.", labels=["segment"])
        benign = GaugeMetricFamily(
            "lookfirst_review_false_positives",
            f"Flagged uploads people decided in {w} and found benign.", labels=["segment"])
        for row in rows:
            seg = str(row["segment"])
            decided.add_metric([seg], float(row["decided"]))
            benign.add_metric([seg], float(row["benign"]))
            if row["rate"] is not None:
                rate.add_metric([seg], float(row["rate"]))
        yield from (rate, decided, benign)


class ApiMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "lookfirst_http_request_duration_seconds",
            "Request latency by route template, method and status.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "lookfirst_model_batch_size",
            "Images per model call (micro-batches of concurrent requests).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "lookfirst_model_batch_duration_seconds",
            "Model time per batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_wait_seconds = Histogram(
            "lookfirst_model_queue_wait_seconds",
            "Time an image waited for its batch to start.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decode_seconds = Histogram(
            "lookfirst_decode_duration_seconds",
            "Upload decode time (ingest: sniff, bomb guard, decode, orientation).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.record_seconds = Histogram(
            "lookfirst_record_duration_seconds",
            "From the model's result to the recorded decision of one upload (waiting for its "
            "batch's transaction included).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.record_batch_size = Histogram(
            "lookfirst_record_batch_size",
            "Uploads recorded in one transaction (requests that left the model together).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.model_queue_depth = Gauge(
            "lookfirst_model_queue_depth", "Decoded images waiting for the model.", registry=r
        )
        self.classify_inflight = Gauge(
            "lookfirst_classify_inflight",
            "Classify requests admitted and not finished (bounded by api_queue_limit).",
            registry=r,
        )
        self.shed = Counter(
            "lookfirst_requests_shed_total",
            "Requests refused to protect the service.",
            ["reason"],
            registry=r,
        )
        self.uploads_rejected = Counter(
            "lookfirst_uploads_rejected_total",
            "Uploads refused by ingest, by error code.",
            ["code"],
            registry=r,
        )
        self.classify = Counter(
            "lookfirst_classify_total",
            "Classify responses: scored now, already scored, or an idempotent replay.",
            ["result"],
            registry=r,
        )
        self.decisions = Counter(
            "lookfirst_decisions_total",
            "New decisions by outcome and context segment.",
            ["outcome", "medical_sharing", "recipient_verified_provider", "audience"],
            registry=r,
        )
        self.categories = Counter(
            "lookfirst_category_fired_total",
            "Policy categories that fired in new decisions, by outcome and medical context.",
            ["category", "outcome", "medical_sharing"],
            registry=r,
        )
        self.model_loaded = Gauge(
            "lookfirst_model_loaded", "1 once the model is loaded.", ["model_version"], registry=r
        )

    def watch_review_queues(self, stats: Callable[[], Sequence[Mapping[str, Any]]]) -> None:
        self.registry.register(ReviewQueueCollector(stats))

    def watch_outbox(self, backlog: Callable[[], Mapping[str, int]]) -> None:
        self.registry.register(OutboxCollector(backlog))

    def watch_false_positives(self, rates: Callable[[], Sequence[Mapping[str, Any]]], *,
                              window_days: int) -> None:
        """`rates`: rows of segment, decided, benign, rate (pipeline.learning.segments)."""
        self.registry.register(FalsePositiveCollector(rates, window_days=window_days))

    def observe_decision(self, *, outcome: str, context: Mapping[str, Any],
                         categories: Sequence[str]) -> None:
        medical = _flag(context.get("medical_sharing"))
        self.decisions.labels(
            outcome=outcome,
            medical_sharing=medical,
            recipient_verified_provider=_flag(context.get("recipient_verified_provider")),
            audience=str(context.get("audience", "private")),
        ).inc()
        for c in categories:
            self.categories.labels(category=str(c), outcome=outcome, medical_sharing=medical).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _flag(value: object) -> str:
    return "true" if value is True else "false"
