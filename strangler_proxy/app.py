"""The one place that wires the proxy: database, route table, upstreams,
the forwarding app, the admin app and the worker's background thread."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flask import g

from servicekit.db import create_engine, utcnow
from servicekit.errors import Conflict
from servicekit.signing import Keyring
from servicekit.web import error_response
from strangler_proxy import admin, config
from strangler_proxy.datagate import DataPolicy
from strangler_proxy.datamoves import DataMoves
from strangler_proxy.domain import Breaker, DemotionPolicy, RouteTable, compare, demotion_reason
from strangler_proxy.forwarding import Forwarder, Upstream
from strangler_proxy.metrics import BREAKER_STATES, Metrics
from strangler_proxy.repository import RouteStore, load_route_file
from strangler_proxy.traffic import Traffic

__all__ = ["Proxy", "create_app"]

logger = logging.getLogger(__name__)

DEMOTION_ACTOR = "strangler-proxy"
#: How long per-worker traffic rows are kept (longer than any window).
TRAFFIC_RETENTION = dt.timedelta(minutes=10)
#: The live rates in the listing are over this many seconds.
RATE_WINDOW_SECONDS = 10.0


class Proxy:
    """The WSGI app gunicorn serves, with what tests need to reach into."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.worker = f"{os.uname().nodename}:{os.getpid()}:{id(self):x}"
        self.engine = create_engine(settings["DATABASE_URL"])
        self.store = RouteStore(self.engine)
        if self.store.seed(load_route_file(settings["ROUTES_FILE"])):
            logger.info("seeded the route table from %s", settings["ROUTES_FILE"])
        self._table = self.store.load()
        self.metrics = Metrics()
        self.metrics.revision.set(self._table.revision)
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
        self.data = DataMoves(
            settings["MOVER_URL"], Keyring.parse(settings["INTERNAL_KEYS"], owner="the proxy")
        )
        self.data_policy = DataPolicy(
            max_lag=float(settings["DATA_MAX_LAG"]),
            verify_max_age=float(settings["DATA_VERIFY_MAX_AGE"]),
        )
        self.shadows = ThreadPoolExecutor(
            int(settings["SHADOW_THREADS"]), thread_name_prefix="shadow"
        )
        self.admin = admin.create_admin_app(self)
        self.forwarder = Forwarder(
            settings=settings,
            table=lambda: self._table,
            upstreams=self.upstreams,
            admin=self.admin,
            errors=self._error,
            metrics=self.metrics,
            traffic=self.traffic,
            shadows=self.shadows,
            on_mismatch=self._compare,
        )
        self._forgot_at = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._background, name="route-poller", daemon=True)
        self._thread.start()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return self.forwarder(environ, start_response)

    @property
    def table(self) -> RouteTable:
        return self._table

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.shadows.shutdown(wait=False, cancel_futures=True)
        for upstream in self.upstreams.values():
            upstream.pool.close()
        self.data.close()
        self.engine.dispose()

    # --- the route table ------------------------------------------------------

    def refresh(self) -> None:
        """Reload the routes if another worker (or process) changed them."""
        if self.store.revision() != self._table.revision:
            self._table = self.store.load()
            self.metrics.revision.set(self._table.revision)
            logger.info("now serving route table revision %s", self._table.revision)

    def _background(self) -> None:
        poll = float(self.settings["POLL_SECONDS"])
        flush_every = float(self.settings["FLUSH_SECONDS"])
        since_flush = 0.0
        while not self._stop.wait(poll):
            try:
                self.refresh()
                since_flush += poll
                if since_flush >= flush_every:
                    since_flush = 0.0
                    self.flush()
            except Exception:  # a database hiccup must not end the worker's polling
                logger.exception("route table poll failed")

    def flush(self) -> None:
        """Report this worker's traffic, then demote any route that fails."""
        self.store.add_traffic(self.worker, self.traffic.take())
        for name, upstream in self.upstreams.items():
            self.metrics.breaker.labels(name).set(BREAKER_STATES[upstream.breaker.state])
        self.demote_failing_routes()
        if time.monotonic() - self._forgot_at > TRAFFIC_RETENTION.total_seconds() / 10:
            self._forgot_at = time.monotonic()
            self.store.forget_traffic(utcnow() - TRAFFIC_RETENTION)

    def demote_failing_routes(self) -> None:
        watched = [r for r in self._table.routes if r.mode in ("shadow", "canary", "service")]
        if not watched:
            return
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

    # --- shadow ---------------------------------------------------------------

    def _compare(self, shadow: Any, primary: tuple[int, bytes], other: tuple[int, bytes]) -> None:
        route = shadow.route
        result = compare(primary[0], primary[1], other[0], other[1], route.ignore)
        self.traffic.shadow(route.name, mismatch=not result.equal)
        self.metrics.shadow(route.name, "match" if result.equal else "mismatch")
        if result.equal:
            return
        self.store.record_mismatch(
            route=route.name,
            request_id=shadow.request_id,
            method=shadow.method,
            path=shadow.target,
            monolith_status=primary[0],
            service_status=other[0],
            monolith_body=_sample(primary[1]),
            service_body=_sample(other[1]),
            diff=result.diff,
        )

    # --- errors ---------------------------------------------------------------

    def _error(
        self,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        status: int,
        message: str,
        request_id: str,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Answer with servicekit's one error envelope (built in the admin app's context)."""
        with self.admin.test_request_context():
            g.request_id = request_id
            response = error_response(
                status, message, headers={"X-Request-ID": request_id, **(headers or {})}
            )
        return response(environ, start_response)


SAMPLE_BYTES = 4096


def _sample(body: bytes) -> str:
    text = body[:SAMPLE_BYTES].decode("utf-8", errors="replace")
    try:
        return json.dumps(json.loads(body), indent=1)[:SAMPLE_BYTES]
    except ValueError:
        return text


def create_app(overrides: Mapping[str, Any] | None = None) -> Proxy:
    """Build the proxy from defaults, ``PROXY_*`` variables and ``overrides``."""
    return Proxy(config.load(overrides))
