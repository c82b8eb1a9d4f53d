"""The composition root of the proxy: the one place that builds and wires the
database, the route table, the upstreams, the recorder, the shadower, the
dispatcher, the admin app and the control loop.

Data flows one way, from here down: the dispatcher reads the route table
from a holder that the control loop swaps, and hands records, shadow
outcomes and mismatches to queues that the control loop drains. Nothing
below calls back up.
"""

from __future__ import annotations

import logging
import os
import queue
from collections.abc import Mapping
from typing import Any

from servicekit.db import create_engine
from servicekit.signing import Keyring
from strangler_proxy import admin, config
from strangler_proxy.control import ControlLoop
from strangler_proxy.datagate import DataPolicy
from strangler_proxy.datamoves import DataMoves
from strangler_proxy.dispatch import Dispatcher, OwnershipHolder, TableHolder
from strangler_proxy.domain import Breaker, DemotionPolicy, RouteTable
from strangler_proxy.metrics import Metrics
from strangler_proxy.recording import Recorder
from strangler_proxy.repository import RouteStore, load_route_file
from strangler_proxy.scheduling import default_policy
from strangler_proxy.shadowing import Mismatch, Shadower
from strangler_proxy.traffic import Traffic
from strangler_proxy.upstream import Upstream
from strangler_proxy.wsgibridge import WsgiBridge

__all__ = ["Proxy", "bootstrap"]

logger = logging.getLogger(__name__)

#: Threads serving the admin API (it reads the database; the loop must not).
ADMIN_THREADS = 4


class Proxy:
    """The wired proxy: the dispatcher gunicorn's worker serves (``proxy.app``) and what
    the admin API and tests reach: ``store``, ``table``, ``refresh()``,
    ``rates()``, ``tokens``, ``metrics``, ``data`` (the data mover) and
    ``data_policy`` (when a route's data lets it leave the monolith)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self._closed = False
        self.worker = f"{os.uname().nodename}:{os.getpid()}:{id(self):x}"
        self.engine = create_engine(settings["DATABASE_URL"])
        self.store = RouteStore(self.engine)
        if self.store.seed(load_route_file(settings["ROUTES_FILE"])):
            logger.info("seeded the route table from %s", settings["ROUTES_FILE"])
        self.routes = TableHolder(self.store.load())
        self.owners = OwnershipHolder()
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
        # The data mover: the state of each move gates a route leaving the monolith.
        self.data = DataMoves(
            settings["MOVER_URL"], Keyring.parse(settings["INTERNAL_KEYS"], owner="the proxy")
        )
        self.data_policy = DataPolicy(
            max_lag=float(settings["DATA_MAX_LAG"]),
            verify_max_age=float(settings["DATA_VERIFY_MAX_AGE"]),
        )
        self.admin = admin.create_admin_app(self)
        self.admin_bridge = WsgiBridge(
            self.admin,
            ADMIN_THREADS,
            float(settings["BODY_TIMEOUT"]),
            # its threads start on demand, from the loop, which may be yielding then
            initializer=default_policy,
        )
        self.app = Dispatcher(
            routes=self.routes,
            owners=self.owners,
            upstreams=self.upstreams,
            admin=self.admin_bridge,
            recorder=self.recorder,
            shadower=self.shadower,
            max_body=int(settings["MAX_BODY_BYTES"]),
            body_timeout=float(settings["BODY_TIMEOUT"]),
            fence_hold=float(settings["FENCE_HOLD"]),
            canary_header=str(settings["CANARY_HEADER"]),
            canary_cookie=str(settings["CANARY_COOKIE"]),
            trusted_peers=frozenset(filter(None, str(settings["TRUSTED_PEERS"]).split(","))),
            on_shutdown=self.close,
        )
        self.control = ControlLoop(
            worker=self.worker,
            store=self.store,
            routes=self.routes,
            owners=self.owners,
            data=self.data,
            metrics=self.metrics,
            traffic=self.traffic,
            recorder=self.recorder,
            upstreams=self.upstreams,
            mismatches=self.mismatches,
            policy=self.policy,
            poll_seconds=float(settings["POLL_SECONDS"]),
            flush_seconds=float(settings["FLUSH_SECONDS"]),
        )
        self.control.start()

    @property
    def table(self) -> RouteTable:
        return self.routes.table

    def refresh(self) -> None:
        """Reload the routes if another worker (or process) changed them."""
        self.control.refresh()

    def rates(self) -> dict[str, dict[str, float]]:
        """Requests per second and 5xx share per route, last 10 s, all workers."""
        return self.control.rates()

    def close(self) -> None:
        """Stop the worker's background work, writing what is pending (once)."""
        if self._closed:
            return
        self._closed = True
        self.control.stop()
        self.shadower.close()
        self.admin_bridge.close()
        for upstream in self.upstreams.values():
            upstream.close()
        self.data.close()
        self.engine.dispose()


def bootstrap(overrides: Mapping[str, Any] | None = None) -> Proxy:
    """Build the proxy from defaults, ``PROXY_*`` variables and ``overrides``."""
    return Proxy(config.load(overrides))
