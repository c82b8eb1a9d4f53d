"""The mover's process: its moves, each on its own threads, and a small HTTP
API to command and watch them (the proxy's admin API and the `strangler data`
commands are its clients).

- ``GET /moves``, ``GET /moves/<name>``: phase, progress, lag, last verdict;
- ``POST /moves/<name>/start|stop|verify``: signed, like every internal call;
- ``POST /moves/<name>/complete``: signed; the decommission (refused,
  409 with each reason, until the service owns everything and a clean
  verification began after the last handover);
- ``POST /moves/<name>/ownership``: signed; the ownership wanted, which the
  fence converges both databases to (status: ``ownership``);
- ``GET /metrics``: Prometheus; ``/health``, ``/ready`` as every deployable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import marshmallow as ma
import sqlalchemy as sa
from flask import Flask, Response
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from datamover.config import ENV_PREFIX, defaults
from datamover.metrics import CONTENT_TYPE_LATEST, Metrics
from datamover.moves import MOVES
from datamover.runner import MoveRunner, Tuning
from servicekit.internal import require_signature
from servicekit.ownership import MONOLITH, SERVICE, USER_BUCKETS
from servicekit.signing import Keyring
from servicekit.web import ServiceApi, error_response, init_service, openapi_settings

__all__ = ["create_app", "runners_of"]

EXTENSION = "datamover"


class StartSchema(ma.Schema):
    replace = ma.fields.Boolean(
        load_default=False,
        metadata={"description": "Replace rows the target holds that this move did not copy"},
    )


class OwnershipSchema(ma.Schema):
    service_buckets = ma.fields.Integer(
        required=True,
        validate=ma.validate.Range(0, USER_BUCKETS),
        metadata={"description": "Buckets below this belong to the service (the canary's rule)"},
    )
    plans = ma.fields.String(
        required=True,
        validate=ma.validate.OneOf([MONOLITH, SERVICE]),
        metadata={"description": "Who owns the records of no user (plans)"},
    )


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask("datamover")
    app.config.from_mapping(defaults())
    app.config.from_prefixed_env(ENV_PREFIX)
    app.config.update(config or {})
    app.config.update(openapi_settings("Data mover", "1.0.0"))
    settings = app.config

    metrics = Metrics()
    tuning = Tuning(dict(settings))
    runners = {
        name: MoveRunner(move, settings["SOURCE_URL"], settings["TARGET_URL"], tuning, metrics)
        for name, move in MOVES.items()
    }
    app.extensions[EXTENSION] = runners
    for runner in runners.values():
        runner.resume()

    api = ServiceApi(app)
    keyring = Keyring.parse(settings["INTERNAL_KEYS"], owner="the data mover")
    reads, commands = _blueprints(runners, metrics)
    require_signature(commands, keyring)
    api.register_blueprint(reads)
    api.register_blueprint(commands)

    def ready_check() -> None:
        for runner in runners.values():
            runner.store.load()

    init_service(app, api, ready_check=ready_check)

    @app.errorhandler(sa.exc.OperationalError)
    def _database_busy(error: sa.exc.OperationalError) -> Response:
        # A database restarting, or a table lock that did not come in time.
        first_line = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        return error_response(503, f"a database is unavailable or busy ({first_line}); try again")

    return app


def runners_of(app: Flask) -> dict[str, MoveRunner]:
    return app.extensions[EXTENSION]  # type: ignore[no-any-return]


def _runner(runners: dict[str, MoveRunner], name: str) -> MoveRunner:
    if name not in runners:
        abort(404, message=f"no move named {name!r}; known: {', '.join(sorted(runners))}")
    return runners[name]


def _blueprints(runners: dict[str, MoveRunner], metrics: Metrics) -> tuple[Blueprint, Blueprint]:
    reads = Blueprint("moves", __name__, description="Watch the moves")
    commands = Blueprint("commands", __name__, description="Command the moves (signed)")

    @reads.get("/moves")
    def list_moves() -> list[dict[str, Any]]:
        """Every move: phase, progress, lag, last verification."""
        return [runner.status() for runner in runners.values()]

    @reads.get("/moves/<name>")
    def one_move(name: str) -> dict[str, Any]:
        """One move: phase, progress, lag, last verification."""
        return _runner(runners, name).status()

    @reads.get("/metrics")
    def prometheus() -> Response:
        """Prometheus metrics."""
        for runner in runners.values():
            runner.status()  # refreshes the gauges
        return Response(metrics.render(), content_type=CONTENT_TYPE_LATEST)

    @commands.route("/moves/<name>/start")
    class Start(MethodView):
        @commands.arguments(StartSchema)
        def post(self, args: dict[str, Any], name: str) -> dict[str, Any]:
            """Install capture and begin the backfill (or resume it)."""
            return _runner(runners, name).start(replace=args["replace"])

    @commands.post("/moves/<name>/stop")
    def stop(name: str) -> dict[str, Any]:
        """Remove capture: the copy stops following the source."""
        return _runner(runners, name).stop()

    @commands.post("/moves/<name>/verify")
    def verify(name: str) -> tuple[dict[str, Any], int]:
        """Start a verification; its verdict appears in the move's status."""
        requested = _runner(runners, name).request_verification()
        return {"move": name, "requested_at": requested}, 202

    @commands.post("/moves/<name>/complete")
    def complete(name: str) -> dict[str, Any]:
        """End the journey: the service owns the records for good, capture stops,
        the monolith's tables are archived (refused, with the reasons, until safe)."""
        return _runner(runners, name).complete()

    @commands.route("/moves/<name>/ownership")
    class Ownership(MethodView):
        @commands.arguments(OwnershipSchema)
        def post(self, args: dict[str, Any], name: str) -> tuple[dict[str, Any], int]:
            """Ask for an ownership: the fence hands the buckets that change side over."""
            status = _runner(runners, name).set_ownership(args["service_buckets"], args["plans"])
            return status, 202

    return reads, commands
