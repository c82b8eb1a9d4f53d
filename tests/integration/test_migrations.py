"""The monolith's migrations: up from empty, down to nothing, up again — and
no drift between the models and the migrations. On SQLite and PostgreSQL."""

from __future__ import annotations

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
