"""The admin API under ``/_strangler/``: list routes, move one, read its
history and its shadow mismatches; metrics and health. Bearer tokens belong to
teams; a team changes only the routes it owns, the admin team changes all."""

from __future__ import annotations

import hmac
import os
from typing import TYPE_CHECKING, Any, NoReturn

import marshmallow as ma
from flask import Flask, Response, g, request
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from servicekit.db import utcnow
from servicekit.web import ServiceApi, init_service, openapi_settings
from strangler_proxy.config import hash_token
from strangler_proxy.datagate import COMPLETED, reasons_to_complete, reasons_to_stay
from strangler_proxy.domain import ADMIN_TEAM, MODES, Route, may_change
from strangler_proxy.metrics import CONTENT_TYPE_LATEST
from strangler_proxy.repository import UNCHANGED, as_dict

if TYPE_CHECKING:
    from strangler_proxy.bootstrap import Proxy

__all__ = ["create_admin_app"]

PREFIX = "/_strangler"
#: Endpoints anyone on the network may read (a load balancer, Prometheus).
PUBLIC_ENDPOINTS = frozenset({"strangler.health", "strangler.metrics"})


class RouteSchema(ma.Schema):
    name = ma.fields.String()
    pattern = ma.fields.String()
    methods = ma.fields.List(ma.fields.String())
    owner = ma.fields.String()
    service = ma.fields.String()
    mode = ma.fields.String()
    percent = ma.fields.Integer()
    fallback = ma.fields.Boolean()
    ignore = ma.fields.List(ma.fields.String())
    shadow_sample = ma.fields.Float(
        allow_none=True,
        metadata={"description": "Share of safe requests shadowed; null: the proxy's default"},
    )
    data = ma.fields.String(
        allow_none=True, metadata={"description": "The data move whose records the route serves"}
    )
    revision = ma.fields.Integer(metadata={"description": "Send it back to change the route"})
    rate = ma.fields.Float(metadata={"description": "Requests per second, last 10 s"})
    error_rate = ma.fields.Float(metadata={"description": "Share of 5xx, last 10 s"})
    data_state = ma.fields.Dict(
        allow_none=True,
        metadata={"description": "The move's phase, progress, lag and last verdict"},
    )
    gate = ma.fields.List(
        ma.fields.String(),
        metadata={
            "description": "Why the route may not go to canary or service now (empty: it may)"
        },
    )


class RouteListSchema(ma.Schema):
    revision = ma.fields.Integer(metadata={"description": "Revision of the whole table"})
    routes = ma.fields.List(ma.fields.Nested(RouteSchema))


class ChangeSchema(ma.Schema):
    mode = ma.fields.String(required=True, validate=ma.validate.OneOf(MODES))
    percent = ma.fields.Integer(validate=ma.validate.Range(0, 100), allow_none=True)
    reason = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=1000))
    shadow_sample = ma.fields.Float(
        validate=ma.validate.Range(0.0, 1.0),
        allow_none=True,
        metadata={
            "description": "Shadow this share of safe requests (null: the default); "
            "absent: unchanged"
        },
    )
    revision = ma.fields.Integer(
        required=True, metadata={"description": "The route's revision the change is based on"}
    )


class AuditSchema(ma.Schema):
    revision = ma.fields.Integer()
    actor = ma.fields.String()
    at = ma.fields.DateTime()
    before = ma.fields.Dict(allow_none=True)
    after = ma.fields.Dict()
    reason = ma.fields.String()


class MismatchSchema(ma.Schema):
    at = ma.fields.DateTime()
    request_id = ma.fields.String()
    method = ma.fields.String()
    path = ma.fields.String()
    monolith_status = ma.fields.Integer()
    service_status = ma.fields.Integer()
    monolith_body = ma.fields.String()
    service_body = ma.fields.String()
    diff = ma.fields.List(ma.fields.String())


class StartSchema(ma.Schema):
    replace = ma.fields.Boolean(
        load_default=False,
        metadata={"description": "Replace rows the service holds that the move did not copy"},
    )


class LimitSchema(ma.Schema):
    limit = ma.fields.Integer(load_default=20, validate=ma.validate.Range(1, 500))


