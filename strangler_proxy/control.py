"""A worker's control plane: the background thread beside the event loop.

Every ``POLL_SECONDS`` it reloads the route table if its revision moved (and
swaps it into the holder the data plane reads) and stores the shadow
mismatches the data plane queued; every ``FLUSH_SECONDS`` it writes the
pending records (access log, metrics), reports this worker's traffic counts
and demotes any route that fails. All of the database work happens here or
in the admin API's threads, never on the event loop.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import queue
import threading
import time

from servicekit.db import utcnow
from servicekit.errors import Conflict
from strangler_proxy.datamoves import DataMoves as DataMover
from strangler_proxy.dispatch import OwnershipHolder, TableHolder
from strangler_proxy.domain import (
    MONOLITH,
    DemotionPolicy,
    Ownership,
    Route,
    demotion_reason,
    desired_ownership,
)
from strangler_proxy.metrics import BREAKER_STATES, Metrics
from strangler_proxy.recording import Recorder
from strangler_proxy.repository import RouteStore
from strangler_proxy.shadowing import Mismatch
from strangler_proxy.traffic import Traffic
from strangler_proxy.upstream import Upstream

__all__ = ["ControlLoop"]

logger = logging.getLogger(__name__)

DEMOTION_ACTOR = "strangler-proxy"
#: How long per-worker traffic rows are kept (longer than any window).
TRAFFIC_RETENTION = dt.timedelta(minutes=10)
#: The live rates in the listing are over this many seconds.
RATE_WINDOW_SECONDS = 10.0
#: Bytes of each body kept with a stored mismatch.
SAMPLE_BYTES = 4096


class ControlLoop:
    """The route table's poller, the records' writer and the demoter."""

    def __init__(
        self,
        *,
        worker: str,
        store: RouteStore,
        routes: TableHolder,
        owners: OwnershipHolder,
        data: DataMover,
        metrics: Metrics,
        traffic: Traffic,
        recorder: Recorder,
        upstreams: dict[str, Upstream],
        mismatches: queue.SimpleQueue[Mismatch],
        policy: DemotionPolicy,
        poll_seconds: float,
        flush_seconds: float,
    ) -> None:
        self.worker = worker
        self.store = store
        self.routes = routes
        self.owners = owners
        self.data = data
        self.metrics = metrics
        self.traffic = traffic
        self.recorder = recorder
        self.upstreams = upstreams
        self.mismatches = mismatches
        self.policy = policy
        self.poll_seconds = poll_seconds
        self.flush_seconds = flush_seconds
        self._forgot_at = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="route-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        since_flush = 0.0
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
                self.follow_ownership()
                self.store_mismatches()
                since_flush += self.poll_seconds
                if since_flush >= self.flush_seconds:
                    since_flush = 0.0
                    self.flush()
            except Exception:  # a database hiccup must not end the worker's polling
                logger.exception("route table poll failed")
        self.flush_last()

    def flush_last(self) -> None:
        """A stopping worker writes what its last requests left behind: their
        log lines and metrics, and their counts in the shared traffic table."""
        self.recorder.flush()
        try:
            self.store.add_traffic(self.worker, self.traffic.take())
        except Exception:  # the database may be what is going away
            logger.exception("could not store the last traffic counts")

    def follow_ownership(self) -> None:
        """Learn who owns each data move's records (the dispatcher routes by
        it), and ask the mover for the ownership the routes' mode now wants.

        Asking from here, not from the admin API, is what makes every change
        go through the fence — a person's, the dashboard's, an auto-demotion's
        — and what repairs a request that did not reach the mover."""
        routes: dict[str, Route] = {}
        for route in self.routes.table.routes:
            if route.data is not None:
                routes.setdefault(route.data, route)
        for move, route in routes.items():
            status = self.data.status(move)
            self.owners.by_move[move] = Ownership.from_status(status)
            reported = (status or {}).get("ownership") or {}
            if status is None or status.get("phase") != "streaming" or "desired" not in reported:
                continue
            wanted = desired_ownership(route)
            asked = (reported.get("desired"), reported.get("desired_plans"))
            if asked == wanted or (asked == (None, None) and wanted == (0, MONOLITH)):
                continue
            code, answer = self.data.command(
                move, "ownership", {"service_buckets": wanted[0], "plans": wanted[1]}
            )
            if code >= 400:
                logger.warning("the mover refused ownership %s of %s: %s", wanted, move, answer)
            else:
                logger.info("asked the mover for %s of %s's records on the service", wanted, move)

    def refresh(self) -> None:
        """Reload the routes if another worker (or process) changed them."""
        if self.store.revision() != self.routes.table.revision:
            self.routes.table = self.store.load()
            self.metrics.revision.set(self.routes.table.revision)
            logger.info("now serving route table revision %s", self.routes.table.revision)

    def flush(self) -> None:
        """Write pending records, report this worker's traffic, then demote
        any route that fails."""
        self.recorder.flush()
        self.store.add_traffic(self.worker, self.traffic.take())
        for name, upstream in self.upstreams.items():
            self.metrics.breaker.labels(name).set(BREAKER_STATES[upstream.breaker.state])
        self.demote_failing_routes()
        if time.monotonic() - self._forgot_at > TRAFFIC_RETENTION.total_seconds() / 10:
            self._forgot_at = time.monotonic()
            self.store.forget_traffic(utcnow() - TRAFFIC_RETENTION)

    def demote_failing_routes(self) -> None:
        table = self.routes.table
        watched = [r for r in table.routes if r.mode in ("shadow", "canary", "service")]
        now = utcnow()
        for route in watched:
            since = now - dt.timedelta(seconds=self.policy.window_seconds)
            if route.changed_at is not None:
                since = max(since, route.changed_at)
            counts = self.store.traffic_since(since, route=route.name).get(route.name, {})
            reason = demotion_reason(
                route,
                service_requests=counts.get("service_requests", 0),
                service_errors=counts.get("service_errors", 0),
                shadows=counts.get("shadows", 0),
                mismatches=counts.get("mismatches", 0),
                policy=self.policy,
            )
            if reason is None:
                continue
            try:
                self.store.change(
                    route.name,
                    mode="monolith",
                    percent=None,
                    expected_revision=route.revision,
                    actor=DEMOTION_ACTOR,
                    reason=reason,
                )
            except Conflict:
                continue  # another worker demoted it first, or a human changed it
            logger.warning("route %s demoted to the monolith: %s", route.name, reason)
            self.refresh()

    def store_mismatches(self) -> None:
        while True:
            try:
                mismatch = self.mismatches.get_nowait()
            except queue.Empty:
                return
            self.store.record_mismatch(
                route=mismatch.route,
                request_id=mismatch.request_id,
                method=mismatch.method,
                path=mismatch.path,
                monolith_status=mismatch.monolith_status,
                service_status=mismatch.service_status,
                monolith_body=_sample(mismatch.monolith_body),
                service_body=_sample(mismatch.service_body),
                diff=mismatch.diff,
            )

    def rates(self) -> dict[str, dict[str, float]]:
        since = utcnow() - dt.timedelta(seconds=RATE_WINDOW_SECONDS)
        rates = {}
        for route, counts in self.store.traffic_since(since).items():
            requests = counts["requests"]
            rates[route] = {
                "rate": round(requests / RATE_WINDOW_SECONDS, 2),
                "error_rate": round(counts["errors"] / requests, 4) if requests else 0.0,
            }
        return rates


def _sample(body: bytes) -> str:
    text = body[:SAMPLE_BYTES].decode("utf-8", errors="replace")
    try:
        return json.dumps(json.loads(body), indent=1)[:SAMPLE_BYTES]
    except ValueError:
        return text
