"""All SQL of the route table: load, seed, change with optimistic locking and
an audit entry, shadow mismatches and the traffic window."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from servicekit.db import reader, utcnow
from servicekit.errors import Conflict, NotFound, RuleViolated
from strangler_proxy import orm
from strangler_proxy.domain import (
    DEFAULT_IGNORE,
    Route,
    RouteTable,
    validate_change,
    validate_sample,
)

__all__ = [
    "UNCHANGED",
    "MoveCompleted",
    "RouteStore",
    "StaleRevision",
    "load_route_file",
    "validate_change",
]

SEED_ACTOR = "seed"


class _Unchanged(enum.Enum):
    UNCHANGED = "unchanged"


#: A setting a change leaves as it is.
UNCHANGED = _Unchanged.UNCHANGED


class StaleRevision(Conflict):
    code = "stale_revision"


class MoveCompleted(Conflict):
    """The route's data move ended: the monolith's copy of its records is archived."""

    code = "move_completed"


def load_route_file(path: str | Path) -> list[Route]:
    """Routes declared in the repo (TOML, ``[[route]]`` tables), in match order."""
    with open(path, "rb") as handle:
        declared = tomllib.load(handle).get("route", [])
    routes = []
    for item in declared:
        mode = item.get("mode", "monolith")
        routes.append(
            Route(
                name=item["name"],
                pattern=item["pattern"],
                methods=frozenset(m.upper() for m in item.get("methods", ["*"])),
                owner=item["owner"],
                service=item["service"],
                mode=mode,
                percent=validate_change(mode, item.get("percent")),
                fallback=bool(item.get("fallback", True)),
                ignore=tuple(item.get("ignore", DEFAULT_IGNORE)),
                data=item.get("data"),
                shadow_sample=validate_sample(item.get("shadow_sample")),
            )
        )
    return routes


def as_dict(route: Route) -> dict[str, Any]:
    return {
        "name": route.name,
        "pattern": route.pattern,
        "methods": sorted(route.methods),
        "owner": route.owner,
        "service": route.service,
        "mode": route.mode,
        "percent": route.percent,
        "fallback": route.fallback,
        "ignore": list(route.ignore),
        "data": route.data,
        "shadow_sample": route.shadow_sample,
        "revision": route.revision,
    }


class RouteStore:
    """The route table in its database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._reader = reader(engine)

    # --- the table ---------------------------------------------------------

    def seed(self, routes: Iterable[Route]) -> bool:
        """Fill an empty table on first start; False when it was already there."""
        try:
            return self._seed(list(routes))
        except sa.exc.IntegrityError:
            return False  # another worker seeded it at the same moment

    def _seed(self, routes: list[Route]) -> bool:
        now = utcnow()
        with self.engine.begin() as connection:
            if connection.execute(sa.select(orm.state.c.revision)).first() is not None:
                return False
            connection.execute(orm.state.insert().values(id=1, revision=1))
            for position, route in enumerate(routes):
                row = {**as_dict(route), "revision": 1}
                connection.execute(
                    orm.routes.insert().values(
                        **{**row, "methods": ",".join(row["methods"])},
                        position=position,
                        updated_at=now,
                        updated_by=SEED_ACTOR,
                    )
                )
                connection.execute(
                    orm.audit.insert().values(
                        route=route.name,
                        revision=1,
                        actor=SEED_ACTOR,
                        at=now,
                        before=None,
                        after=_audited(row),
                        reason="seeded from the route file",
                    )
                )
        return True

    def revision(self) -> int:
        with self._reader.connect() as connection:
            return int(
                connection.execute(sa.select(orm.state.c.revision)).scalar_one_or_none() or 0
            )

    def load(self) -> RouteTable:
        with self._reader.begin() as connection:
            revision = connection.execute(sa.select(orm.state.c.revision)).scalar_one_or_none()
            rows = connection.execute(sa.select(orm.routes).order_by(orm.routes.c.position)).all()
        return RouteTable((_route(row._mapping) for row in rows), int(revision or 0))

    def change(
        self,
        name: str,
        *,
        mode: str,
        percent: int | None,
        expected_revision: int,
        actor: str,
        reason: str,
        shadow_sample: float | _Unchanged | None = UNCHANGED,
    ) -> Route:
        """Set a route's mode (and, if given, its shadow sample); refused when
        ``expected_revision`` is not the route's current one (someone changed
        it since the caller looked)."""
        stored_percent = validate_change(mode, percent)
        if shadow_sample is not UNCHANGED:
            validate_sample(shadow_sample)
        if not reason.strip():
            raise RuleViolated("a change needs a reason", reason=["required"])
        with self.engine.begin() as connection:
            row = connection.execute(sa.select(orm.routes).where(orm.routes.c.name == name)).first()
            if row is None:
                raise NotFound(f"no route named {name!r}")
            before = _route(row._mapping)
            sample = before.shadow_sample if shadow_sample is UNCHANGED else shadow_sample
            if before.data is not None and mode != "service":
                self._refuse_if_completed(connection, before, mode)
            if before.revision != expected_revision:
                raise StaleRevision(
                    f"route {name!r} is at revision {before.revision}, "
                    f"not {expected_revision}: look again and retry",
                    current_revision=before.revision,
                )
            revision = int(
                connection.execute(
                    orm.state.update()
                    .values(revision=orm.state.c.revision + 1)
                    .returning(orm.state.c.revision)
                ).scalar_one()
            )
            changed = connection.execute(
                orm.routes.update()
                .where(orm.routes.c.name == name, orm.routes.c.revision == expected_revision)
                .values(
                    mode=mode,
                    percent=stored_percent,
                    shadow_sample=sample,
                    revision=revision,
                    updated_at=utcnow(),
                    updated_by=actor,
                )
            ).rowcount
            if changed != 1:  # someone else won between our read and our write
                raise StaleRevision(f"route {name!r} changed concurrently: look again and retry")
            after = dataclasses.replace(
                before, mode=mode, percent=stored_percent, shadow_sample=sample, revision=revision
            )
            self._audit(connection, before, after, actor, reason)
            if before.data is not None:
                # A user's records of one data move are one set: every route
                # that serves them moves with this one (one mode, one percent).
                self._move_siblings(connection, after, actor, reason)
        return after

    def _refuse_if_completed(self, connection: sa.Connection, route: Route, mode: str) -> None:
        # In the change's transaction: a person, the dashboard and an
        # auto-demotion are all refused here, whatever the data mover says.
        t = orm.completed_moves.c
        completed = connection.execute(
            sa.select(t.completed_at, t.completed_by).where(t.move == route.data)
        ).first()
        if completed is not None:
            raise MoveCompleted(
                f"route {route.name!r} cannot go to {mode}: {route.data}'s move was completed "
                f"({completed.completed_at:%Y-%m-%d %H:%M} UTC, by {completed.completed_by}): "
                f"the monolith's {route.data} tables are archived and its {route.data} code "
                "answers 410; the route stays on the service",
                move=route.data,
            )

    def complete_move(self, move: str, actor: str) -> None:
        """Record that ``move``'s journey ended (idempotent): its routes stay on the service."""
        t = orm.completed_moves
        with self.engine.begin() as connection:
            if connection.execute(sa.select(t.c.move).where(t.c.move == move)).first() is None:
                connection.execute(
                    t.insert().values(move=move, completed_at=utcnow(), completed_by=actor)
                )

    def completed_moves(self) -> set[str]:
        with self._reader.connect() as connection:
            return set(connection.execute(sa.select(orm.completed_moves.c.move)).scalars())

    def _move_siblings(
        self, connection: sa.Connection, moved: Route, actor: str, reason: str
    ) -> None:
        t = orm.routes.c
        rows = connection.execute(
            sa.select(orm.routes).where(t.data == moved.data, t.name != moved.name)
        ).all()
        for row in rows:
            before = _route(row._mapping)
            if (before.mode, before.percent) == (moved.mode, moved.percent):
                continue
            connection.execute(
                orm.routes.update()
                .where(t.name == before.name)
                .values(
                    mode=moved.mode,
                    percent=moved.percent,
                    revision=moved.revision,
                    updated_at=utcnow(),
                    updated_by=actor,
                )
            )
            after = dataclasses.replace(
                before, mode=moved.mode, percent=moved.percent, revision=moved.revision
            )
            self._audit(
                connection,
                before,
                after,
                actor,
                f"{reason} (with {moved.name}: {moved.data}'s routes move together)",
            )

    def _audit(
        self, connection: sa.Connection, before: Route, after: Route, actor: str, reason: str
    ) -> None:
        connection.execute(
            orm.audit.insert().values(
                route=after.name,
                revision=after.revision,
                actor=actor,
                at=utcnow(),
                before=_audited(as_dict(before)),
                after=_audited(as_dict(after)),
                reason=reason,
            )
        )

    def recent_history(self, limit: int = 50) -> list[dict[str, Any]]:
        """The audit trail of every route, newest first."""
        query = sa.select(orm.audit).order_by(orm.audit.c.id.desc()).limit(limit)
        with self._reader.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def history(self, name: str, limit: int = 50) -> list[dict[str, Any]]:
        query = (
            sa.select(orm.audit)
            .where(orm.audit.c.route == name)
            .order_by(orm.audit.c.id.desc())
            .limit(limit)
        )
        with self._reader.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    # --- shadow mismatches ---------------------------------------------------

    def record_mismatch(self, **values: Any) -> None:
        with self.engine.begin() as connection:
            connection.execute(orm.mismatches.insert().values(at=utcnow(), **values))

    def mismatches(self, name: str, limit: int = 20) -> list[dict[str, Any]]:
        query = (
            sa.select(orm.mismatches)
            .where(orm.mismatches.c.route == name)
            .order_by(orm.mismatches.c.id.desc())
            .limit(limit)
        )
        with self._reader.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def latest_mismatches(self) -> list[dict[str, Any]]:
        """The newest mismatch of each route (one query, however many routes)."""
        m = orm.mismatches.c
        newest = sa.select(sa.func.max(m.id)).group_by(m.route).scalar_subquery()
        query = sa.select(orm.mismatches).where(m.id.in_(newest)).order_by(m.id.desc())
        with self._reader.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    # --- traffic -------------------------------------------------------------

    def add_traffic(self, worker: str, counts: Mapping[str, Mapping[str, int]]) -> None:
        now = utcnow()
        rows = [{"route": route, "worker": worker, "at": now, **c} for route, c in counts.items()]
        if rows:
            with self.engine.begin() as connection:
                connection.execute(orm.traffic.insert(), rows)

    def traffic_since(
        self, since: dt.datetime, route: str | None = None
    ) -> dict[str, dict[str, int]]:
        t = orm.traffic.c
        columns = (
            "requests",
            "errors",
            "service_requests",
            "service_errors",
            "shadows",
            "mismatches",
        )
        query = (
            sa.select(t.route, *(sa.func.sum(t[c]).label(c) for c in columns))
            .where(t.at >= since, *([t.route == route] if route else []))
            .group_by(t.route)
        )
        with self._reader.connect() as connection:
            return {
                row.route: {c: int(getattr(row, c) or 0) for c in columns}
                for row in connection.execute(query)
            }

    def traffic_series(self, since: dt.datetime, step_seconds: int) -> list[dict[str, Any]]:
        """Every worker's counts since ``since``, summed per route and per step
        of ``step_seconds`` (step 0 starts at ``since``): the dashboard's chart.

        Summed by the database: 50 busy routes on two workers flush 18,000
        rows in three minutes, too many to fetch every 1.5 s.
        """
        t = orm.traffic.c
        step = self._step(t.at, since, step_seconds)
        columns = ("requests", "errors", "via_monolith", "via_service", "shadows")
        query = (
            sa.select(t.route, step.label("step"), *(sa.func.sum(t[c]).label(c) for c in columns))
            .where(t.at >= since)
            .group_by(t.route, step)
        )
        with self._reader.connect() as connection:
            return [
                {"route": row.route, "step": int(row.step)}
                | {c: int(getattr(row, c) or 0) for c in columns}
                for row in connection.execute(query)
            ]

    def _step(self, at: Any, since: dt.datetime, step_seconds: int) -> Any:
        # Whole seconds since ``since``, divided down to a step; written inline
        # (no bound parameters) so GROUP BY sees the same expression as SELECT.
        start = sa.literal_column(str(int(since.timestamp())), sa.Integer)
        step = sa.literal_column(str(int(step_seconds)), sa.Integer)
        if self.engine.dialect.name == "postgresql":
            seconds = sa.cast(sa.func.floor(sa.extract("epoch", at)), sa.Integer)
        else:  # SQLite: strftime('%s') gives whole epoch seconds
            seconds = sa.cast(sa.func.strftime(sa.literal_column("'%s'"), at), sa.Integer)
        return (seconds - start) // step

    def latency_since(self, since: dt.datetime) -> list[tuple[str, list[int]]]:
        """Each flushed latency histogram since ``since`` (a few seconds' worth)."""
        t = orm.traffic.c
        query = sa.select(t.route, t.latency).where(t.at >= since, t.latency.is_not(None))
        with self._reader.connect() as connection:
            return [(row.route, list(row.latency)) for row in connection.execute(query)]

    def forget_traffic(self, before: dt.datetime) -> None:
        with self.engine.begin() as connection:
            connection.execute(orm.traffic.delete().where(orm.traffic.c.at < before))


def _audited(route: Any) -> dict[str, Any]:
    audited = {key: route[key] for key in ("mode", "percent", "revision")}
    if route["shadow_sample"] is not None:  # shown only on the routes that have one
        audited["shadow_sample"] = route["shadow_sample"]
    return audited


def _route(row: Any) -> Route:
    return Route(
        name=row["name"],
        pattern=row["pattern"],
        methods=frozenset(filter(None, row["methods"].split(","))),
        owner=row["owner"],
        service=row["service"],
        mode=row["mode"],
        percent=row["percent"],
        fallback=row["fallback"],
        ignore=tuple(row["ignore"]),
        data=row["data"],
        shadow_sample=row["shadow_sample"],
        revision=row["revision"],
        changed_at=row["updated_at"],
    )
