"""The tables a move copies, read from the databases themselves, and the
check that both sides have the same shape before a single row is copied."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

__all__ = ["SchemaMismatch", "TableSpec", "matching_tables"]


class SchemaMismatch(Exception):
    """The two databases disagree on a table's shape: copying would be partial."""


@dataclasses.dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]

    @property
    def values(self) -> tuple[str, ...]:
        """The columns that are not part of the primary key."""
        return tuple(c for c in self.columns if c not in self.key)


@dataclasses.dataclass(frozen=True)
class _Shape:
    columns: tuple[str, ...]
    types: dict[str, str]
    key: tuple[str, ...]


def _reflect(engine: Engine, names: Iterable[str]) -> dict[str, _Shape]:
    inspector = sa.inspect(engine)
    present = set(inspector.get_table_names())
    shapes = {}
    for name in names:
        if name in present:
            columns = inspector.get_columns(name)
            shapes[name] = _Shape(
                columns=tuple(c["name"] for c in columns),
                types={c["name"]: _type_name(c["type"]) for c in columns},
                key=tuple(inspector.get_pk_constraint(name)["constrained_columns"]),
            )
    return shapes


def _type_name(column_type: sa.types.TypeEngine[object]) -> str:
    # The generic family is what matters: VARCHAR(36) and VARCHAR(64) both
    # carry a UUID, but TEXT against INTEGER would not survive a copy.
    return type(column_type).__name__.upper()


def matching_tables(
    source: Engine, target: Engine, names: Iterable[str], *, sides: tuple[str, str]
) -> list[TableSpec]:
    """The specs of ``names``, in order; :class:`SchemaMismatch` names the first
    table or column that is not the same on both sides."""
    names = list(names)
    shapes = (_reflect(source, names), _reflect(target, names))
    specs = []
    for name in names:
        for side, reflected in zip(sides, shapes, strict=True):
            if name not in reflected:
                raise SchemaMismatch(f"table {name} does not exist in the {side}'s database")
        a, b = shapes[0][name], shapes[1][name]
        for (one, other), (here, there) in (((a, b), sides), ((b, a), sides[::-1])):
            for column in one.columns:
                if column not in other.columns:
                    raise SchemaMismatch(
                        f"table {name}: column {column} exists in the {here}'s database "
                        f"but not in the {there}'s"
                    )
        for column in a.columns:
            if a.types[column] != b.types[column]:
                raise SchemaMismatch(
                    f"table {name}: column {column} is {a.types[column]} in the {sides[0]}'s "
                    f"database but {b.types[column]} in the {sides[1]}'s"
                )
        if a.key != b.key or not a.key:
            raise SchemaMismatch(
                f"table {name}: primary key {list(a.key)} in the {sides[0]}'s database, "
                f"{list(b.key)} in the {sides[1]}'s (a move needs the same, non-empty key)"
            )
        specs.append(TableSpec(name=name, columns=a.columns, key=a.key))
    return specs
