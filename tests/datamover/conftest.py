"""Fixtures: ``pair`` — the monolith's and the billing service's databases,
built by their own migrations, on SQLite and on PostgreSQL — and ``mover``,
the data mover's app on them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from datamover.app import create_app, runners_of
from tests.conftest import BACKENDS
from tests.datamover.support import FAST, Pair, seed
from tests.support.databases import fresh_database, migrate


@pytest.fixture(params=BACKENDS)
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pair]:
    """Both databases migrated; the monolith's seeded with billing data."""
    with (
        fresh_database(request.param, tmp_path, "mover_source") as source,
        fresh_database(request.param, tmp_path, "mover_target") as target,
    ):
        migrate("monolith", source)
        migrate("billing_service", target)
        seed(source)
        yield Pair(request.param, source, target)


@pytest.fixture
def mover(pair: Pair) -> Iterator[Flask]:
    """The data mover's app on ``pair``; its moves stop with the test."""
    app = create_app({"SOURCE_URL": pair.source, "TARGET_URL": pair.target, **FAST})
    yield app
    for runner in runners_of(app).values():
        runner.close()
