"""What every Flask deployable of the project gets: one error envelope, request
ids, health and readiness, body-size limits and self-hosted API docs.

The error envelope, for every error the service answers::

    {"status": 422, "code": "validation_failed", "message": "...",
     "fields": {"json": {"email": ["Not a valid email address."]}},
     "request_id": "3f2c..."}
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import flask_smorest
import marshmallow as ma
from flask import Blueprint, Flask, Response, g, jsonify, request, send_from_directory
from werkzeug.exceptions import HTTPException

from servicekit.errors import (
    Conflict,
    DependencyUnavailable,
    DomainError,
    Gone,
    NotFound,
    RuleViolated,
)
from servicekit.idempotency import IdempotencyKeys, Reply
from servicekit.requestids import REQUEST_ID_HEADER, accept_request_id, current_request_id
from servicekit.uow import UnitOfWork

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "REQUEST_ID_HEADER",
    "ServiceApi",
    "ServiceBlueprint",
    "error_envelope",
    "error_response",
    "idempotent_response",
    "init_service",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 64 * 1024

STATUS_BY_ERROR: dict[type[DomainError], int] = {
    NotFound: 404,
    Gone: 410,
    Conflict: 409,
    RuleViolated: 422,
    DependencyUnavailable: 503,
}

_CODE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    428: "precondition_required",
    500: "internal_error",
    502: "bad_gateway",
    503: "unavailable",
    504: "gateway_timeout",
}


class ErrorSchema(ma.Schema):
    """The error envelope, as documented in OpenAPI."""

    status = ma.fields.Integer(required=True)
    code = ma.fields.String(required=True)
    message = ma.fields.String(required=True)
    # ``fields`` would shadow Schema.fields, hence the data_key.
    field_messages = ma.fields.Dict(keys=ma.fields.String(), data_key="fields")
    request_id = ma.fields.String()


def error_envelope(
    status: int,
    message: str,
    request_id: str,
    code: str | None = None,
    fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The one error envelope as plain data, for callers without a Flask response."""
    body: dict[str, Any] = {
        "status": status,
        "code": code or _CODE_BY_STATUS.get(status, "error"),
        "message": message,
        "request_id": request_id,
    }
    if fields:
        body["fields"] = fields
    return body


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    fields: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """Build the one error envelope. Every error answered goes through here."""
    response = jsonify(error_envelope(status, message, current_request_id(), code, fields))
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


#: Set on a reply that was stored by an earlier request with the same key.
IDEMPOTENT_REPLAY_HEADER = "Idempotent-Replayed"

U = TypeVar("U", bound=UnitOfWork)


def idempotent_response(
    keys: IdempotencyKeys,
    *,
    scope: str,
    key: str,
    request_fingerprint: str,
    uow: U,
    execute: Callable[[U], Any],
    status: int,
    schema: ma.Schema,
) -> Response:
    """Run a command under an idempotency key and answer with its (stored) reply."""
    executed = False

    def run(unit: U) -> Any:
        nonlocal executed
        executed = True
        return execute(unit)

    reply = keys.run(
        scope=scope,
        key=key,
        request_fingerprint=request_fingerprint,
        uow=uow,
        execute=run,
        render=lambda result: Reply(status=status, body=schema.dump(result)),
        render_error=_error_reply,
    )
    response = jsonify(reply.body)
    response.status_code = reply.status
    if not executed:
        response.headers[IDEMPOTENT_REPLAY_HEADER] = "true"
    return response


def _error_reply(error: DomainError) -> Reply:
    response = _domain_error_response(error)
    return Reply(status=response.status_code, body=response.get_json())


def _domain_error_response(error: DomainError) -> Response:
    return error_response(
        _status_for(error),
        error.message,
        code=error.code,
        fields=error.details or None,
        headers=getattr(error, "headers", None),
    )


def _status_for(error: DomainError) -> int:
    for category in type(error).__mro__:
        if category in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[category]
    return 400


#: Pages past this are refused: a huge page number would overflow the SQL offset.
MAX_PAGE = 1_000_000


class ServiceBlueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint, with a ceiling on the page number it accepts."""

    def paginate(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
        paginate = super().paginate(*args, **kwargs)

        def decorator(view: Callable[..., Any]) -> Any:
            @functools.wraps(view)
            def bounded(*view_args: Any, **view_kwargs: Any) -> Any:
                if view_kwargs["pagination_parameters"].page > MAX_PAGE:
                    flask_smorest.abort(
                        422,
                        message=f"The request is not valid: page: at most {MAX_PAGE}",
                        errors={"query": {"page": [f"Must be at most {MAX_PAGE}."]}},
                    )
                return view(*view_args, **view_kwargs)

            return paginate(bounded)

        return decorator


class ServiceApi(flask_smorest.Api):
    """flask-smorest's Api answering every HTTP error with the project's envelope."""

    ERROR_SCHEMA = ErrorSchema

    def handle_http_exception(self, error: HTTPException) -> Response:  # type: ignore[override]
        status = error.code or 500
        data = getattr(error, "data", None) or {}
        fields = data.get("errors") or data.get("messages")
        message = data.get("message") or error.description or error.name
        if status == 422 and fields and "message" not in data:
            message = "The request is not valid: " + _summarise(fields)
        if status >= 500:
            logger.error("answered %s: %s", status, message)
        return error_response(status, message, fields=fields, headers=data.get("headers"))


def _summarise(fields: dict[str, Any]) -> str:
    """'email: Not a valid email address.; name: Missing data...' from webargs messages."""
    parts = []
    for location_or_field, messages in fields.items():
        if isinstance(messages, dict) and location_or_field in {"json", "query", "headers", "form"}:
            parts.append(_summarise(messages))
        else:
            text = (
                messages if isinstance(messages, str) else "; ".join(map(str, _flatten(messages)))
            )
            parts.append(f"{location_or_field}: {text}")
    return "; ".join(parts)


def _flatten(messages: Any) -> list[Any]:
    if isinstance(messages, dict):
        return [item for value in messages.values() for item in _flatten(value)]
    if isinstance(messages, list):
        return [item for value in messages for item in _flatten(value)]
    return [messages]


def init_service(
    app: Flask,
    api: ServiceApi,
    *,
    ready_check: Callable[[], None],
) -> None:
    """Wire request ids, errors, health endpoints and docs into ``app``.

    ``ready_check`` raises when the service cannot serve (e.g. its database
    is unreachable); ``/ready`` then answers 503.
    """
    app.config.setdefault("MAX_CONTENT_LENGTH", DEFAULT_MAX_BODY_BYTES)

    @app.before_request
    def _take_request_id() -> None:
        g.request_id = accept_request_id(request.headers.get(REQUEST_ID_HEADER))

    @app.before_request
    def _refuse_unsized_bodies_over_the_limit() -> None:
        # werkzeug stops reading a chunked body at MAX_CONTENT_LENGTH without
        # complaint; the parser would then report truncated JSON. Read it here
        # so that going over the limit is the 413 it is.
        if request.content_length is None and "Transfer-Encoding" in request.headers:
            request.get_data(cache=True)
            request.stream.read(1)  # at the limit with bytes left: RequestEntityTooLarge

    @app.after_request
    def _return_request_id(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = current_request_id()
        return response

    app.register_error_handler(DomainError, _domain_error_response)

    app.register_blueprint(_operations_blueprint(ready_check))
    app.register_blueprint(_swagger_ui_assets_blueprint())


def _operations_blueprint(ready_check: Callable[[], None]) -> Blueprint:
    blueprint = Blueprint("operations", __name__)

    @blueprint.get("/health")
    def health() -> Response:
        """Alive: the process answers."""
        return jsonify(status="ok")

    @blueprint.get("/ready")
    def ready() -> Response:
        """Ready: the process can reach what it needs to serve."""
        try:
            ready_check()
        except Exception as exc:
            logger.warning("not ready: %s", exc)
            return error_response(503, f"not ready: {type(exc).__name__}", code="not_ready")
        return jsonify(status="ready")

    return blueprint


SWAGGER_UI_ASSETS_PATH = "/api/docs/assets/"


def _swagger_ui_assets_blueprint() -> Blueprint:
    """Serve Swagger UI from the installed package: the docs work offline."""
    from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

    blueprint = Blueprint("swagger_ui_assets", __name__)

    @blueprint.get(SWAGGER_UI_ASSETS_PATH + "<path:filename>")
    def asset(filename: str) -> Response:
        return send_from_directory(swagger_ui_path, filename)

    return blueprint


def openapi_settings(title: str, version: str) -> dict[str, Any]:
    """flask-smorest settings: spec at /api/openapi.json, docs at /api/docs."""
    return {
        "API_TITLE": title,
        "API_VERSION": version,
        "OPENAPI_VERSION": "3.0.3",
        "OPENAPI_URL_PREFIX": "/api",
        "OPENAPI_JSON_PATH": "openapi.json",
        "OPENAPI_SWAGGER_UI_PATH": "docs",
        "OPENAPI_SWAGGER_UI_URL": SWAGGER_UI_ASSETS_PATH,
    }
