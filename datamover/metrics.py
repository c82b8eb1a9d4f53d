"""The mover's Prometheus instruments, on a registry of their own."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: The issue's bar is 500 ms at p99: buckets around it.
HOLD_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.lag = Gauge(
            "strangler_mover_lag_seconds",
            "Age of the oldest change not yet applied to the target (0 when none)",
            ["move"],
            registry=r,
        )
        self.apply_lag = Histogram(
            "strangler_mover_apply_lag_seconds",
            "From a change's capture in the source to its commit in the target",
            ["move"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.changes = Counter(
            "strangler_mover_changes_applied",
            "Captured changes applied to the target",
            ["move"],
            registry=r,
        )
        self.rows_copied = Gauge(
            "strangler_mover_rows_copied", "Rows copied by the backfill", ["move"], registry=r
        )
        self.rows_total = Gauge(
            "strangler_mover_rows_total", "Rows the backfill has to copy", ["move"], registry=r
        )
        self.rows_diverged = Gauge(
            "strangler_mover_rows_diverged",
            "Rows the last verification found different",
            ["move"],
            registry=r,
        )
        self.verdict = Gauge(
            "strangler_mover_verdict",
            "Last verification: 1 clean, 0 diverged, -1 none yet",
            ["move"],
            registry=r,
        )
        self.verified_at = Gauge(
            "strangler_mover_last_verification_timestamp_seconds",
            "When the last verification ended",
            ["move"],
            registry=r,
        )
        self.stream_lag = Gauge(
            "strangler_mover_stream_lag_seconds",
            "Per stream (monolith_to_service, service_to_monolith): age of the oldest "
            "change not yet applied (0 when none)",
            ["move", "stream"],
            registry=r,
        )
        self.hold = Histogram(
            "strangler_mover_ownership_hold_seconds",
            "Per handover: from marking the slots moving to the new owner accepting writes",
            ["move"],
            buckets=HOLD_BUCKETS,
            registry=r,
        )
        self.phase = Gauge(
            "strangler_mover_phase", "1 for the move's current phase", ["move", "phase"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