def create_admin_app(proxy: Proxy) -> Flask:
    app = Flask("strangler_proxy.admin")
    app.config.update(openapi_settings("Strangler proxy admin API", "1.0.0"))
    app.config.update(
        OPENAPI_URL_PREFIX=PREFIX,
        API_SPEC_OPTIONS={
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}],
        },
    )
    api = ServiceApi(app)
    api.register_blueprint(_blueprint(proxy))

    def ready_check() -> None:
        proxy.store.revision()  # raises when the route table's database is unreachable

    init_service(app, api, ready_check=ready_check)
    # Imported here: the dashboard builds on this module's rules (may_change, ChangeSchema).
    from strangler_proxy.dashboard import init_dashboard

    init_dashboard(app, proxy)
    return app


def _blueprint(proxy: Proxy) -> Blueprint:
    blp = Blueprint("strangler", __name__, url_prefix=PREFIX, description="Route toggling")

    @blp.before_request
    def authenticate() -> None:
        if request.endpoint in PUBLIC_ENDPOINTS:
            return
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        team = team_for(proxy.tokens, token) if scheme.lower() == "bearer" else None
        if team is None:
            abort(401, message="a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
        g.team = team

    @blp.get("/health")
    def health() -> dict[str, Any]:
        """Alive, and the route table revision this worker (pid) serves."""
        return {"status": "ok", "revision": proxy.table.revision, "worker": os.getpid()}

    @blp.get("/metrics")
    def metrics() -> Response:
        """Prometheus metrics."""
        return Response(proxy.metrics.render(), content_type=CONTENT_TYPE_LATEST)

    @blp.route("/routes")
    class Routes(MethodView):
        @blp.response(200, RouteListSchema)
        def get(self) -> dict[str, Any]:
            """List routes with their mode and live rates."""
            proxy.refresh()
            rates = proxy.rates()
            table = proxy.table
            states = _data_states(proxy, table.routes)
            return {
                "revision": table.revision,
                "routes": [
                    {
                        **as_dict(r),
                        **rates.get(r.name, {"rate": 0.0, "error_rate": 0.0}),
                        **_data_fields(proxy, r, states),
                    }
                    for r in table.routes
                ],
            }

    @blp.route("/routes/<name>")
    class RouteByName(MethodView):
        @blp.response(200, RouteSchema)
        def get(self, name: str) -> dict[str, Any]:
            """One route."""
            proxy.refresh()
            route = _route(proxy, name)
            return {**as_dict(route), **_data_fields(proxy, route, _data_states(proxy, [route]))}

        @blp.arguments(ChangeSchema)
        @blp.response(200, RouteSchema)
        @blp.alt_response(401, description="No or an unknown bearer token")
        @blp.alt_response(403, description="The route belongs to another team")
        @blp.alt_response(
            409,
            description="The route changed since the given revision, or its data is not "
            "ready for it to leave the monolith (the reasons say what to do)",
        )
        def patch(self, change: dict[str, Any], name: str) -> dict[str, Any]:
            """Move a route: set its mode (and a canary's percent), with a reason."""
            route = _route(proxy, name)
            if not may_change(g.team, route):
                abort(403, message=f"route {name!r} belongs to {route.owner}, not {g.team}")
            status = proxy.data.status(route.data) if route.data else None
            reasons = reasons_to_stay(route, change["mode"], status, proxy.data_policy, utcnow())
            if reasons:
                abort(
                    409,
                    message=f"route {name!r} cannot go to {change['mode']}: " + "; ".join(reasons),
                    errors={"gate": reasons},
                )
            changed = proxy.store.change(
                name,
                mode=change["mode"],
                percent=change.get("percent"),
                expected_revision=change["revision"],
                actor=g.team,
                reason=change["reason"],
                shadow_sample=change.get("shadow_sample", UNCHANGED),
            )
            proxy.refresh()
            return as_dict(changed)

    @blp.route("/routes/<name>/history")
    class History(MethodView):
        @blp.arguments(LimitSchema, location="query")
        @blp.response(200, AuditSchema(many=True))
        def get(self, args: dict[str, Any], name: str) -> list[dict[str, Any]]:
            """Who moved the route, when, from what to what and why (newest first)."""
            _route(proxy, name)
            return proxy.store.history(name, args["limit"])

    @blp.route("/routes/<name>/mismatches")
    class Mismatches(MethodView):
        @blp.arguments(LimitSchema, location="query")
        @blp.response(200, MismatchSchema(many=True))
        def get(self, args: dict[str, Any], name: str) -> list[dict[str, Any]]:
            """Shadow mismatches: both bodies (a sample) and their diff (newest first)."""
            _route(proxy, name)
            return proxy.store.mismatches(name, args["limit"])

    @blp.get("/data")
    def data_moves() -> list[dict[str, Any]]:
        """Every data move the routes depend on: phase, progress, lag, last verdict."""
        moves = sorted({r.data for r in proxy.table.routes if r.data})
        return [proxy.data.status(move) or {"move": move, "phase": "unknown"} for move in moves]

    @blp.get("/data/<move>")
    def data_move(move: str) -> dict[str, Any]:
        """One data move's status, as the data mover reports it."""
        _move_routes(proxy, move)
        status = proxy.data.status(move)
        if status is None:
            _refuse(503, f"the data mover cannot be reached to report on {move!r}")
        return status

    @blp.route("/data/<move>/start")
    class StartMove(MethodView):
        @blp.arguments(StartSchema)
        def post(self, args: dict[str, Any], move: str) -> Any:
            """Copy the move's data to the service and keep it current (capture)."""
            return _command(proxy, move, "start", args)

    @blp.post("/data/<move>/stop")
    def stop_move(move: str) -> Any:
        """Stop capturing the move's changes: the copy stops following."""
        return _command(proxy, move, "stop", {})

    @blp.post("/data/<move>/verify")
    def verify_move(move: str) -> Any:
        """Compare both databases; the verdict appears in the move's status."""
        return _command(proxy, move, "verify", {})

    @blp.post("/data/<move>/complete")
    @blp.alt_response(
        409,
        description="Not yet: the routes are not on the service, the service does not own "
        "every record, or no clean verification followed the last handover (each reason "
        "says what to do)",
    )
    def complete_move(move: str) -> Any:
        """End the journey: the service owns the records for good, the sync stops and
        the monolith's tables are archived; the routes stay on the service."""
        proxy.refresh()
        reasons = reasons_to_complete(move, _move_routes(proxy, move))
        if reasons:
            abort(
                409,
                message=f"{move} cannot be completed: " + "; ".join(reasons),
                errors={"reasons": reasons},
            )
        answer = _command(proxy, move, "complete", {})
        if answer.get("phase") == COMPLETED:
            proxy.store.complete_move(move, g.team)
        return answer

    return blp


def _move_routes(proxy: Proxy, move: str) -> list[Route]:
    routes = [r for r in proxy.table.routes if r.data == move]
    if not routes:
        abort(404, message=f"no route serves the data move {move!r}")
    return routes


def _command(proxy: Proxy, move: str, verb: str, body: dict[str, Any]) -> Any:
    """Send a command to the mover for a team that owns a route of the move."""
    owners = {r.owner for r in _move_routes(proxy, move)}
    if g.team not in owners | {ADMIN_TEAM}:
        abort(403, message=f"the data of {move!r} belongs to {', '.join(sorted(owners))}")
    status, answer = proxy.data.command(move, verb, body)
    if status >= 400:
        abort(status, message=answer.get("message", f"the data mover answered {status}"))
    return answer


def _data_states(proxy: Proxy, routes: Any) -> dict[str, dict[str, Any] | None]:
    return {move: proxy.data.status(move) for move in {r.data for r in routes if r.data}}


def _data_fields(
    proxy: Proxy, route: Route, states: dict[str, dict[str, Any] | None]
) -> dict[str, Any]:
    """The route's data: a summary of its move, and why it may not leave now."""
    if route.data is None:
        return {"data_state": None, "gate": []}
    status = states.get(route.data)
    summary = None
    if status is not None:
        verdict = status.get("verdict")
        summary = {
            "phase": status["phase"],
            "rows_copied": status["rows_copied"],
            "rows_total": status["rows_total"],
            "lag_seconds": status["lag_seconds"],
            "verdict": None if verdict is None else ("clean" if verdict["clean"] else "diverged"),
            "verified_at": None if verdict is None else verdict["at"],
        }
    gate = reasons_to_stay(route, "service", status, proxy.data_policy, utcnow())
    return {"data_state": summary, "gate": gate}


def team_for(tokens: dict[str, str], token: str) -> str | None:
    digest = hash_token(token)
    for known, team in tokens.items():
        if hmac.compare_digest(known, digest):
            return team
    return None


def _route(proxy: Proxy, name: str) -> Route:
    route = proxy.table.by_name.get(name)
    if route is None:
        _refuse(404, f"no route named {name!r}")
    return route


def _refuse(status: int, message: str) -> NoReturn:
    abort(status, message=message)
    raise AssertionError("unreachable: abort raises")  # flask-smorest's abort is not typed so
