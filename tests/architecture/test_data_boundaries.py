"""Each module owns its tables: no foreign key and no table shared across modules."""

from __future__ import annotations

import sqlalchemy as sa

from monolith import boundaries
from monolith.bootstrap import MODULE_METADATA
from servicekit.db import create_engine, new_metadata
from tests.support.databases import migrate


def test_no_foreign_key_leaves_its_module():
    crossing = boundaries.crossing_foreign_keys(MODULE_METADATA)
    assert crossing == [], "Each module owns its tables; cross-module foreign keys: " + "; ".join(
        crossing
    )


def test_every_table_is_named_for_the_one_module_that_owns_it():
    owners: dict[str, list[str]] = {}
    for module, metadata in MODULE_METADATA.items():
        for table in metadata.tables:
            owners.setdefault(table, []).append(module)
            assert table.startswith(f"{module}_"), f"{table} does not carry its module's prefix"
    assert all(len(modules) == 1 for modules in owners.values())


def test_a_foreign_key_into_another_module_is_caught_in_the_models():
    billing = new_metadata()
    for table in MODULE_METADATA["billing"].tables.values():
        table.to_metadata(billing)
    sa.Table(
        "billing_sneaky",
        billing,
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users_accounts.id")),
    )

    crossing = boundaries.crossing_foreign_keys({**MODULE_METADATA, "billing": billing})

    assert len(crossing) == 1
    assert "module billing must not reference a table of users" in crossing[0]


def test_a_foreign_key_into_another_module_is_caught_in_the_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'schema.db'}"
    migrate("monolith", url)
    engine = create_engine(url)
    assert boundaries.crossing_foreign_keys_in_database(engine, MODULE_METADATA) == []

    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE billing_sneaky (user_id VARCHAR(36) REFERENCES users_accounts (id))"
        )
    crossing = boundaries.crossing_foreign_keys_in_database(engine, MODULE_METADATA)
    engine.dispose()

    assert crossing == [
        "billing_sneaky(user_id) -> users_accounts: module billing must not reference a table "
        "of users"
    ]
