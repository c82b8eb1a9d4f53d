"""The upstreams: an asyncio connection pool per backend, its circuit breaker,
and the HTTP/1.1 client that speaks to it (httptools parses the responses).

Written for the event loop on purpose: the issue measured the threaded
urllib3 path at +1.9 ms per request; here a forwarded request costs a write,
a parse and a dictionary lookup, with no thread hand-off. The request body is
always complete before an upstream is contacted (the dispatcher buffers it),
so it is sent with a ``Content-Length``: no chunked body, no smuggling.
"""

from __future__ import annotations

import asyncio
import collections
import time
from urllib.parse import urlsplit

import httptools

from strangler_proxy.domain import Breaker

__all__ = ["Upstream", "UpstreamFailed", "UpstreamResponse"]

#: Stop reading from an upstream while this much of its body waits for a slow client.
BUFFER_HIGH_WATER = 256 * 1024


class UpstreamFailed(Exception):
    """The upstream could not answer; ``status`` is what the client should see."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


class _Retryable(Exception):
    """A reused connection failed before a byte of the answer came: safe to try again."""


class UpstreamResponse:
    """An upstream's answer: status and headers now, the body as it arrives."""

    def __init__(self, connection: _Connection, head_only: bool) -> None:
        self._connection = connection
        self.status: int = connection.parser.get_status_code()
        self.reason: bytes = connection.reason
        self.headers: list[tuple[bytes, bytes]] = connection.headers
        self._head_only = head_only

    async def next_chunk(self) -> bytes | None:
        """The body's next bytes, None at its end; raises :class:`UpstreamFailed`
        if the upstream breaks off. (A coroutine, not an async generator: this
        is called for every answer, and a generator costs more per answer
        than the loop it saves writing.)"""
        if self._head_only:
            return None
        return await self._connection.next_chunk()

    async def read(self, limit: int) -> bytes | None:
        """The whole body, or None when it is longer than ``limit``."""
        parts: list[bytes] = []
        size = 0
        while (chunk := await self.next_chunk()) is not None:
            size += len(chunk)
            if size > limit:
                self.close()
                return None
            parts.append(chunk)
        return b"".join(parts)

    @property
    def complete(self) -> bool:
        return self._head_only or self._connection.message_complete

    def close(self) -> None:
        """Give the connection back if the exchange completed, else drop it."""
        self._connection.finish(reusable=self.complete and not self._head_only)


