"""A tiny upstream for the proxy's tests, served by gunicorn as a real process.

It says who it is (``UPSTREAM_NAME``), echoes what it received, and injects
faults on demand: slow answers (``/slow``, or every answer after
``DELAY_SECONDS``), a reset in the middle of a body, any status,
"fail everything" while the file named by ``FAIL_FLAG`` exists, a 409
``not_owner`` under ``/ledger/mine-on-<other>`` (an app refusing records it does not own),
and a 503 ``ownership_moving`` at ``.../moving`` while the file named by the
``handover`` query parameter exists (each such answer adds a line to ``<handover>.asked``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

NAME = os.environ.get("UPSTREAM_NAME", "upstream")


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    path = environ["PATH_INFO"]
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    flag = os.environ.get("FAIL_FLAG")
    if flag and os.path.exists(flag) and path != "/health":
        return _json(start_response, 500, {"upstream": NAME, "failing": True})
    if path == "/health":
        return _json(start_response, 200, {"status": "ok", "upstream": NAME})
    if os.environ.get("DELAY_SECONDS"):
        time.sleep(float(os.environ["DELAY_SECONDS"]))
    if path == "/slow":
        time.sleep(float(query.get("seconds", "1")))
        return _json(start_response, 200, {"upstream": NAME, "slow": True})
    if path.startswith("/ledger/mine-on-") and not path.startswith(f"/ledger/mine-on-{NAME}"):
        # an app that does not own the records refuses them, as servicekit.ownership does
        return _json(start_response, 409, {"status": 409, "code": "not_owner", "upstream": NAME})
    handover = query.get("handover")
    if path.endswith("/moving") and handover and os.path.exists(handover):
        # records being handed over, as servicekit.ownership answers meanwhile
        with open(handover + ".asked", "a") as asked:
            asked.write(f"{NAME}\n")
        return _json(
            start_response, 503, {"status": 503, "code": "ownership_moving", "upstream": NAME}
        )
    if path.endswith("/conflict"):  # a 409 about something else
        return _json(start_response, 409, {"status": 409, "code": "conflict", "upstream": NAME})
    if path.startswith("/status/"):
        return _json(start_response, int(path.rsplit("/", 1)[1]), {"upstream": NAME})
    if path == "/cookies":
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/plain"),
                ("Set-Cookie", "a=1; Path=/"),
                ("Set-Cookie", "b=2; Path=/"),
                ("Connection", "X-Secret-Hop"),
                ("X-Secret-Hop", "must not pass"),
            ],
        )
        return [b"cookies"]
    if path == "/reset-mid-body":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "100000")])
        return _broken()
    if path == "/big":
        size = int(query.get("bytes", "1000000"))
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (b"x" * min(65536, size - sent) for sent in range(0, size, 65536))
    if path == "/differs/identical":
        return _json(start_response, 200, {"total": 10})  # the same bytes from both
    if path.startswith("/differs"):
        # the same answer on both upstreams except a volatile id and timestamp,
        # and, under /differs/really, a real difference
        body = {"id": uuid.uuid4().hex, "created_at": time.time(), "total": 10}
        if path == "/differs/really":
            body["total"] = 10 if NAME == "monolith" else 11
        return _json(start_response, 200, body)
    return _echo(environ, start_response, path, query)


def _echo(
    environ: dict[str, Any], start_response: Callable[..., Any], path: str, query: dict[str, str]
) -> Any:
    body = environ["wsgi.input"].read()
    headers = {
        key[5:].replace("_", "-").lower(): value
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
    if environ.get("CONTENT_LENGTH"):
        headers["content-length"] = environ["CONTENT_LENGTH"]
    return _json(
        start_response,
        200,
        {
            "upstream": NAME,
            "method": environ["REQUEST_METHOD"],
            "path": path,
            "raw_uri": environ.get("RAW_URI"),
            "query": query,
            "headers": headers,
            "body_bytes": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        },
    )


def _broken() -> Iterator[bytes]:
    yield b"y" * 10_000
    raise ConnectionResetError("injected: reset in the middle of the body")


def _json(start_response: Callable[..., Any], status: int, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        f"{status} X",
        [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
    )
    return [data]
