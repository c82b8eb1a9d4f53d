"""Shadow mode: a copy of a safe request goes to the service, and the two
answers are compared — without the primary ever waiting for any of it.

The copy is sent only once the primary's response has been handed to the
client (so the two never compete, and the primary's bytes are never
delayed), on the event loop, bounded by ``SHADOW_IN_FLIGHT`` and sampled by
``SHADOW_SAMPLE``; anything over the bound is dropped and counted. Answers
that are the same bytes (the usual case once the service is right) match
there and then; the others are compared (JSON parsing, the diff) on a thread
of its own, fed by a bounded queue — waking it for two equal byte strings
cost more than the comparison. Outcomes go to the traffic counts and the
metrics, and mismatches to a queue the background thread stores. Data flows
one way.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import random
import threading
from typing import NamedTuple

from strangler_proxy.domain import Route, compare
from strangler_proxy.metrics import Metrics
from strangler_proxy.traffic import Traffic
from strangler_proxy.upstream import Upstream, UpstreamFailed

__all__ = ["Mismatch", "Shadower"]

logger = logging.getLogger(__name__)

SHADOW_HEADER = (b"x-strangler-shadow", b"1")
#: Shadow comparisons look at bodies up to this size; larger ones are skipped.
SHADOW_BODY_LIMIT = 256 * 1024
#: Comparisons waiting for the comparing thread; more are dropped.
COMPARE_QUEUE = 256


class Mismatch(NamedTuple):
    """A shadow comparison that failed, as the background thread stores it."""

    route: str
    request_id: str
    method: str
    path: str
    monolith_status: int
    service_status: int
    monolith_body: bytes
    service_body: bytes
    diff: list[str]


class _Pair(NamedTuple):
    route: Route
    request_id: str
    method: str
    target: str
    primary: tuple[int, bytes]
    shadow: tuple[int, bytes]


class Shadower:
    """Sends shadow copies and compares the answers."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        traffic: Traffic,
        mismatches: queue.SimpleQueue[Mismatch],
        in_flight: int,
        sample: float,
        timeout: float,
    ) -> None:
        self.metrics = metrics
        self.traffic = traffic
        self.mismatches = mismatches
        self.limit = in_flight
        self.sample = sample
        self.timeout = timeout
        self.in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._pairs: queue.Queue[_Pair | None] = queue.Queue(COMPARE_QUEUE)
        self._thread = threading.Thread(target=self._compare_forever, name="shadow-compare")
        self._thread.daemon = True
        self._thread.start()

    def wanted(self, sample: float | None = None) -> bool:
        """Take this request's copy? (the route's sample, else the default,
        and the in-flight bound)"""
        if self.in_flight >= self.limit:
            return False
        share = self.sample if sample is None else sample
        return share >= 1.0 or random.random() < share

    def send(
        self,
        upstream: Upstream,
        route: Route,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        request_id: str,
        primary: tuple[int, bytes],
    ) -> None:
        """Start the copy in the background; the caller never waits for it."""
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(
            self._run(
                upstream, route, method, target, [*headers, SHADOW_HEADER], request_id, primary
            )
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def skipped(self, route: Route, outcome: str = "skipped") -> None:
        self.metrics.shadow(route.name, outcome)

    async def _run(
        self,
        upstream: Upstream,
        route: Route,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        request_id: str,
        primary: tuple[int, bytes],
    ) -> None:
        try:
            response = await upstream.send(
                method, target, headers, b"", retry=False, timeout=self.timeout
            )
            try:
                body = await response.read(SHADOW_BODY_LIMIT)
            finally:
                response.close()
        except (UpstreamFailed, OSError) as exc:
            self.metrics.shadow(route.name, "failed")
            logger.info("shadow of %s failed: %s", route.name, exc)
            return
        finally:
            self.in_flight -= 1
        if body is None:
            self.metrics.shadow(route.name, "skipped")
            return
        if (response.status, body) == primary:
            self._counted(route, equal=True)  # nothing to parse: no thread to wake
            return
        pair = _Pair(
            route, request_id, method, target.decode("latin-1"), primary, (response.status, body)
        )
        try:
            self._pairs.put_nowait(pair)
        except queue.Full:
            self.metrics.shadow(route.name, "dropped")

    def _compare_forever(self) -> None:
        while (pair := self._pairs.get()) is not None:
            try:
                self._compare(pair)
            except Exception:
                logger.exception("shadow comparison failed for %s", pair.route.name)

    def _compare(self, pair: _Pair) -> None:
        route = pair.route
        result = compare(*pair.primary, *pair.shadow, route.ignore)
        self._counted(route, equal=result.equal)
        if not result.equal:
            self.mismatches.put(
                Mismatch(
                    route=route.name,
                    request_id=pair.request_id,
                    method=pair.method,
                    path=pair.target,
                    monolith_status=pair.primary[0],
                    service_status=pair.shadow[0],
                    monolith_body=pair.primary[1],
                    service_body=pair.shadow[1],
                    diff=result.diff,
                )
            )

    def _counted(self, route: Route, *, equal: bool) -> None:
        self.traffic.shadow(route.name, mismatch=not equal)
        self.metrics.shadow(route.name, "match" if equal else "mismatch")

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._pairs.put(None)
        self._thread.join(timeout=5)
