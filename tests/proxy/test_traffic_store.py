"""The traffic the dashboard draws, summed by the database per route and per
step — on SQLite and PostgreSQL, whose date arithmetic differs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from servicekit.db import create_engine, utcnow
from strangler_proxy import orm
from strangler_proxy.repository import RouteStore
from strangler_proxy.traffic import COUNTS, LATENCY_BOUNDS_MS
from tests.support.databases import fresh_database, migrate

STEP = 5


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[RouteStore]:
    with fresh_database(request.param, tmp_path, "proxy_traffic") as url:
        migrate("proxy", url)
        engine = create_engine(url)
        yield RouteStore(engine)
        engine.dispose()


def flushed(store: RouteStore, at: dt.datetime, route: str, worker: str, **counts: int) -> None:
    """A row as a worker's flush writes it (``add_traffic``), but at ``at``."""
    latency = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    latency[3] = counts.get("requests", 0)
    row = {"route": route, "worker": worker, "at": at, **_ZERO, **counts, "latency": latency}
    with store.engine.begin() as connection:
        connection.execute(orm.traffic.insert(), [row])


_ZERO = dict.fromkeys(COUNTS, 0)


def test_counts_are_summed_per_route_and_step_over_every_worker(store):
    since = utcnow().replace(microsecond=0) - dt.timedelta(seconds=60)
    flushed(store, since + dt.timedelta(seconds=1), "a", "w1", requests=3, via_monolith=3)
    flushed(store, since + dt.timedelta(seconds=2), "a", "w2", requests=4, via_service=4)
    flushed(store, since + dt.timedelta(seconds=7), "a", "w1", requests=5, errors=1)
    flushed(store, since - dt.timedelta(seconds=7), "a", "w1", requests=100)  # before: left out

    series = sorted(store.traffic_series(since, STEP), key=lambda row: row["step"])

    assert [(row["step"], row["requests"]) for row in series] == [(0, 7), (1, 5)]
    assert (series[0]["via_monolith"], series[0]["via_service"]) == (3, 4)
    assert series[1]["errors"] == 1


def test_recent_latency_histograms_come_back_per_route(store):
    now = utcnow()
    flushed(store, now - dt.timedelta(seconds=2), "a", "w1", requests=2)
    flushed(store, now - dt.timedelta(seconds=30), "a", "w1", requests=9)

    histograms = store.latency_since(now - dt.timedelta(seconds=10))

    assert [(route, buckets[3]) for route, buckets in histograms] == [("a", 2)]
