"""Logging for entry points: every line carries the request id.

Which request id is current is :mod:`servicekit.requestids`' business;
``current_request_id`` is re-exported here for the callers that found it here.

Only entry points (the WSGI module, gunicorn's config, CLI commands) call
:func:`configure_logging`; library code just does
``logger = logging.getLogger(__name__)``.
"""

from __future__ import annotations

import logging
import os

from servicekit.requestids import current_request_id

__all__ = ["LOG_FORMAT", "RequestIdFilter", "configure_logging", "current_request_id"]

LOG_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"
DEFAULT_LEVEL = "INFO"


class RequestIdFilter(logging.Filter):
    """Stamps ``record.request_id`` so that formats can print it: the id of the
    request being served, in Flask or bound outside it (:mod:`servicekit.requestids`)."""

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
