"""How the data plane is served: uvicorn's httptools protocol on uvloop, in a
gunicorn worker, with what a proxy's front door needs on top; and the bridge
that runs the (WSGI, Flask) admin app on a thread.

On top of uvicorn's protocol: the request target exactly as sent (uvicorn
keeps only the parsed path, which hides absolute-form targets and
fragments), a limit on the header block (431), a deadline for the header
block (a slow client holds a socket, never a worker: the loop serves others),
and one for a client that stops reading its answer (its connection is cut, so
the upstream connection it held is let go).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn_worker import UvicornWorker

from strangler_proxy import config
from strangler_proxy.dispatch import RAW_TARGET, TRANSPORT, Receive, Scope, Send

__all__ = [
    "ProxyHttpProtocol",
    "ProxyResponseCycle",
    "ProxyWorker",
    "WsgiBridge",
    "protocol_for",
    "server_settings",
]


class _HeadKeeper:
    """Stands in for the transport while uvicorn writes a response head: keeps it."""

    def __init__(self) -> None:
        self.head = b""

    def write(self, data: bytes) -> None:
        self.head += data


class _HeadFirst:
    """Stands in for the transport while uvicorn writes the first body message:
    the kept head goes out in front of the body's bytes, in the same write."""

    def __init__(self, transport: asyncio.Transport, head: bytes) -> None:
        self.transport = transport
        self.head = head

    def write(self, data: bytes) -> None:
        self.transport.write(self.head + data)
        self.head = b""

    def flush(self) -> None:
        if self.head:
            self.write(b"")

    def close(self) -> None:
        self.flush()  # a HEAD answer, or one that ends the connection: head first
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()


class ProxyResponseCycle(RequestResponseCycle):
    """uvicorn's request/response cycle, but the response head is held until the
    first body message and written with it: one ``write`` where uvicorn makes
    two, so one TCP segment and one wake-up of the client instead of two (on a
    list page through the proxy, a write is ~10 µs of our CPU and as much of
    the client's). uvicorn still builds and checks the head; every ASGI answer
    sends a body message right after its start (the dispatcher, the admin
    bridge, uvicorn's own 500), so nothing waits on the held head."""

    held_head = b""

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start" and not self.response_started:
            transport, keeper = self.transport, _HeadKeeper()
            self.transport = keeper  # type: ignore[assignment]
            try:
                await super().send(message)
            finally:
                self.transport = transport
            self.held_head = keeper.head
            return
        if not self.held_head:
            await super().send(message)
            return
        transport, head_first = self.transport, _HeadFirst(self.transport, self.held_head)
        self.held_head = b""
        self.transport = head_first  # type: ignore[assignment]
        try:
            await super().send(message)
        finally:
            self.transport = transport
            if not self.disconnected:
                head_first.flush()  # nothing was written (a HEAD answer): the head alone


class ProxyHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, plus the raw target, a header budget and deadline."""

    max_header_bytes = config.DEFAULT_MAX_HEADER_BYTES
    header_timeout = config.DEFAULT_HEADER_TIMEOUT
    send_timeout = config.DEFAULT_SEND_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_bytes = 0
        self._in_header_block = False
        self._refused = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self._cancel_send_timer()
        super().connection_lost(exc)

    # The transport pauses us when the client's socket buffer is full: only
    # then is a clock started, so a reading client costs no timer at all.
    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.send_timeout, self._stopped_reading)

    def resume_writing(self) -> None:
        self._cancel_send_timer()
        super().resume_writing()

    def _cancel_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _stopped_reading(self) -> None:
        self._send_timer = None
        self.transport.abort()  # connection_lost wakes the response that waits to write

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)
            if self._in_header_block and not self._refused:
                # armed only for a header block split across reads: one that
                # arrives whole (nearly all) costs no timer at all
                self._arm_header_timer()

    def send_400_response(self, msg: str) -> None:
        if not self._refused:
            super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._in_header_block = True

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._count(len(name) + len(value) + 4)

    def on_headers_complete(self) -> None:
        self._in_header_block = False
        self._cancel_header_timer()
        super().on_headers_complete()
        if type(self.cycle) is RequestResponseCycle:
            # uvicorn builds its own cycle here; ours only adds to its send,
            # and the request's task (created, not yet run) will call ours
            self.cycle.__class__ = ProxyResponseCycle
        # uvicorn built this request's scope; its task has not run yet
        self.scope[RAW_TARGET] = self.url  # type: ignore[literal-required]
        self.scope[TRANSPORT] = self.transport  # type: ignore[literal-required]

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.max_header_bytes:
            self._refuse(b"431 Request Header Fields Too Large", b"request headers too large")
            raise ValueError("request headers too large")  # stops the parser

    def _arm_header_timer(self) -> None:
        if self._header_timer is None and self.transport is not None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if self.cycle is None or self.cycle.response_complete:
            self._refuse(b"408 Request Timeout", b"the request headers did not arrive in time")

    def _refuse(self, status: bytes, message: bytes) -> None:
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        self.transport.write(
            b"HTTP/1.1 %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, len(message), message)
        )
        self.transport.close()


def protocol_for(settings: dict[str, Any]) -> type[ProxyHttpProtocol]:
    """The protocol class with the header budget and deadlines of ``settings``."""
    return type(
        "ConfiguredProxyHttpProtocol",
        (ProxyHttpProtocol,),
        {
            "max_header_bytes": int(settings["MAX_HEADER_BYTES"]),
            "header_timeout": float(settings["HEADER_TIMEOUT"]),
            "send_timeout": float(settings["SEND_TIMEOUT"]),
        },
    )


def server_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """uvicorn's settings for the proxy: uvloop, our protocol, no websockets,
    and no trust in ``X-Forwarded-*`` from anyone (``PROXY_TRUSTED_PEERS`` is
    the only trust decision, made in the dispatcher); the upstream's own
    ``Date`` and ``Server`` pass through instead of uvicorn's."""
    return {
        "loop": "uvloop",
        "http": protocol_for(settings),
        "ws": "none",
        "lifespan": "on",  # the dispatcher writes its last records at shutdown
        "proxy_headers": False,
        "server_header": False,
        "date_header": False,
        "access_log": False,
    }


class ProxyWorker(UvicornWorker):
    """gunicorn's worker for the proxy (``worker_class`` in its gunicorn config)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.CONFIG_KWARGS = server_settings(config.load())
        super().__init__(*args, **kwargs)


class WsgiBridge:
    """Serves a WSGI app (the admin API) from the event loop, on a thread pool:
    it reads the database, which must never block the loop."""

    def __init__(self, app: Callable[..., Iterable[bytes]], threads: int, max_body: int) -> None:
        self.app = app
        self.max_body = max_body
        self.executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="admin")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                await send({"type": "http.response.start", "status": 413, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
        environ = _environ(scope, bytes(body))
        loop = asyncio.get_running_loop()
        status, headers, content = await loop.run_in_executor(self.executor, self._call, environ)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    def _call(self, environ: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
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
            [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            content,
        )

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _environ(scope: Scope, body: bytes) -> dict[str, Any]:
    import io

    server = scope.get("server") or ("127.0.0.1", 80)
    client = scope.get("client") or ("", 0)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": "",
        "PATH_INFO": scope["path"],
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": client[0],
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "CONTENT_LENGTH": str(len(body)) if body else "",
    }
    for raw_name, raw_value in scope["headers"]:
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
    environ["HTTP_X_REQUEST_ID"] = scope.get("strangler.request_id", "")
    return environ
