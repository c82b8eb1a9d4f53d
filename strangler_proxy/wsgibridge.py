"""Serves a WSGI app (the admin API) from the event loop, on a thread pool:
it reads the database, which must never block the loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
from collections.abc import Callable, Iterable
from typing import Any

from strangler_proxy.server import BodyRefused, ClientConnection, ClientGone, Request, error_answer

__all__ = ["WsgiBridge"]

Headers = list[tuple[bytes, bytes]]


class WsgiBridge:
    """The admin app as the dispatcher calls it (``dispatch.AdminApp``)."""

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        threads: int,
        body_timeout: float,
        *,
        initializer: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.body_timeout = body_timeout
        self.executor = concurrent.futures.ThreadPoolExecutor(
            threads, thread_name_prefix="admin", initializer=initializer
        )

    async def __call__(
        self, request: Request, client: ClientConnection, path: str, request_id: str
    ) -> None:
        try:
            body = await client.read_body(request, self.body_timeout)
        except BodyRefused as refusal:
            headers, content = error_answer(refusal.status, refusal.message, request_id)
            client.respond(refusal.status, headers, content, close=True)
            return
        except ClientGone:
            return
        environ = _environ(request, client, path, body, request_id)
        loop = asyncio.get_running_loop()
        status, headers, content = await loop.run_in_executor(self.executor, self._call, environ)
        client.respond(status, headers, content)

    def _call(self, environ: dict[str, Any]) -> tuple[int, Headers, bytes]:
        started: list[Any] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            started[:] = [status, headers]
            return lambda data: None

        result = self.app(environ, start_response)
        try:
            content = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, headers = started
        return (
            int(status.split(" ", 1)[0]),
            [
                (k.lower().encode("latin-1"), v.encode("latin-1"))
                for k, v in headers
                if k.lower() != "content-length"  # the answer is whole: the bridge says it
            ],
            content,
        )

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _environ(
    request: Request, client: ClientConnection, path: str, body: bytes, request_id: str
) -> dict[str, Any]:
    server = ("127.0.0.1", 80)
    if client.transport is not None:
        server = client.transport.get_extra_info("sockname")[:2]
    query = request.target.partition(b"?")[2]
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query.decode("latin-1"),
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{request.http_version}",
        "REMOTE_ADDR": client.peer,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "CONTENT_LENGTH": str(len(body)) if body else "",
    }
    for raw_name, raw_value in request.headers:
        name = raw_name.decode("latin-1")
        if "_" in name:
            continue  # "X_Forwarded" must not pose as "X-Forwarded"
        value = raw_value.decode("latin-1")
        if name == "content-type":
            environ["CONTENT_TYPE"] = value
            continue
        if name == "content-length":
            continue
        key = "HTTP_" + name.upper().replace("-", "_")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    environ["HTTP_X_REQUEST_ID"] = request_id
    return environ
