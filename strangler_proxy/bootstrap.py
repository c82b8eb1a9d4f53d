"""The composition root of the proxy: the one place that builds and wires the
database, the route table, the upstreams, the recorder, the shadower, the
dispatcher and the admin app — and the worker's background thread.

Data flows one way, from here down: the dispatcher reads the route table
from a holder this module swaps, and hands records, shadow outcomes and
mismatches to queues this module drains. Nothing below calls back up.

The background thread, every ``POLL_SECONDS``: reloads the route table if
its revision moved; every ``FLUSH_SECONDS``: writes pending records (access
log, metrics), reports traffic counts, demotes failing routes and stores
shadow mismatches.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Mapping
from typing import Any

from servicekit.db import create_engine, utcnow
from servicekit.errors import Conflict
from strangler_proxy import admin, config
from strangler_proxy.dispatch import Dispatcher, TableHolder
from strangler_proxy.domain import Breaker, DemotionPolicy, RouteTable, demotion_reason
from strangler_proxy.metrics import BREAKER_STATES, Metrics
from strangler_proxy.recording import Recorder
from strangler_proxy.repository import RouteStore, load_route_file
from strangler_proxy.server import WsgiBridge
from strangler_proxy.shadowing import Mismatch, Shadower
from strangler_proxy.traffic import Traffic
from strangler_proxy.upstream import Upstream

__all__ = ["Proxy", "bootstrap"]

logger = logging.getLogger(__name__)

DEMOTION_ACTOR = "strangler-proxy"
#: How long per-worker traffic rows are kept (longer than any window).
TRAFFIC_RETENTION = dt.timedelta(minutes=10)
#: The live rates in the listing are over this many seconds.
RATE_WINDOW_SECONDS = 10.0
#: Threads serving the admin API (it reads the database; the loop must not).
ADMIN_THREADS = 4
#: Bytes of each body kept with a stored mismatch.
SAMPLE_BYTES = 4096


class Proxy:
    """The wired proxy: the ASGI app gunicorn serves (``proxy.app``) and what
    the admin API and tests reach: ``store``, ``table``, ``refresh()``,
    ``rates()``, ``tokens``, ``metrics``."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.worker = f"{os.uname().nodename}:{os.getpid()}:{id(self):x}"
        self.engine = create_engine(settings["DATABASE_URL"])
        self.store = RouteStore(self.engine)
        if self.store.seed(load_route_file(settings["ROUTES_FILE"])):
            logger.info("seeded the route table from %s", settings["ROUTES_FILE"])
        self.routes = TableHolder(self.store.load())
        self.metrics = Metrics()
        self.metrics.revision.set(self.routes.table.revision)
        self.traffic = Traffic()
        self.tokens = config.token_hashes(settings["TOKENS"])
        self.policy = DemotionPolicy(
            error_rate=float(settings["DEMOTE_ERROR_RATE"]),
            mismatch_rate=float(settings["DEMOTE_MISMATCH_RATE"]),
            min_requests=int(settings["DEMOTE_MIN_REQUESTS"]),
            window_seconds=float(settings["DEMOTE_WINDOW"]),
        )
        self.upstreams = {
            name: Upstream(
                name,
                url,
                pool_size=int(settings["POOL_SIZE"]),
                connect_timeout=float(settings["CONNECT_TIMEOUT"]),
                read_timeout=float(settings["READ_TIMEOUT"]),
                keepalive=float(settings["UPSTREAM_KEEPALIVE"]),
                breaker=Breaker(
                    int(settings["BREAKER_THRESHOLD"]), float(settings["BREAKER_COOLDOWN"])
                ),
            )
            for name, url in config.upstreams(settings).items()
        }
        self.recorder = Recorder(
            self.metrics, self.traffic, access_log=bool(settings["ACCESS_LOG"])
        )
        self.mismatches: queue.SimpleQueue[Mismatch] = queue.SimpleQueue()
        self.shadower = Shadower(
            metrics=self.metrics,
            traffic=self.traffic,
            mismatches=self.mismatches,
            in_flight=int(settings["SHADOW_IN_FLIGHT"]),
            sample=float(settings["SHADOW_SAMPLE"]),
            timeout=float(settings["SHADOW_TIMEOUT"]),
        )
        self.admin = admin.create_admin_app(self)
        self.admin_bridge = WsgiBridge(self.admin, ADMIN_THREADS, int(settings["MAX_BODY_BYTES"]))
        self.app = Dispatcher(
            routes=self.routes,
            upstreams=self.upstreams,
            admin=self.admin_bridge,
            recorder=self.recorder,
            shadower=self.shadower,
            max_body=int(settings["MAX_BODY_BYTES"]),
            body_timeout=float(settings["BODY_TIMEOUT"]),
            canary_header=str(settings["CANARY_HEADER"]),
            canary_cookie=str(settings["CANARY_COOKIE"]),
            trusted_peers=frozenset(filter(None, str(settings["TRUSTED_PEERS"]).split(","))),
        )
        self._forgot_at = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._background, name="route-poller", daemon=True)
        self._thread.start()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    @property
    def table(self) -> RouteTable:
        return self.routes.table

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.shadower.close()
        self.admin_bridge.close()
        for upstream in self.upstreams.values():
            upstream.close()
        self.engine.dispose()

    # --- the route table ------------------------------------------------------

    def refresh(self) -> None:
        """Reload the routes if another worker (or process) changed them."""
        if self.store.revision() != self.routes.table.revision:
            self.routes.table = self.store.load()
            self.metrics.revision.set(self.routes.table.revision)
            logger.info("now serving route table revision %s", self.routes.table.revision)

    def _background(self) -> None:
        poll = float(self.settings["POLL_SECONDS"])
        flush_every = float(self.settings["FLUSH_SECONDS"])
        since_flush = 0.0
        while not self._stop.wait(poll):
            try:
                self.refresh()
                self.store_mismatches()
                since_flush += poll
                if since_flush >= flush_every:
                    since_flush = 0.0
                    self.flush()
            except Exception:  # a database hiccup must not end the worker's polling
                logger.exception("route table poll failed")
        self.recorder.flush()

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


def bootstrap(overrides: Mapping[str, Any] | None = None) -> Proxy:
    """Build the proxy from defaults, ``PROXY_*`` variables and ``overrides``."""
    return Proxy(config.load(overrides))
