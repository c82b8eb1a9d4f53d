"""The route table in its database: seeded once, changed with optimistic
locking, every change audited. On SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from servicekit.db import create_engine
from servicekit.errors import NotFound, RuleViolated
from strangler_proxy import orm
from strangler_proxy.repository import MoveCompleted, RouteStore, StaleRevision, load_route_file
from tests.proxy.conftest import HERE, ROUTES_FILE
from tests.support.databases import alembic_config, fresh_database, migrate


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    with fresh_database(request.param, tmp_path, "proxy") as url:
        migrate("proxy", url)
        engine = create_engine(url)
        store = RouteStore(engine)
        store.seed(load_route_file(ROUTES_FILE))
        yield store
        engine.dispose()


def test_the_seed_fills_an_empty_table_once(store):
    assert store.seed(load_route_file(ROUTES_FILE)) is False

    table = store.load()

    assert table.revision == 1
    assert [r.name for r in table.routes] == ["billing", "users", "differs", "slow", "echo"]
    assert {r.mode for r in table.routes} == {"monolith"}


def test_a_change_bumps_the_revision_and_is_audited(store):
    changed = store.change(
        "billing",
        mode="canary",
        percent=25,
        expected_revision=1,
        actor="billing-team",
        reason="first customers",
    )

    assert (changed.mode, changed.percent, changed.revision) == ("canary", 25, 2)
    assert store.revision() == 2
    assert store.load().by_name["billing"].mode == "canary"
    latest = store.history("billing")[0]
    assert latest["actor"] == "billing-team"
    assert latest["reason"] == "first customers"
    assert latest["before"] == {"mode": "monolith", "percent": 0, "revision": 1}
    assert latest["after"] == {"mode": "canary", "percent": 25, "revision": 2}


def test_a_shadow_sample_is_kept_across_moves_and_audited(store):
    route = store.load().routes[0]
    sampled = store.change(
        route.name,
        mode="shadow",
        percent=None,
        expected_revision=route.revision,
        actor="admin",
        reason="a tenth of the reads",
        shadow_sample=0.1,
    )
    moved = store.change(
        route.name,
        mode="canary",
        percent=10,
        expected_revision=sampled.revision,
        actor="admin",
        reason="on",
    )
    assert moved.shadow_sample == 0.1
    assert store.load().by_name[route.name].shadow_sample == 0.1
    latest = store.history(route.name, limit=2)
    assert latest[0]["after"]["shadow_sample"] == 0.1
    assert latest[1]["before"] == {"mode": "monolith", "percent": 0, "revision": 1}


def test_a_change_based_on_a_stale_revision_is_refused(store):
    store.change(
        "billing", mode="shadow", percent=None, expected_revision=1, actor="a", reason="one"
    )

    with pytest.raises(StaleRevision):
        store.change(
            "billing", mode="service", percent=None, expected_revision=1, actor="b", reason="two"
        )
    assert store.load().by_name["billing"].mode == "shadow"


@pytest.mark.parametrize(
    ("mode", "percent"), [("sideways", None), ("canary", None), ("canary", 101), ("shadow", 30)]
)
def test_a_bad_mode_or_percent_is_refused(store, mode, percent):
    with pytest.raises(RuleViolated):
        store.change(
            "billing", mode=mode, percent=percent, expected_revision=1, actor="a", reason="r"
        )


def test_an_unknown_route_is_not_found(store):
    with pytest.raises(NotFound):
        store.change(
            "nope", mode="service", percent=None, expected_revision=1, actor="a", reason="r"
        )


def test_migrations_go_up_down_and_up_and_match_the_tables(tmp_path):
    url = f"sqlite:///{tmp_path}/migrations.db"
    config = alembic_config("proxy", url)
    command.upgrade(config, "heads")
    command.downgrade(config, "base")
    command.upgrade(config, "heads")

    engine = create_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, orm.metadata)
    engine.dispose()
    assert differences == [], "the proxy's tables changed without a migration"


def test_a_completed_moves_routes_never_leave_the_service(tmp_path):
    """Whoever asks — a person, the dashboard, an auto-demotion — in the change's
    own transaction, whatever the data mover says (it may be down)."""
    url = f"sqlite:///{tmp_path / 'proxy.db'}"
    migrate("proxy", url)
    engine = create_engine(url)
    store = RouteStore(engine)
    store.seed(load_route_file(HERE / "data_routes.toml"))
    store.change(
        "billing", mode="service", percent=None, expected_revision=1, actor="t", reason="r"
    )

    store.complete_move("billing", "billing-team")
    store.complete_move("billing", "billing-team")  # once is enough; twice is harmless

    assert store.completed_moves() == {"billing"}
    for mode, percent in (("monolith", None), ("canary", 10), ("shadow", None)):
        with pytest.raises(MoveCompleted, match="billing's move was completed"):
            store.change(
                "ledger", mode=mode, percent=percent, expected_revision=2, actor="t", reason="r"
            )
    assert {r.mode for r in store.load().routes if r.data == "billing"} == {"service"}
    engine.dispose()
