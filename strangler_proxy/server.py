"""The proxy's front door: HTTP/1.1 from clients, parsed by httptools on
uvloop, each request handed to the dispatcher with this connection to answer
on.

Why its own and not uvicorn's: profiled on the invoice list, uvicorn's
per-request work (its scope, its ASGI messages and their checks, a second
write for the response head) was a quarter of the proxy's Python time, and
its protocol had to be extended in private places for what a proxy's front
door needs anyway. Here a request costs a parse, one task and one write per
answer (the head goes out with the first body bytes).

What a front door needs, and is here:

- the request target exactly as sent (a fragment or absolute-form is refused
  by the dispatcher, not silently dropped by a URL parser);
- a budget for the header block (431) and a deadline for it (408): a slow
  client holds a socket, never a worker, and costs no timer unless its
  header block arrives split across reads;
- the request body buffered here, at most ``max_body`` (413) — the
  dispatcher reads it whole before any upstream hears of the request;
  ``100 Continue`` only once the dispatcher asks for the body;
- a client that stops reading its answer is cut after ``send_timeout``, so
  the upstream connection it holds is let go;
- keep-alive with an idle deadline, pipelined requests answered in order,
  a client's half-close answered before the connection closes;
- a graceful stop: no new connections, idle ones closed, busy ones finish.
"""

from __future__ import annotations

import asyncio
import collections
import http
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

import httptools

from servicekit.requestids import new_request_id
from servicekit.web import error_envelope

__all__ = [
    "BodyRefused",
    "ClientConnection",
    "ClientGone",
    "FrontDoor",
    "Handler",
    "Request",
    "error_answer",
]

logger = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]

_REASONS = {status.value: status.phrase.encode("ascii") for status in http.HTTPStatus}
_IDLE, _HEADERS, _BUSY = 0, 1, 2
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class BodyRefused(Exception):
    """The request's body cannot be taken: ``status`` says why (400/408/413)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ClientGone(Exception):
    """The client went away before its request was complete."""


class Request:
    """A request's head as the client sent it; its body arrives into it."""

    __slots__ = (
        "_body",
        "_size",
        "complete",
        "expects_continue",
        "headers",
        "http_version",
        "keep_alive",
        "method",
        "refused",
        "target",
        "waiter",
    )

    def __init__(self) -> None:
        self.method = ""
        #: Exactly as sent: path, query and whatever else the client put there.
        self.target = b""
        self.http_version = "1.1"
        #: Names lower-cased, values as sent, in order.
        self.headers: Headers = []
        self.keep_alive = True
        self.expects_continue = False
        self.complete = False
        #: Why the body cannot be taken, once that is known.
        self.refused: BodyRefused | None = None
        self.waiter: asyncio.Future[None] | None = None
        self._body: list[bytes] = []
        self._size = 0

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class Handler(Protocol):
    """What the front door hands each request to (the dispatcher)."""

    def __call__(self, request: Request, client: ClientConnection) -> Awaitable[None]: ...


#: Told of each request the front door refused itself (a malformed or
#: oversized head, one too slow to arrive): what was parsed of it, the
#: status and the request id of the answer.
OnRefused = Callable[[Request, int, str], None]


