"""Logging for entry points: every line carries the request id.

Only entry points (the WSGI module, gunicorn's config, CLI commands) call
:func:`configure_logging`; library code just does
``logger = logging.getLogger(__name__)``.
"""

from __future__ import annotations

import contextvars
import logging
import os

from flask import g, has_request_context

__all__ = [
    "LOG_FORMAT",
    "RequestIdFilter",
    "configure_logging",
    "current_request_id",
    "request_id_context",
]

LOG_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"
DEFAULT_LEVEL = "INFO"


#: The request id where there is no Flask request (the proxy's event loop, its
#: background writers); Flask apps keep theirs in ``g``. One lookup serves both.
request_id_context: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def current_request_id() -> str:
    if has_request_context():
        return str(getattr(g, "request_id", "-"))
    return request_id_context.get()


class RequestIdFilter(logging.Filter):
    """Stamps ``record.request_id`` so that formats can print it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        return True


def configure_logging(level: str | None = None) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("LOG_LEVEL", DEFAULT_LEVEL))
