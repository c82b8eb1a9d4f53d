"""Request ids: which one a request gets, and which one is current.

Every request carries an id from the edge to every log line it causes. An id
a client or a proxy sent is kept if it is harmless in a log line (short, no
spaces, no markup); otherwise the request gets a new one. This module is the
one rule for that, for Flask apps (:mod:`servicekit.web` stores the id on
``g``) and for code that serves requests outside Flask, such as a WSGI
forwarder, which binds the id for the duration with :func:`bound_request_id`.
"""

from __future__ import annotations

import contextvars
import random
import re

from flask import g, has_request_context

__all__ = [
    "MAX_REQUEST_ID_LENGTH",
    "NO_REQUEST_ID",
    "REQUEST_ID_HEADER",
    "accept_request_id",
    "bound_request_id",
    "current_request_id",
    "is_acceptable_request_id",
    "new_request_id",
]

REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID_LENGTH = 128
#: What log lines show outside any request.
NO_REQUEST_ID = "-"

_ACCEPTABLE = re.compile(rf"[A-Za-z0-9._:\-]{{1,{MAX_REQUEST_ID_LENGTH}}}")

_bound: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "servicekit_request_id", default=None
)


def is_acceptable_request_id(candidate: str) -> bool:
    """True if ``candidate`` may be used as it is: 1 to 128 of ``A-Z a-z 0-9 . _ : -``."""
    # fullmatch, not match with "$": "$" would also accept a trailing newline.
    return _ACCEPTABLE.fullmatch(candidate) is not None


def new_request_id() -> str:
    """32 random hex digits, as ``uuid4().hex`` gives, from the process's own
    generator (``random`` reseeds in each forked worker): uuid4 asks the
    kernel for its bits, a system call per request on the proxy's hot path.
    An id tells requests apart in the logs; it guards nothing."""
    return f"{random.getrandbits(128):032x}"


def accept_request_id(incoming: str | None) -> str:
    """The id of a request that arrived with ``incoming`` (None: no header):
    ``incoming`` itself if acceptable, else a new one."""
    if incoming and is_acceptable_request_id(incoming):
        return incoming
    return new_request_id()


class bound_request_id:  # used as a function: ``with bound_request_id(id):``
    """Make ``request_id`` the current one inside the block, outside Flask's
    request context (the proxy's event loop, a worker thread finishing a
    request). A class, not ``@contextmanager``: the proxy enters one per
    request, and a generator costs several times more to enter and leave."""

    __slots__ = ("_token", "request_id")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id

    def __enter__(self) -> str:
        self._token = _bound.set(self.request_id)
        return self.request_id

    def __exit__(self, *_: object) -> None:
        _bound.reset(self._token)


def current_request_id() -> str:
    """The id of the request being served: one bound with
    :func:`bound_request_id`, else the Flask request's, else ``"-"``."""
    bound = _bound.get()
    if bound is not None:
        return bound
    if has_request_context():
        return str(getattr(g, "request_id", NO_REQUEST_ID))
    return NO_REQUEST_ID