class ClientConnection(asyncio.Protocol):
    """One client connection: parses its requests, runs the handler for each in
    turn, and writes the answers (``respond`` whole, or ``start`` / ``write`` /
    ``end`` streamed)."""

    def __init__(self, door: FrontDoor) -> None:
        self.door = door
        self.loop = door.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        #: The request being parsed, the one being answered, and those in between.
        self._parsing: Request | None = None
        self._active: Request | None = None
        self._waiting: collections.deque[Request] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._header_bytes = 0
        self._refusal: tuple[int, str] | None = None
        self._broken = False
        self._eof = False
        self._close_after = False
        # the answer being written
        self._head = b""
        self._chunked = False
        self._has_body = True
        self._answered = False
        self._writable: asyncio.Future[None] | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        # one timer per connection: the idle and header deadlines
        self._phase = _IDLE
        self._due = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0

    # --- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self.door.connections.add(self)
        self._due = self.loop.time() + self.door.header_timeout
        self._arm(self._due)

    def connection_lost(self, exc: Exception | None) -> None:
        self.door.connections.discard(self)
        self._cancel_timer()
        self._cancel_send_timer()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        for request in (self._parsing, self._active, *self._waiting):
            if request is not None:
                request._wake()

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # no protocol switch here: the request is answered as plain HTTP
            # (its Upgrade header is hop-by-hop), then the connection closes
            self._close_after = True
            self._broken = True
        except httptools.HttpParserError:
            status, message = self._refusal or (400, "malformed request")
            self._malformed(status, message)
        if self._active is None and self._waiting:
            # begun only now: the parser may still refuse a head after its callback
            self._begin(self._waiting.popleft())
        if self._waiting and self.transport is not None:
            self.transport.pause_reading()  # pipelined: answered in turn, no more read meanwhile
        if self._phase == _HEADERS and not self._broken:
            # a header block split across reads: only now does it cost a timer
            self._arm(self._due)

    def eof_received(self) -> bool:
        """The client closed its side: what it sent in full is still answered."""
        self._eof = True
        if self._parsing is not None and not self._parsing.complete:
            self._parsing._wake()  # a body cut short: its reader sees the client gone
        if self._active is None:
            return False  # nothing to answer: close
        self._close_after = True
        return True

    def pause_writing(self) -> None:
        # The client's socket buffer is full: only now is a clock started,
        # so a client that reads costs no timer at all.
        if self._writable is None or self._writable.done():
            self._writable = self.loop.create_future()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.door.send_timeout, self._stopped_reading)

    def resume_writing(self) -> None:
        self._cancel_send_timer()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # --- httptools callbacks -----------------------------------------------------

    def on_message_begin(self) -> None:
        self._parsing = Request()
        self._header_bytes = 0
        self._phase = _HEADERS
        self._due = self.loop.time() + self.door.header_timeout

    def on_url(self, url: bytes) -> None:
        assert self._parsing is not None
        self._parsing.target += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._parsing is not None
        self._parsing.headers.append((name.lower(), value))
        self._count(len(name) + len(value) + 4)

    def on_headers_complete(self) -> None:
        request = self._parsing
        assert request is not None
        parser = self.parser
        request.method = parser.get_method().decode("latin-1")
        request.http_version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive() and request.http_version == "1.1"
        for name, value in request.headers:
            if name == b"expect" and value.lower() == b"100-continue":
                request.expects_continue = True
        self._phase = _BUSY
        self._waiting.append(request)

    def on_body(self, body: bytes) -> None:
        request = self._parsing
        assert request is not None
        if request.refused is not None:
            return
        request._size += len(body)
        if request._size > self.door.max_body:
            request.refused = BodyRefused(413, f"the body exceeds {self.door.max_body} bytes")
            request._body.clear()
            request._wake()
            return
        request._body.append(body)

    def on_message_complete(self) -> None:
        request = self._parsing
        assert request is not None
        request.complete = True
        request._wake()
        self._parsing = None

    # --- what the handler calls -------------------------------------------------------

    @property
    def closing(self) -> bool:
        """The client went away, or the connection is being closed."""
        return self.transport is None or self.transport.is_closing()

    async def read_body(self, request: Request, timeout: float) -> bytes:
        """The whole body; raises :class:`BodyRefused` (400, 408, 413) or
        :class:`ClientGone`. Sends ``100 Continue`` if the client waits for it."""
        if request.complete and request.refused is None:
            return b"".join(request._body)  # nearly always: it came with the head
        if request.expects_continue and not request.complete and request.refused is None:
            request.expects_continue = False
            if self.transport is not None and not self.closing:
                self.transport.write(_CONTINUE)
        try:
            async with asyncio.timeout(timeout):
                while not request.complete:
                    if request.refused is not None:
                        raise request.refused
                    if self.closing or (self._eof and request is self._parsing):
                        raise ClientGone()
                    request.waiter = self.loop.create_future()
                    await request.waiter
                    request.waiter = None
        except TimeoutError:
            raise BodyRefused(408, "the request body did not arrive in time") from None
        if request.refused is not None:
            raise request.refused
        return b"".join(request._body)

    def start(self, status: int, headers: Headers, reason: bytes = b"") -> None:
        """Begin the answer; its head is held and goes out with the first body
        bytes: one write, one TCP segment, one wake-up of the client."""
        request = self._active
        assert request is not None and not self._answered
        self._answered = True
        has_body = request.method != "HEAD" and status not in (204, 304) and not 100 <= status < 200
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason or _REASONS.get(status, b""))]
        length_given = False
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"content-length":
                length_given = True
            elif lowered == b"connection":
                if value.lower() == b"close":
                    self._close_after = True
                continue  # written below, once
            lines += (name, b": ", value, b"\r\n")
        self._has_body = has_body
        self._chunked = has_body and not length_given and request.http_version == "1.1"
        if self._chunked:
            lines.append(b"transfer-encoding: chunked\r\n")
        elif has_body and not length_given:
            self._close_after = True  # an HTTP/1.0 client: the close ends the body
        if not request.keep_alive or self._close_after:
            self._close_after = True
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        self._head = b"".join(lines)

    async def write(self, chunk: bytes) -> None:
        """Send body bytes; waits while the client's socket buffer is full."""
        self._send(chunk)
        if self._writable is not None and not self._writable.done():
            await self._writable

    def end(self) -> None:
        """The answer is complete."""
        if self._chunked:
            self._chunked = False
            self._emit(self._head + b"0\r\n\r\n")
        elif self._head:
            self._emit(self._head)
        self._head = b""

    def respond(self, status: int, headers: Headers, body: bytes, *, close: bool = False) -> None:
        """A whole, small answer at once (an error, the admin app's answer)."""
        if close:
            self._close_after = True
        self.start(status, [*headers, (b"content-length", str(len(body)).encode("ascii"))])
        self._send(body)
        self.end()

    def cut(self) -> None:
        """Break off an answer already begun: the client sees it truncated,
        never a whole one."""
        self._head = b""
        if self.transport is not None:
            self.transport.close()

    # --- internals --------------------------------------------------------------

    def _send(self, chunk: bytes) -> None:
        if not chunk or not self._has_body:
            return  # an answer to HEAD, a 204 or a 304 has no body, whatever is written
        if self._chunked:
            chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        self._emit(self._head + chunk)
        self._head = b""

    def _emit(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _begin(self, request: Request) -> None:
        self._active = request
        self._answered = False
        self._phase = _BUSY
        self.door.track_in_flight(+1)
        # the loop keeps only a weak reference to a task: this one is ours to hold
        self._task = self.loop.create_task(self._serve(request))

    async def _serve(self, request: Request) -> None:
        try:
            await self.door.handler(request, self)
        except Exception:
            logger.exception("the proxy failed to answer %s", request.target[:200])
            if not self._answered:
                self.respond(
                    500,
                    *error_answer(500, "the proxy failed to answer", new_request_id()),
                    close=True,
                )
            else:
                self.cut()
        finally:
            self._finished(request)

    def _finished(self, request: Request) -> None:
        self.door.track_in_flight(-1)
        if not self._answered:
            self.cut()  # nothing was said: the client must not wait for it
        self._active = None
        self._head = b""
        if self._close_after or not request.complete or self.closing:
            # a body left unread (a refused request) would be read as the next request
            if self.transport is not None:
                self.transport.close()
            return
        if self._waiting:
            self._begin(self._waiting.popleft())
            if not self._waiting and self.transport is not None:
                self.transport.resume_reading()
            return
        if self._refusal is not None:
            self._refuse(*self._refusal)  # what came after this request was broken
            return
        if self._parsing is None:
            self._phase = _IDLE
            self._due = self.loop.time() + self.door.keepalive
            self._arm(self._due)
        if self.door.stopping:
            self.transport.close()  # type: ignore[union-attr]

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.door.max_header_bytes:
            self._refusal = (431, "request headers too large")
            raise ValueError("request headers too large")  # stops the parser

    def _malformed(self, status: int, message: str) -> None:
        """The parser gave up: nothing more is read from this connection."""
        self._broken = True
        request = self._parsing
        if request is not None and request is self._active and not request.complete:
            request.refused = BodyRefused(status, message)  # its handler answers
            request._wake()
            self._close_after = True
            return
        if request is not None and request in self._waiting:
            self._waiting.remove(request)  # its handler never starts
        if self._active is not None or self._waiting:
            self._refusal = (status, message)  # answered after the one in progress
        else:
            self._refuse(status, message)

    def _refuse(self, status: int, message: str) -> None:
        """Answer a request the dispatcher never saw, and close."""
        self._refusal = None
        if self.closing:
            return
        request_id = new_request_id()
        headers, body = error_answer(status, message, request_id)
        if self.door.on_refused is not None:
            self.door.on_refused(self._parsing or Request(), status, request_id)
        self._active = self._active or Request()
        self._answered = False
        self._close_after = True
        self.respond(status, headers, body)
        self.transport.close()  # type: ignore[union-attr]

    # the one timer

    def _arm(self, due: float) -> None:
        if self._timer is not None:
            if self._timer_due <= due:
                return  # it fires first, and looks again
            self._timer.cancel()
        self._timer_due = due
        self._timer = self.loop.call_at(due, self._watch)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _watch(self) -> None:
        self._timer = None
        if self._phase == _BUSY or self.closing:
            return  # re-armed when the connection is idle again
        if self.loop.time() < self._due:
            self._arm(self._due)
        elif self._phase == _HEADERS:
            self._malformed(408, "the request headers did not arrive in time")
        else:
            self.transport.close()  # type: ignore[union-attr]  # idle too long

    def _cancel_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _stopped_reading(self) -> None:
        self._send_timer = None
        if self.transport is not None:
            self.transport.abort()  # connection_lost wakes the answer that waits to write


def error_answer(status: int, message: str, request_id: str) -> tuple[Headers, bytes]:
    """The headers and body of servicekit's one error envelope."""
    body = json.dumps(error_envelope(status, message, request_id)).encode()
    return [(b"content-type", b"application/json"), (b"x-request-id", request_id.encode())], body


class FrontDoor:
    """Serves ``handler`` on listening sockets until ``stop``; its settings
    are the proxy's (``MAX_BODY_BYTES``, ``MAX_HEADER_BYTES``,
    ``HEADER_TIMEOUT``, ``SEND_TIMEOUT``, ``CLIENT_KEEPALIVE``). The requests
    it refuses before the handler sees them go to ``on_refused``; ``on_load``
    is told the number of requests in flight each time it changes."""

    def __init__(
        self,
        handler: Handler,
        settings: dict[str, object],
        *,
        on_refused: OnRefused | None = None,
        on_load: Callable[[int], None] | None = None,
    ) -> None:
        self.handler = handler
        self.on_refused = on_refused
        self.on_load = on_load
        self.in_flight = 0
        self.max_body = int(settings["MAX_BODY_BYTES"])  # type: ignore[call-overload]
        self.max_header_bytes = int(settings["MAX_HEADER_BYTES"])  # type: ignore[call-overload]
        self.header_timeout = float(settings["HEADER_TIMEOUT"])  # type: ignore[arg-type]
        self.send_timeout = float(settings["SEND_TIMEOUT"])  # type: ignore[arg-type]
        self.keepalive = float(settings["CLIENT_KEEPALIVE"])  # type: ignore[arg-type]
        self.connections: set[ClientConnection] = set()
        self.stopping = False
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._stop: asyncio.Event | None = None

    async def serve(
        self, sockets: Iterable[socket.socket], *, grace: float, started: Callable[[], None]
    ) -> None:
        """Accept on ``sockets`` until :meth:`stop`; then let the requests in
        progress finish, for at most ``grace`` seconds."""
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        servers = [
            await self.loop.create_server(lambda: ClientConnection(self), sock=sock)
            for sock in sockets
        ]
        started()
        await self._stop.wait()
        self.stopping = True
        for server in servers:
            server.close()
        for connection in list(self.connections):
            if connection._active is None and connection.transport is not None:
                connection.transport.close()
        deadline = self.loop.time() + grace
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()

    def track_in_flight(self, change: int) -> None:
        self.in_flight += change
        if self.on_load is not None:
            self.on_load(self.in_flight)

    def stop(self) -> None:
        """Stop accepting; called on the loop (a signal handler, or threadsafe)."""
        if self._stop is not None:
            self._stop.set()
