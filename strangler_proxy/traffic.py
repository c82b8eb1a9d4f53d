"""Per-worker request counts, flushed to the route table's database every
second so that rates and auto-demotion see every worker of every proxy."""

from __future__ import annotations

import threading
from collections import defaultdict

__all__ = ["COUNTS", "Traffic"]

COUNTS = ("requests", "errors", "service_requests", "service_errors", "shadows", "mismatches")


class Traffic:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTS, 0))

    def _add(self, route: str, name: str, error_name: str, error: bool) -> None:
        with self._lock:
            counts = self._counts[route]
            counts[name] += 1
            if error:
                counts[error_name] += 1

    def request(self, route: str, *, error: bool) -> None:
        self._add(route, "requests", "errors", error)

    def service(self, route: str, *, error: bool) -> None:
        """A request the service side answered (or failed to): demotion's input."""
        self._add(route, "service_requests", "service_errors", error)

    def shadow(self, route: str, *, mismatch: bool) -> None:
        self._add(route, "shadows", "mismatches", mismatch)

    def take(self) -> dict[str, dict[str, int]]:
        """The counts since the last take, and reset."""
        with self._lock:
            counts, self._counts = self._counts, defaultdict(lambda: dict.fromkeys(COUNTS, 0))
        return dict(counts)