class _Connection(asyncio.Protocol):
    """One keep-alive connection to an upstream and the exchange on it."""

    def __init__(self, pool: Upstream) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.used = False
        self._timer: asyncio.TimerHandle | None = None
        #: When the upstream last sent something, and how long it may then be quiet.
        self._heard_at = 0.0
        self._quiet_limit = pool.read_timeout
        # one parser for the connection's life: after a whole answer it is
        # ready for the next (a connection that breaks one is not reused)
        self.parser = httptools.HttpResponseParser(self)
        self._reset_exchange()

    def _reset_exchange(self) -> None:
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_complete = False
        #: Set once the head and the first body bytes (or the whole answer)
        #: are in: the client's head waits for those bytes anyway (server.py
        #: sends them in one write), so the request wakes once, not twice,
        #: when an upstream writes its head and its body apart (gunicorn does).
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.head_only = False
        self.message_complete = False
        self.keep_alive = False
        self.got_bytes = False
        self.failure: UpstreamFailed | None = None
        self.body: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.paused = False
        self.body_ready: asyncio.Future[None] | None = None

    # --- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self._arm_timer()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamFailed(502, f"upstream {self.pool.name} sent an invalid response"))
            self._close()
            del exc

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        if not self.message_complete:
            if self.head_complete and not self._has_length():
                # a body delimited by the end of the connection (HTTP/1.0 style)
                self.on_message_complete()
            else:
                self._fail(_Retryable() if not self.got_bytes else None)

    # --- httptools callbacks --------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        # asked now: once the message is complete the parser has forgotten
        self.keep_alive = self.parser.should_keep_alive()
        self.head_complete = True
        if self.head_only:  # the answer to HEAD has no body, whatever its length says
            self._set_ready()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > BUFFER_HIGH_WATER and self.transport is not None:
            # The client reads slower than the upstream writes: wait for it,
            # and do not hold its slowness against the upstream (no timer).
            self.paused = True
            self.transport.pause_reading()
            self._cancel_timer()
        self._set_ready()
        self._wake()

    def on_message_complete(self) -> None:
        self.message_complete = True
        self._cancel_timer()
        self._set_ready()
        self._wake()

    # --- the exchange ---------------------------------------------------------

    def _has_length(self) -> bool:
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == b"content-length" or (
                lowered == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                return True
        return (
            self.parser.get_status_code() in (204, 304)
            or 100 <= self.parser.get_status_code() < 200
        )

    def _set_ready(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def _wake(self) -> None:
        waiter = self.body_ready
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, failure: Exception | None) -> None:
        if failure is None:
            failure = UpstreamFailed(502, f"upstream {self.pool.name} closed the connection")
        if not self.ready.done():
            self.ready.set_exception(failure)
            self.ready.exception()  # retrieved: no "never retrieved" warning if unused
        elif isinstance(failure, UpstreamFailed):
            self.failure = failure
        else:
            self.failure = UpstreamFailed(502, f"upstream {self.pool.name} closed the connection")
        self._wake()

    def _arm_timer(self, seconds: float | None = None) -> None:
        """The upstream must send something within ``seconds`` (default: the
        read timeout) from now. Called on every read, so it only notes the
        time: the one timer, when it fires, looks whether the upstream was
        heard since and waits for the rest (a timer per read cost more CPU
        than the read's parse)."""
        self._heard_at = self.loop.time()
        self._quiet_limit = self.pool.read_timeout if seconds is None else seconds
        if seconds is not None:
            self._cancel_timer()  # a deadline of its own may be shorter than the one set
        if self._timer is None:
            self._timer = self.loop.call_at(self._heard_at + self._quiet_limit, self._check_quiet)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_quiet(self) -> None:
        due = self._heard_at + self._quiet_limit
        if self.loop.time() < due:
            self._timer = self.loop.call_at(due, self._check_quiet)
            return
        self._timer = None
        self._timed_out()

    def _timed_out(self) -> None:
        self._fail(UpstreamFailed(504, f"upstream {self.pool.name} timed out"))
        self._close()

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def exchange(self, request: bytes, timeout: float | None, *, head_only: bool) -> None:
        """Send ``request`` and wait for the response's head and first body
        bytes (``head_only``: the head; the answer to a HEAD request)."""
        assert self.transport is not None
        self.used = True
        self.head_only = head_only
        self.transport.write(request)
        self._arm_timer(timeout)
        await self.ready

    async def next_chunk(self) -> bytes | None:
        while True:
            if self.body:
                chunk = self.body.popleft()
                self.buffered -= len(chunk)
                if self.paused and self.buffered <= BUFFER_HIGH_WATER // 2:
                    self.paused = False
                    if self.transport is not None and not self.closed:
                        self.transport.resume_reading()
                        if not self.message_complete:
                            self._arm_timer()
                return chunk
            if self.message_complete:
                return None
            if self.failure is not None:
                raise self.failure
            self.body_ready = self.loop.create_future()
            await self.body_ready
            self.body_ready = None

    def finish(self, *, reusable: bool) -> None:
        self._cancel_timer()
        if reusable and not self.closed and self.keep_alive:
            self._reset_exchange()
            self.pool.give_back(self)
        else:
            self._close()


class Upstream:
    """A named backend: its idle connections and its circuit breaker."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        pool_size: int,
        connect_timeout: float,
        read_timeout: float,
        keepalive: float,
        breaker: Breaker,
    ) -> None:
        parts = urlsplit(url)
        self.name = name
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.netloc = parts.netloc.encode("latin-1")
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive = keepalive
        self.breaker = breaker
        self._idle: list[_Connection] = []

    def give_back(self, connection: _Connection) -> None:
        connection.idle_since = time.monotonic()
        if len(self._idle) < self.pool_size:
            self._idle.append(connection)
        else:
            connection._close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop()._close()

    async def _connection(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            # The upstream closes idle connections after its own keep-alive;
            # reusing one at that moment fails the request: expire ours first.
            if connection.closed or now - connection.idle_since > self.keepalive:
                connection._close()
                continue
            return connection
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self), self.host, self.port),
                self.connect_timeout,
            )
        except TimeoutError as exc:
            raise UpstreamFailed(504, f"upstream {self.name} timed out connecting") from exc
        except OSError as exc:
            raise UpstreamFailed(502, f"upstream {self.name} refused the connection") from exc
        return connection

    async def send(
        self,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        retry: bool,
        timeout: float | None = None,
    ) -> UpstreamResponse:
        """Send a request and return once the response's head and first body
        bytes are in (see ``_Connection.ready``);
        failures become :class:`UpstreamFailed` with the status the client
        should see, and count against the breaker."""
        if not self.breaker.allow():
            raise UpstreamFailed(
                503, f"upstream {self.name} is failing; try again later", self.breaker.retry_after()
            )
        request = _serialise(method, target, self.netloc, headers, body)
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            connection: _Connection | None = None
            try:
                connection = await self._connection()
                await connection.exchange(request, timeout, head_only=method == "HEAD")
            except _Retryable:
                if attempt + 1 < attempts:
                    continue
                self.breaker.failed()
                raise UpstreamFailed(
                    502, f"upstream {self.name} closed the connection without answering"
                ) from None
            except UpstreamFailed:
                if connection is not None:
                    connection._close()
                self.breaker.failed()
                raise
            except asyncio.CancelledError:
                if connection is not None:
                    connection._close()
                raise
            self.breaker.succeeded()
            return UpstreamResponse(connection, head_only=method == "HEAD")
        raise AssertionError("unreachable")

    def cut(self) -> None:
        """The upstream broke off after its headers: that is its fault."""
        self.breaker.failed()


def _serialise(
    method: str, target: bytes, netloc: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> bytes:
    lines = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\nHost: ", netloc, b"\r\n"]
    for name, value in headers:
        lines += (name, b": ", value, b"\r\n")
    if body or method in ("POST", "PUT", "PATCH"):
        lines += (b"Content-Length: ", str(len(body)).encode("ascii"), b"\r\n")
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)
