"""The monolith's migrations: up from empty, down to nothing, up again — and
no drift between the models and the migrations. On SQLite and PostgreSQL."""

from __future__ import annotations

import argparse

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from monolith.bootstrap import MODULE_METADATA
from servicekit.db import create_engine
from tests.support.databases import alembic_config, fresh_database

MODULE_TABLES = {name for m in MODULE_METADATA.values() for name in m.tables}


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request, tmp_path):
    with fresh_database(request.param, tmp_path, "migrations") as url:
        yield url


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(empty_url):
    config = alembic_config("monolith", empty_url)

    command.upgrade(config, "heads")
    assert tables(empty_url) == MODULE_TABLES
    command.downgrade(config, "base")
    assert tables(empty_url) == set()
    command.upgrade(config, "heads")
    assert tables(empty_url) == MODULE_TABLES


def test_models_and_migrations_do_not_drift(empty_url):
    command.upgrade(alembic_config("monolith", empty_url), "heads")
    engine = create_engine(empty_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, list(MODULE_METADATA.values()))
    engine.dispose()

    assert differences == [], "models changed without a migration: " + repr(differences)


def test_each_module_owns_one_branch_of_history():
    script = ScriptDirectory.from_config(alembic_config("monolith", "sqlite://"))

    labels = {label for rev in script.walk_revisions() for label in rev.branch_labels}

    assert labels == set(MODULE_METADATA)
    assert len(script.get_heads()) == len(MODULE_METADATA)


def test_the_archive_waits_for_the_decision_and_the_drop_for_its_confirmation(tmp_path):
    """The decommission's environment: refused on a monolith whose billing is
    in use; with the decision recorded, billing's tables are renamed, not
    dropped; the drop asks for it in words."""
    url = f"sqlite:///{tmp_path / 'monolith.db'}"
    command.upgrade(alembic_config("monolith", url), "heads")
    decommission = alembic_config("monolith_decommission", url)

    with pytest.raises(RuntimeError, match="strangler data complete billing"):
        command.upgrade(decommission, "billing_archive")
    assert "billing_invoices" in tables(url)

    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO billing_ownership (slot, owner, state, epoch, changed_at) "
                "VALUES (0, 'service', 'retired', 1, '2026-11-29 00:00:00')"
            )
        )
    engine.dispose()
    command.upgrade(decommission, "billing_archive")

    left = tables(url)
    assert not {t for t in left if t.startswith("billing_")}
    assert "archived_billing_invoices" in left and "users_accounts" in left
    command.upgrade(alembic_config("monolith", url), "heads")  # make migrate still works

    with pytest.raises(RuntimeError, match="confirm=drop-archived-billing"):
        command.upgrade(decommission, "billing_drop_archive")
    decommission.cmd_opts = argparse.Namespace(x=["confirm=drop-archived-billing"])
    command.upgrade(decommission, "billing_drop_archive")
    assert not {t for t in tables(url) if "billing" in t}
