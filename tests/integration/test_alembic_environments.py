"""What every Alembic environment does through ``servicekit.migrations``: where
the URL comes from, ``--sql`` offline mode, and ``-x module`` narrowing."""

from __future__ import annotations

import argparse
import io

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.util import CommandError

from servicekit.db import create_engine
from tests.support.databases import alembic_config, migrate
from tests.support.processes import ROOT

ENVIRONMENTS = {
    "monolith": "MONOLITH_DATABASE_URL",
    "billing_service": "BILLING_SERVICE_DATABASE_URL",
    "proxy": "PROXY_DATABASE_URL",
}


def with_x(config: Config, **arguments: str) -> Config:
    """``config`` as if ``-x name=value`` had been given on the command line."""
    config.cmd_opts = argparse.Namespace(x=[f"{name}={value}" for name, value in arguments.items()])
    return config


def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.parametrize(("environment", "variable"), sorted(ENVIRONMENTS.items()))
def test_the_environment_variable_names_the_database(environment, variable, tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'from-env.db'}"
    monkeypatch.setenv(variable, url)

    command.upgrade(Config(str(ROOT / "alembic.ini"), ini_section=environment), "heads")

    assert "alembic_version" in table_names(url)


@pytest.mark.parametrize("environment", sorted(ENVIRONMENTS))
def test_x_url_wins_over_the_configured_url(environment, tmp_path):
    configured = f"sqlite:///{tmp_path / 'configured.db'}"
    chosen = f"sqlite:///{tmp_path / 'chosen.db'}"

    command.upgrade(with_x(alembic_config(environment, configured), url=chosen), "heads")

    assert "alembic_version" in table_names(chosen)
    assert table_names(configured) == set()


@pytest.mark.parametrize("environment", sorted(ENVIRONMENTS))
def test_offline_mode_prints_the_schema_as_sql(environment):
    config = alembic_config(environment, "sqlite://")
    config.output_buffer = io.StringIO()

    command.upgrade(config, "heads", sql=True)

    assert "CREATE TABLE alembic_version" in config.output_buffer.getvalue()


def test_x_module_narrows_autogenerate_to_that_modules_tables(tmp_path):
    url = f"sqlite:///{tmp_path / 'monolith.db'}"
    migrate("monolith", url)

    # Compared with billing's tables alone, the users' and notifications'
    # tables in the database would read as "removed" — unless narrowed out.
    command.check(with_x(alembic_config("monolith", url), module="billing"))
    command.check(alembic_config("monolith", url))


def test_x_module_that_does_not_exist_is_refused(tmp_path):
    config = with_x(alembic_config("monolith", f"sqlite:///{tmp_path / 'm.db'}"), module="nope")

    with pytest.raises(CommandError, match="nope"):
        command.upgrade(config, "heads")


#: Heads each environment may have: the monolith one per module (its
#: branches), every other one a single line of history.
EXPECTED_HEADS: dict[str, int | set[str]] = {
    "monolith": {"users", "billing", "notifications"},
    "monolith_decommission": 1,
    "billing_service": 1,
    "proxy": 1,
}


@pytest.mark.parametrize("environment", sorted(EXPECTED_HEADS))
def test_each_environment_has_one_line_of_history_per_branch(environment: str) -> None:
    """Two changes written in parallel that revise the same migration make two
    heads: ``upgrade heads`` hides it, the next autogenerate trips on it."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(environment, "sqlite://"))
    heads = [script.get_revision(head) for head in script.get_heads()]
    expected = EXPECTED_HEADS[environment]
    if isinstance(expected, set):
        labels = [label for head in heads if head for label in head.branch_labels]
        assert sorted(labels) == sorted(expected), labels
    else:
        assert len(heads) == expected, [head.revision for head in heads if head]
