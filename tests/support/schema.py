"""Compare two schemas table by table, and name every difference.

Two copies of billing keep their data in tables that must stay the same,
because rows move between them as they are. This is the comparison: of two
declared ``MetaData`` (the monolith's ``billing.orm`` and the service's), or of
two migrated databases, reflected. Each table is described as a flat mapping
of *aspect* to value — ``column currency`` → ``VARCHAR(3) NOT NULL``,
``check ck_...`` → its SQL, ``foreign key (plan_id)`` → its target, ... — and
two descriptions are compared aspect by aspect, so a difference is reported as
the table and the column (or constraint, or index) where it is::

    billing_invoices: column currency: VARCHAR(3) NOT NULL (monolith) != VARCHAR(4) ...
    billing_invoices: column voided_at: only in monolith

Like is compared with like: declared with declared (types compiled for
SQLite and for PostgreSQL, where ``with_variant`` may differ; a type that
differs between the two reads ``[sqlite INTEGER, postgresql BIGINT]``),
reflected with reflected from the same kind of database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from servicekit.db import create_engine

__all__ = [
    "DECLARED_DIALECTS",
    "TableDescription",
    "database_differences",
    "describe_database",
    "describe_metadata",
    "differences",
    "metadata_differences",
]

#: A table as compared: aspect ("column id", "primary key", "index ix_..") to value.
TableDescription = dict[str, str]

#: Declared types are compiled for both databases the project runs on.
DECLARED_DIALECTS: tuple[Dialect, ...] = (sqlite.dialect(), postgresql.dialect())

#: Alembic's bookkeeping, not part of any module's schema.
ALEMBIC_VERSION_TABLE = "alembic_version"


def describe_table(table: sa.Table, dialects: Iterable[Dialect]) -> TableDescription:
    """``table``'s columns, keys, constraints and indexes, as comparable text."""
    dialects = tuple(dialects)
    described: TableDescription = {}
    for column in table.columns:
        compiled = {d.name: column.type.compile(dialect=d) for d in dialects}
        types = (
            next(iter(compiled.values()))
            if len(set(compiled.values())) == 1
            else "[" + ", ".join(f"{name} {type_}" for name, type_ in compiled.items()) + "]"
        )
        null = "NULL" if column.nullable else "NOT NULL"
        default = column.server_default
        default_text = (
            f" DEFAULT {_text(default.arg)}" if isinstance(default, sa.DefaultClause) else ""
        )
        described[f"column {column.name}"] = f"{types} {null}{default_text}"
    described["primary key"] = _columns(table.primary_key.columns)
    for constraint in table.constraints:
        if isinstance(constraint, sa.UniqueConstraint):
            described[f"unique {_columns(constraint.columns)}"] = str(constraint.name)
        elif isinstance(constraint, sa.CheckConstraint):
            described[f"check {constraint.name}"] = _text(constraint.sqltext)
        elif isinstance(constraint, sa.ForeignKeyConstraint):
            target = ", ".join(element.target_fullname for element in constraint.elements)
            described[f"foreign key {_columns(constraint.columns)}"] = (
                f"{target} name={constraint.name} ondelete={constraint.ondelete}"
            )
    for index in table.indexes:
        options = " ".join(
            f"{key}={_text(value)}" for key, value in sorted(index.dialect_kwargs.items())
        )
        kind = "UNIQUE " if index.unique else ""
        described[f"index {index.name}"] = f"{kind}{_columns(index.columns)} {options}".rstrip()
    return described


def describe_metadata(
    metadata: sa.MetaData,
    *,
    dialects: Iterable[Dialect] = DECLARED_DIALECTS,
    include: Callable[[str], bool] = lambda name: True,
) -> dict[str, TableDescription]:
    """Every table of ``metadata`` whose name ``include`` accepts, described."""
    dialects = tuple(dialects)
    return {
        name: describe_table(table, dialects)
        for name, table in metadata.tables.items()
        if include(name)
    }


def describe_database(
    url: str, *, include: Callable[[str], bool] = lambda name: True
) -> dict[str, TableDescription]:
    """The tables of the database at ``url`` whose name ``include`` accepts,
    reflected and described (types compiled for that database)."""
    engine = create_engine(url)
    try:
        reflected = sa.MetaData()
        reflected.reflect(
            engine, only=lambda name, _: name != ALEMBIC_VERSION_TABLE and include(name)
        )
        return describe_metadata(reflected, dialects=[engine.dialect])
    finally:
        engine.dispose()


def differences(
    left: Mapping[str, TableDescription],
    right: Mapping[str, TableDescription],
    *,
    names: tuple[str, str] = ("left", "right"),
) -> list[str]:
    """One line per table, column, key, constraint or index that differs, in
    table order; ``[]`` when the two schemas are the same. ``names`` say which
    side is which in the lines."""
    left_name, right_name = names
    found: list[str] = []
    for table in sorted(left.keys() | right.keys()):
        if table not in right:
            found.append(f"{table}: table only in {left_name}")
            continue
        if table not in left:
            found.append(f"{table}: table only in {right_name}")
            continue
        mine, theirs = left[table], right[table]
        for aspect in sorted(mine.keys() | theirs.keys()):
            if aspect not in theirs:
                found.append(f"{table}: {aspect}: only in {left_name}")
            elif aspect not in mine:
                found.append(f"{table}: {aspect}: only in {right_name}")
            elif mine[aspect] != theirs[aspect]:
                found.append(
                    f"{table}: {aspect}: {mine[aspect]} ({left_name})"
                    f" != {theirs[aspect]} ({right_name})"
                )
    return found


def metadata_differences(
    left: sa.MetaData, right: sa.MetaData, *, names: tuple[str, str] = ("left", "right")
) -> list[str]:
    """What differs between two declared schemas (see :func:`differences`)."""
    return differences(describe_metadata(left), describe_metadata(right), names=names)


def database_differences(
    left_url: str,
    right_url: str,
    *,
    include: Callable[[str], bool] = lambda name: True,
    names: tuple[str, str] = ("left", "right"),
) -> list[str]:
    """What differs between the tables ``include`` accepts in two databases."""
    return differences(
        describe_database(left_url, include=include),
        describe_database(right_url, include=include),
        names=names,
    )


def _columns(columns: Iterable[sa.Column]) -> str:  # type: ignore[type-arg]
    return "(" + ", ".join(column.name for column in columns) + ")"


def _text(value: object) -> str:
    """SQL text of a default, a check or an index option, however it was given."""
    return str(value.text if isinstance(value, sa.TextClause) else value)
