"""Request ids in the proxy's log lines, for forwarded and admin requests alike.

servicekit's filter reads Flask's ``g``; the forwarding path has no Flask
context, so its request id lives in a context variable instead.
"""

from __future__ import annotations

import logging

from servicekit.logs import configure_logging
from servicekit.logs import current_request_id as flask_request_id

__all__ = ["RequestIdFilter", "configure_proxy_logging"]


class RequestIdFilter(logging.Filter):
    """Stamps ``record.request_id``: the forwarded request's, else the admin API's."""

    def filter(self, record: logging.LogRecord) -> bool:
        from strangler_proxy.forwarding import current_request_id  # no cycle at import

        request_id = current_request_id()
        record.request_id = request_id if request_id != "-" else flask_request_id()
        return True


def configure_proxy_logging() -> None:
    configure_logging()
    for handler in logging.getLogger().handlers:
        handler.filters[:] = [RequestIdFilter()]
