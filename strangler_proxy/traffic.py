"""Per-worker request counts, flushed to the route table's database every
second so that rates and auto-demotion see every worker of every proxy.

Besides the counts, each flush carries which upstream answered (the split the
dashboard draws) and a coarse latency histogram (its p50/p99): a bisect and a
few increments under the lock the counts already take, so the request path
pays well under a microsecond more.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from typing import Any

from strangler_proxy.domain import MONOLITH

__all__ = ["COUNTS", "LATENCY_BOUNDS_MS", "Traffic"]

COUNTS = (
    "requests",
    "errors",
    "service_requests",
    "service_errors",
    "shadows",
    "mismatches",
    "via_monolith",
    "via_service",
)
#: Upper bounds (milliseconds) of the latency buckets; one more bucket holds
#: everything slower. Coarse on purpose: a percentile is reported as the
#: bound of its bucket, which is what a person watching a move needs.
LATENCY_BOUNDS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


def _empty() -> dict[str, Any]:
    return {**dict.fromkeys(COUNTS, 0), "latency": [0] * (len(LATENCY_BOUNDS_MS) + 1)}


class Traffic:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, dict[str, Any]] = defaultdict(_empty)

    def _add(self, route: str, name: str, error_name: str, error: bool) -> None:
        with self._lock:
            counts = self._counts[route]
            counts[name] += 1
            if error:
                counts[error_name] += 1

    def request(
        self,
        route: str,
        *,
        error: bool,
        upstream: str | None = None,
        seconds: float | None = None,
    ) -> None:
        """A request answered on ``route``: by ``upstream`` (the monolith or a
        service), in ``seconds``; both optional."""
        slot = None if seconds is None else bisect.bisect_left(LATENCY_BOUNDS_MS, seconds * 1000)
        with self._lock:
            counts = self._counts[route]
            counts["requests"] += 1
            if error:
                counts["errors"] += 1
            if upstream is not None:
                counts["via_monolith" if upstream == MONOLITH else "via_service"] += 1
            if slot is not None:
                counts["latency"][slot] += 1

    def service(self, route: str, *, error: bool) -> None:
        """A request the service side answered (or failed to): demotion's input."""
        self._add(route, "service_requests", "service_errors", error)

    def shadow(self, route: str, *, mismatch: bool) -> None:
        self._add(route, "shadows", "mismatches", mismatch)

    def take(self) -> dict[str, dict[str, Any]]:
        """The counts since the last take, and reset."""
        with self._lock:
            counts, self._counts = self._counts, defaultdict(_empty)
        return dict(counts)
