"""Prometheus metrics of the proxy, served at ``/_strangler/metrics``.

With ``PROMETHEUS_MULTIPROC_DIR`` set (the proxy's gunicorn config does it),
every worker writes its samples there and a scrape sums them all.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


class Metrics:
    """The proxy's instruments, on a registry of their own (tests build many)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "strangler_requests",
            "Requests by route, upstream and status",
            ["route", "upstream", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "strangler_request_seconds",
            "Time to the end of the response",
            ["route", "upstream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.shadows = Counter(
            "strangler_shadow", "Shadow comparisons by outcome", ["route", "outcome"], registry=r
        )
        self.breaker = Gauge(
            "strangler_breaker_state",
            "0 closed, 1 half-open, 2 open",
            ["upstream"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.revision = Gauge(
            "strangler_route_revision",
            "Route table revision a worker serves",
            registry=r,
            multiprocess_mode="livemin",
        )

    def observe(self, route: str, upstream: str, status: int, seconds: float) -> None:
        self.requests.labels(route, upstream, str(status)).inc()
        self.latency.labels(route, upstream).observe(seconds)

    def shadow(self, route: str, outcome: str) -> None:
        self.shadows.labels(route, outcome).inc()

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
