"""Billing's two copies keep the same tables: declared (``orm.metadata``) and
as their migrations build them. The data mover copies rows between the two
databases as they are, so any difference here would be a silent partial copy.

The comparison is :mod:`tests.support.schema`; the planted tests change one
side and see it name the table and the column, index or constraint.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from extracted.billing_service.billing import orm as service_orm
from monolith.billing import orm as monolith_orm
from servicekit.db import create_engine, new_metadata
from tests.support.databases import fresh_database, migrate
from tests.support.schema import (
    database_differences,
    describe_database,
    describe_metadata,
    metadata_differences,
)

SIDES = ("monolith", "service")
#: Each module's tables carry its name as a prefix; in the monolith's database
#: this is how billing's tables are told from users' and notifications'.
BILLING_TABLE_PREFIX = "billing_"
#: What billing's tables hold, each kind at least once: if reflection stopped
#: seeing one of these, the comparison would pass without looking.
ASPECTS_OF_INVOICES = {
    "column currency",
    "primary key",
    "unique (subscription_id, period_start)",
    "check ck_billing_invoices_not_overpaid",
    "foreign key (subscription_id)",
    "index ix_billing_invoices_created",
}


def billing_tables(name: str) -> bool:
    return name.startswith(BILLING_TABLE_PREFIX)


def copied(metadata: sa.MetaData) -> sa.MetaData:
    """An independent copy of ``metadata``, to plant a difference in."""
    copy = new_metadata()
    for table in metadata.sorted_tables:
        table.to_metadata(copy)
    return copy


@pytest.fixture(params=["sqlite", "postgres"])
def migrated(request: pytest.FixtureRequest, tmp_path) -> Iterator[dict[str, str]]:
    """Fresh databases of both sides on one backend, built by their own Alembic
    environments: side to URL."""
    with (
        fresh_database(request.param, tmp_path, "parity_monolith") as monolith_url,
        fresh_database(request.param, tmp_path, "parity_service") as service_url,
    ):
        migrate("monolith", monolith_url)
        migrate("billing_service", service_url)
        yield {"monolith": monolith_url, "service": service_url}


def execute(url: str, statement: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(statement))
    finally:
        engine.dispose()


# --- the declared tables ------------------------------------------------------


def test_both_copies_declare_the_same_tables():
    described = describe_metadata(monolith_orm.metadata)

    assert {"billing_plans", "billing_invoices", "billing_payments"} <= set(described)
    assert set(described["billing_invoices"]) >= ASPECTS_OF_INVOICES
    assert metadata_differences(monolith_orm.metadata, service_orm.metadata, names=SIDES) == []


def test_a_changed_column_type_is_named():
    planted = copied(service_orm.metadata)
    planted.tables["billing_invoices"].c.currency.type = sa.String(4)

    found = metadata_differences(monolith_orm.metadata, planted, names=SIDES)

    assert found == [
        "billing_invoices: column currency: VARCHAR(3) NOT NULL (monolith)"
        " != VARCHAR(4) NOT NULL (service)"
    ]


def test_a_column_that_became_nullable_is_named():
    planted = copied(monolith_orm.metadata)
    planted.tables["billing_payments"].c.amount_minor.nullable = True

    found = metadata_differences(planted, service_orm.metadata, names=SIDES)

    assert [line.split(": ")[:2] for line in found] == [["billing_payments", "column amount_minor"]]


def test_a_type_that_differs_on_one_database_only_is_named():
    # BigInteger on both sides, but only one keeps it on SQLite: the with_variant kind of drift.
    planted = copied(service_orm.metadata)
    planted.tables["billing_plans"].c.price_minor.type = sa.BigInteger().with_variant(
        sa.Integer(), "sqlite"
    )

    found = metadata_differences(monolith_orm.metadata, planted, names=SIDES)

    assert found == [
        "billing_plans: column price_minor: BIGINT NOT NULL (monolith)"
        " != [sqlite INTEGER, postgresql BIGINT] NOT NULL (service)"
    ]


def test_a_dropped_check_constraint_is_named():
    planted = copied(service_orm.metadata)
    table = planted.tables["billing_payments"]
    [check] = [c for c in table.constraints if isinstance(c, sa.CheckConstraint)]
    table.constraints.discard(check)

    found = metadata_differences(monolith_orm.metadata, planted, names=SIDES)

    assert found == [
        "billing_payments: check ck_billing_payments_amount_positive: only in monolith"
    ]


# --- the migrated databases ---------------------------------------------------


def test_both_migrations_build_the_same_billing_tables(migrated):
    monolith = describe_database(migrated["monolith"], include=billing_tables)

    assert set(monolith) == set(monolith_orm.metadata.tables)
    assert set(monolith["billing_invoices"]) >= ASPECTS_OF_INVOICES
    assert (
        database_differences(
            migrated["monolith"], migrated["service"], include=billing_tables, names=SIDES
        )
        == []
    )


def test_a_column_missing_from_one_database_is_named(migrated):
    execute(migrated["service"], "ALTER TABLE billing_invoices DROP COLUMN voided_at")

    found = database_differences(
        migrated["monolith"], migrated["service"], include=billing_tables, names=SIDES
    )

    assert found == ["billing_invoices: column voided_at: only in monolith"]


def test_an_index_missing_from_one_database_is_named(migrated):
    execute(migrated["monolith"], "DROP INDEX ix_billing_payments_invoice")

    found = database_differences(
        migrated["monolith"], migrated["service"], include=billing_tables, names=SIDES
    )

    assert found == ["billing_payments: index ix_billing_payments_invoice: only in service"]
