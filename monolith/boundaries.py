"""The extraction-readiness map: what each module owns, calls and publishes.

Everything here is read from the code itself — the tables from each module's
MetaData, the facades from the import graph (grimp, the engine behind
import-linter), the events from the bus — so the map cannot drift from what
the monolith really does. The architecture tests use the same functions to
fail when a boundary is crossed.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping

import grimp
import sqlalchemy as sa

from servicekit.inbox import EventBus

PACKAGE = "monolith"
#: The only parts of a module that other modules may import.
PUBLIC_PARTS = ("api", "events")


@dataclasses.dataclass(frozen=True)
class ModuleReport:
    name: str
    tables: list[str]
    calls: list[str]
    called_by: list[str]
    publishes: list[str]
    consumes: list[str]
    crossing_foreign_keys: list[str]

    @property
    def extractable(self) -> bool:
        return not self.crossing_foreign_keys


def owner_of(table_name: str, metadata_by_module: Mapping[str, sa.MetaData]) -> str | None:
    """The module owning a table: the one declaring it, else the one it is named for."""
    for module, metadata in metadata_by_module.items():
        if table_name in metadata.tables:
            return module
    for module in metadata_by_module:
        if table_name.startswith(f"{module}_"):
            return module
    return None


def crossing_foreign_keys(metadata_by_module: Mapping[str, sa.MetaData]) -> list[str]:
    """Foreign keys from one module's table to a table it does not own."""
    found = []
    for module, metadata in metadata_by_module.items():
        for table in metadata.tables.values():
            for fk in table.foreign_keys:
                target = fk.target_fullname.split(".")[0]
                if target not in metadata.tables:
                    owner = owner_of(target, metadata_by_module) or "an unknown module"
                    found.append(
                        f"{table.name}.{fk.parent.name} -> {fk.target_fullname}: "
                        f"module {module} must not reference a table of {owner}"
                    )
    return found


def crossing_foreign_keys_in_database(
    engine: sa.Engine, metadata_by_module: Mapping[str, sa.MetaData]
) -> list[str]:
    """The same rule, checked on the schema the migrations really built."""
    inspector = sa.inspect(engine)
    found = []
    for table_name in inspector.get_table_names():
        module = owner_of(table_name, metadata_by_module)
        for fk in inspector.get_foreign_keys(table_name):
            target_owner = owner_of(fk["referred_table"], metadata_by_module)
            if module != target_owner:
                found.append(
                    f"{table_name}({', '.join(fk['constrained_columns'])}) -> "
                    f"{fk['referred_table']}: module {module} must not reference a table "
                    f"of {target_owner}"
                )
    return found


def facade_imports(modules: list[str]) -> dict[str, set[str]]:
    """module -> the other modules' public parts it imports (e.g. 'users.api')."""
    graph = grimp.build_graph(PACKAGE)
    calls: dict[str, set[str]] = {module: set() for module in modules}
    for importer in modules:
        for imported in modules:
            if importer == imported:
                continue
            for part in PUBLIC_PARTS:
                target = f"{PACKAGE}.{imported}.{part}"
                if target not in graph.modules:
                    continue
                importers = graph.find_modules_that_directly_import(target)
                if any(m.startswith(f"{PACKAGE}.{importer}.") for m in importers):
                    calls[importer].add(f"{imported}.{part}")
    return calls


def module_map(metadata_by_module: Mapping[str, sa.MetaData], bus: EventBus) -> list[ModuleReport]:
    modules = list(metadata_by_module)
    calls = facade_imports(modules)
    crossing = crossing_foreign_keys(metadata_by_module)
    consumed: dict[str, list[str]] = {module: [] for module in modules}
    for event_type, handlers in bus.subscriptions().items():
        for handler in handlers:
            module = handler.split(".")[1]
            consumed.setdefault(module, []).append(event_type)
    reports = []
    for module in modules:
        events_module = (
            importlib.import_module(f"{PACKAGE}.{module}.events")
            if _has(module, "events")
            else None
        )
        published = [e.type_name() for e in getattr(events_module, "PUBLISHED", ())]
        reports.append(
            ModuleReport(
                name=module,
                tables=sorted(metadata_by_module[module].tables),
                calls=sorted(calls[module]),
                called_by=sorted(
                    other
                    for other in modules
                    if any(c.startswith(f"{module}.") for c in calls[other])
                ),
                publishes=published,
                consumes=sorted(set(consumed.get(module, []))),
                crossing_foreign_keys=[c for c in crossing if f"module {module} " in c],
            )
        )
    return reports


def _has(module: str, part: str) -> bool:
    try:
        importlib.import_module(f"{PACKAGE}.{module}.{part}")
    except ModuleNotFoundError:
        return False
    return True


def render(reports: list[ModuleReport]) -> str:
    lines = []
    for report in reports:
        verdict = "ready to extract" if report.extractable else "NOT extractable"
        lines.append(f"{report.name}  ({verdict})")
        for label, values in (
            ("tables", report.tables),
            ("calls", report.calls),
            ("called by", report.called_by),
            ("publishes", report.publishes),
            ("consumes", report.consumes),
            ("crossing FKs", report.crossing_foreign_keys),
        ):
            lines.append(f"  {label:<13}{', '.join(values) if values else '-'}")
        lines.append("")
    return "\n".join(lines)
