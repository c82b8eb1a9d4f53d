"""The hot path: a raw WSGI app that forwards a request to the upstream its
route picks, streaming both bodies through a pooled urllib3 connection.

No Flask here on purpose: the issue measured a Flask + httpx proxy at 0.18x of
direct; each microsecond on this path is paid on every request. Errors (rare)
are answered through the admin app, so they carry the one error envelope.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote, unquote_to_bytes, urlsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from strangler_proxy.domain import (
    MONOLITH,
    SAFE_METHODS,
    SHADOWED_METHODS,
    BadPath,
    Breaker,
    Route,
    normalise_path,
)
from strangler_proxy.metrics import Metrics
from strangler_proxy.traffic import Traffic

__all__ = ["ADMIN_PREFIX", "Forwarder", "Upstream", "current_request_id"]

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("strangler_proxy.access")

ADMIN_PREFIX = "/_strangler"
REQUEST_ID_HEADER = "X-Request-ID"
#: Headers only the proxy sets; a client sending them is ignored.
INTERNAL_PREFIX = "x-strangler-"
SHADOW_HEADER = "X-Strangler-Shadow"
CHUNK_SIZE = 64 * 1024
#: Shadow comparisons look at bodies up to this size; larger ones are skipped.
SHADOW_BODY_LIMIT = 256 * 1024
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_ACCEPTABLE_REQUEST_ID = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"
)

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def current_request_id() -> str:
    return _request_id.get()


class UpstreamFailed(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


class BodyTooLarge(Exception):
    pass


class _ExpiringPool(urllib3.HTTPConnectionPool):
    """A pool that drops connections idle longer than ``keepalive`` seconds.

    The upstream closes idle connections after its own keep-alive; reusing one
    at that moment fails the request. Expiring ours first avoids the race.
    """

    keepalive = 30.0

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)
        idle_since = getattr(conn, "_idle_since", None)
        if idle_since is not None and time.monotonic() - idle_since > self.keepalive:
            conn.close()
        return conn

    def _put_conn(self, conn: Any) -> None:
        if conn is not None:
            conn._idle_since = time.monotonic()
        super()._put_conn(conn)


class Upstream:
    """A named backend: its connection pool and its circuit breaker."""

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
        self.host = parts.netloc
        self.timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self.pool = _ExpiringPool(
            parts.hostname or "127.0.0.1",
            parts.port or 80,
            maxsize=pool_size,
            block=False,
            retries=False,
            timeout=self.timeout,
        )
        self.pool.keepalive = keepalive
        self.breaker = breaker

    def send(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: Any,
        *,
        chunked: bool,
        retry: bool,
        timeout: urllib3.Timeout | None = None,
    ) -> urllib3.BaseHTTPResponse:
        """Send and return the response with its body unread; failures become
        :class:`UpstreamFailed` with the status the client should see."""
        if not self.breaker.allow():
            raise UpstreamFailed(
                503, f"upstream {self.name} is failing; try again later", self.breaker.retry_after()
            )
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            try:
                response = self.pool.urlopen(
                    method,
                    target,
                    body=body,
                    headers=headers,
                    retries=False,
                    redirect=False,
                    assert_same_host=False,
                    preload_content=False,
                    decode_content=False,
                    chunked=chunked,
                    timeout=timeout or self.timeout,
                )
            except BodyTooLarge:
                raise
            except (ConnectTimeoutError, ReadTimeoutError) as exc:
                # NewConnectionError (refused) subclasses ConnectTimeoutError.
                if not isinstance(exc, NewConnectionError):
                    self.breaker.failed()
                    raise UpstreamFailed(504, f"upstream {self.name} timed out") from exc
                if attempt + 1 < attempts:
                    continue
                self.breaker.failed()
                raise UpstreamFailed(502, f"upstream {self.name} refused the connection") from exc
            except (NewConnectionError, ProtocolError, urllib3.exceptions.HTTPError) as exc:
                if isinstance(exc.__context__, BodyTooLarge) or isinstance(
                    getattr(exc, "reason", None), BodyTooLarge
                ):
                    raise BodyTooLarge() from exc
                if attempt + 1 < attempts:
                    logger.info("retrying %s %s on %s: %s", method, target, self.name, exc)
                    continue
                self.breaker.failed()
                raise UpstreamFailed(502, f"upstream {self.name} failed: {_why(exc)}") from exc
            self.breaker.succeeded()
            return response
        raise AssertionError("unreachable")


def _why(exc: Exception) -> str:
    if isinstance(exc, NewConnectionError):
        return "connection refused"
    return type(exc).__name__


class _LimitedInput:
    """Reads the request body from WSGI, refusing more than ``limit`` bytes."""

    def __init__(self, stream: Any, limit: int, length: int | None) -> None:
        self.stream = stream
        self.limit = limit
        self.remaining = length
        self.seen = 0
        self.exceeded = False

    def read(self, size: int = CHUNK_SIZE) -> bytes:
        if self.remaining is not None:
            size = min(size, self.remaining)
            if size <= 0:
                return b""
        data = self.stream.read(size)
        self.seen += len(data)
        if self.remaining is not None:
            self.remaining -= len(data)
        if self.seen > self.limit:
            self.exceeded = True
            raise BodyTooLarge()
        return data

    def chunks(self) -> Iterator[bytes]:
        while data := self.read(CHUNK_SIZE):
            yield data


class Forwarder:
    """The proxy's WSGI app: ``/_strangler/...`` to the admin app, every other
    request to the upstream its route picks."""

    def __init__(
        self,
        *,
        settings: dict[str, Any],
        table: Callable[[], Any],
        upstreams: dict[str, Upstream],
        admin: Any,
        errors: Callable[..., Any],
        metrics: Metrics,
        traffic: Traffic,
        shadows: ThreadPoolExecutor,
        on_mismatch: Callable[..., None],
    ) -> None:
        self.settings = settings
        self.table = table
        self.upstreams = upstreams
        self.admin = admin
        self.errors = errors
        self.metrics = metrics
        self.traffic = traffic
        self.shadows = shadows
        self.shadow_slots = threading.BoundedSemaphore(int(settings["SHADOW_IN_FLIGHT"]))
        self.on_mismatch = on_mismatch
        self.max_body = int(settings["MAX_BODY_BYTES"])
        self.canary_header = "HTTP_" + settings["CANARY_HEADER"].upper().replace("-", "_")
        self.canary_cookie = settings["CANARY_COOKIE"] + "="
        self.trusted_peers = frozenset(filter(None, settings["TRUSTED_PEERS"].split(",")))
        self.access_log = bool(settings["ACCESS_LOG"])
        self.shadow_timeout = urllib3.Timeout(
            connect=float(settings["CONNECT_TIMEOUT"]), read=float(settings["SHADOW_TIMEOUT"])
        )

    # --- the WSGI entry point -------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        started = time.perf_counter()
        incoming = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = (
            incoming
            if incoming and len(incoming) <= 128 and _ACCEPTABLE_REQUEST_ID.issuperset(incoming)
            else uuid.uuid4().hex
        )
        token = _request_id.set(request_id)
        try:
            return self._handle(environ, start_response, request_id, started)
        finally:
            _request_id.reset(token)

    def _handle(
        self,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        request_id: str,
        started: float,
    ) -> Any:
        method = environ["REQUEST_METHOD"]
        if method == "CONNECT":
            return self.errors(environ, start_response, 405, "CONNECT is not supported", request_id)
        try:
            path, query = self._target(environ)
        except BadPath as exc:
            return self.errors(
                environ, start_response, 400, f"bad request target: {exc}", request_id
            )
        if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
            environ["HTTP_X_REQUEST_ID"] = request_id
            # the admin app routes on the normalised path too (PEP 3333: latin-1 text)
            environ["PATH_INFO"] = unquote_to_bytes(path).decode("latin-1")
            return self.admin(environ, start_response)
        length = environ.get("CONTENT_LENGTH") or ""
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        try:
            content_length = int(length) if length else None
        except ValueError:
            return self.errors(environ, start_response, 400, "bad Content-Length", request_id)
        if content_length is not None and content_length > self.max_body:
            return self.errors(
                environ, start_response, 413, f"the body exceeds {self.max_body} bytes", request_id
            )

        route = self.table().match(method, path)
        primary = route.upstream_for(self._canary_key(environ)) if route else MONOLITH
        headers = self._request_headers(environ, request_id)
        target = path + ("?" + query if query else "")
        has_body = bool(content_length) or chunked
        body_input = _LimitedInput(environ["wsgi.input"], self.max_body, content_length)
        body: Any = None
        if has_body:
            body = body_input.chunks() if chunked else body_input
            if chunked:
                headers.pop("Content-Length", None)

        shadow = None
        if route is not None and route.mode == "shadow" and method in SHADOWED_METHODS:
            shadow = self._start_shadow(route, method, target, headers, request_id)

        used = primary
        try:
            try:
                response = self.upstreams[primary].send(
                    method,
                    target,
                    headers,
                    body,
                    chunked=chunked and has_body,
                    retry=method in IDEMPOTENT_METHODS and not has_body,
                )
            except UpstreamFailed as failure:
                if route is None or primary == MONOLITH:
                    raise
                self.traffic.service(route.name, error=True)
                if not (route.fallback and method in SAFE_METHODS):
                    raise
                logger.warning("falling back to the monolith for %s: %s", route.name, failure)
                used = MONOLITH
                response = self.upstreams[MONOLITH].send(
                    method, target, headers, None, chunked=False, retry=True
                )
            else:
                if route is not None and primary != MONOLITH:
                    self.traffic.service(route.name, error=response.status >= 500)
        except (BodyTooLarge, UpstreamFailed) as exc:
            answer = exc if isinstance(exc, UpstreamFailed) else None
            if answer is None or body_input.exceeded:
                answer = UpstreamFailed(413, f"the body exceeds {self.max_body} bytes")
            if shadow is not None:
                shadow.primary_finished(answer.status, None)
            return self._fail(environ, start_response, route, primary, started, request_id, answer)

        response_headers = _response_headers(response.headers, request_id)
        start_response(f"{response.status} {response.reason or ''}".rstrip(), response_headers)
        return _Body(self, response, route, used, method, path, request_id, started, shadow)

    # --- pieces ---------------------------------------------------------------

    def _target(self, environ: dict[str, Any]) -> tuple[str, str]:
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        if not raw:  # a server that keeps only the decoded path (in-process tests)
            raw = quote(environ.get("PATH_INFO", "/").encode("latin-1"), safe="/%")
            raw += "?" + environ["QUERY_STRING"] if environ.get("QUERY_STRING") else ""
        if not raw.startswith("/"):
            # absolute-form (or '*'): what a client sends to a forward proxy,
            # which this is not; it never leaves the machine.
            raise BadPath("this is not a forward proxy: absolute-form targets are refused")
        path, _, query = raw.partition("?")
        return normalise_path(path), query

    def _canary_key(self, environ: dict[str, Any]) -> str:
        key = environ.get(self.canary_header)
        if key:
            return key
        for part in environ.get("HTTP_COOKIE", "").split(";"):
            part = part.strip()
            if part.startswith(self.canary_cookie):
                return part[len(self.canary_cookie) :]
        return self._client_address(environ)

    def _client_address(self, environ: dict[str, Any]) -> str:
        peer = environ.get("REMOTE_ADDR", "")
        forwarded = environ.get("HTTP_X_FORWARDED_FOR")
        if forwarded and peer in self.trusted_peers:
            return forwarded.split(",")[0].strip()
        return peer

    def _request_headers(self, environ: dict[str, Any], request_id: str) -> dict[str, str]:
        connection_named = {
            token.strip().lower() for token in environ.get("HTTP_CONNECTION", "").split(",")
        }
        trusted = environ.get("REMOTE_ADDR", "") in self.trusted_peers
        headers: dict[str, str] = {}
        for key, value in environ.items():
            if not key.startswith("HTTP_"):
                continue
            name = key[5:].replace("_", "-").lower()
            if (
                name in HOP_BY_HOP
                or name in connection_named
                or name in ("host", "x-request-id", "expect")
                or name.startswith(INTERNAL_PREFIX)
                or (name.startswith("x-forwarded-") and not trusted)
            ):
                continue
            headers[name.title()] = value
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        if environ.get("CONTENT_LENGTH"):
            headers["Content-Length"] = environ["CONTENT_LENGTH"]
        peer = environ.get("REMOTE_ADDR", "")
        prior = headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        headers.setdefault("X-Forwarded-Proto", environ.get("wsgi.url_scheme", "http"))
        headers.setdefault("X-Forwarded-Host", environ.get("HTTP_HOST", ""))
        headers[REQUEST_ID_HEADER] = request_id
        return headers

    def _fail(
        self,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        route: Route | None,
        upstream: str,
        started: float,
        request_id: str,
        failure: UpstreamFailed,
    ) -> Any:
        extra = {"Retry-After": str(failure.retry_after)} if failure.retry_after else None
        self.record(
            route,
            upstream,
            environ["REQUEST_METHOD"],
            environ.get("PATH_INFO", ""),
            failure.status,
            started,
            request_id,
        )
        return self.errors(
            environ, start_response, failure.status, failure.message, request_id, extra
        )

    def record(
        self,
        route: Route | None,
        upstream: str,
        method: str,
        path: str,
        status: int,
        started: float,
        request_id: str,
    ) -> None:
        elapsed = time.perf_counter() - started
        name = route.name if route else "-"
        self.metrics.observe(name, upstream, status, elapsed)
        if route is not None:
            self.traffic.request(
                route.name, error=status >= 500, upstream=upstream, seconds=elapsed
            )
        if self.access_log:
            # The body may end after the request's context was left: name it again.
            token = _request_id.set(request_id)
            try:
                access_logger.info(
                    "rid=%s method=%s path=%s status=%s route=%s mode=%s upstream=%s ms=%.2f",
                    request_id,
                    method,
                    path,
                    status,
                    name,
                    route.mode if route else "-",
                    upstream,
                    elapsed * 1000,
                )
            finally:
                _request_id.reset(token)

    # --- shadow ---------------------------------------------------------------

    def _start_shadow(
        self, route: Route, method: str, target: str, headers: dict[str, str], request_id: str
    ) -> _Shadow | None:
        upstream = self.upstreams.get(route.service)
        if upstream is None or not self.shadow_slots.acquire(blocking=False):
            self.metrics.shadow(route.name, "skipped")
            return None
        shadow = _Shadow(self, route, method, target, request_id)
        shadow_headers = {**headers, SHADOW_HEADER: "1"}
        try:
            self.shadows.submit(shadow.run, upstream, shadow_headers)
        except RuntimeError:  # the pool is shutting down
            self.shadow_slots.release()
            return None
        return shadow


class _Shadow:
    """A shadow request in flight; compares once both sides are done."""

    def __init__(
        self, forwarder: Forwarder, route: Route, method: str, target: str, request_id: str
    ) -> None:
        self.forwarder = forwarder
        self.route = route
        self.method = method
        self.target = target
        self.request_id = request_id
        self.primary_done = threading.Event()
        self.primary: tuple[int, bytes] | None = None

    def primary_finished(self, status: int, body: bytes | None) -> None:
        self.primary = (status, body) if body is not None else None
        self.primary_done.set()

    def run(self, upstream: Upstream, headers: dict[str, str]) -> None:
        try:
            self._run(upstream, headers)
        except Exception:
            logger.exception("shadow comparison failed for %s", self.route.name)
        finally:
            self.forwarder.shadow_slots.release()

    def _run(self, upstream: Upstream, headers: dict[str, str]) -> None:
        metrics = self.forwarder.metrics
        try:
            response = upstream.send(
                self.method,
                self.target,
                headers,
                None,
                chunked=False,
                retry=False,
                timeout=self.forwarder.shadow_timeout,
            )
            try:
                body = response.read(SHADOW_BODY_LIMIT + 1)
            finally:
                response.release_conn()
            status = response.status
        except (UpstreamFailed, urllib3.exceptions.HTTPError, OSError) as exc:
            metrics.shadow(self.route.name, "failed")
            logger.info("shadow of %s failed: %s", self.route.name, exc)
            return
        if not self.primary_done.wait(timeout=float(self.forwarder.settings["READ_TIMEOUT"])):
            metrics.shadow(self.route.name, "skipped")
            return
        if self.primary is None or len(body) > SHADOW_BODY_LIMIT:
            metrics.shadow(self.route.name, "skipped")
            return
        self.forwarder.on_mismatch(self, self.primary, (status, body))


class _Body:
    """The upstream's body streamed to the client; bookkeeping on close."""

    def __init__(
        self,
        forwarder: Forwarder,
        response: urllib3.BaseHTTPResponse,
        route: Route | None,
        upstream: str,
        method: str,
        path: str,
        request_id: str,
        started: float,
        shadow: _Shadow | None,
    ) -> None:
        self.forwarder = forwarder
        self.response = response
        self.route = route
        self.upstream = upstream
        self.method = method
        self.path = path
        self.request_id = request_id
        self.started = started
        self.shadow = shadow
        self.complete = False
        self.captured: list[bytes] | None = [] if shadow is not None else None
        self.captured_size = 0

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self.response.stream(CHUNK_SIZE, decode_content=False):
                if self.captured is not None:
                    self.captured_size += len(chunk)
                    if self.captured_size <= SHADOW_BODY_LIMIT:
                        self.captured.append(chunk)
                yield chunk
        except (ProtocolError, ReadTimeoutError, OSError) as exc:
            # Bytes already reached the client: all we can do is cut the
            # connection so it sees a truncated response, not a complete one.
            logger.warning("upstream %s broke mid-body: %s", self.upstream, exc)
            self.forwarder.upstreams[self.upstream].breaker.failed()
            raise
        self.complete = True

    def close(self) -> None:
        response = self.response
        if self.complete:
            response.release_conn()
        else:
            response.close()
            response.release_conn()
        status = response.status if self.complete else 502
        self.forwarder.record(
            self.route, self.upstream, self.method, self.path, status, self.started, self.request_id
        )
        if self.shadow is not None:
            body = b"".join(self.captured or ()) if self.complete else None
            if self.captured_size > SHADOW_BODY_LIMIT:
                body = None
            self.shadow.primary_finished(response.status, body)


def _response_headers(headers: Any, request_id: str) -> list[tuple[str, str]]:
    connection_named = {token.strip().lower() for token in headers.get("Connection", "").split(",")}
    result = [
        (name, value)
        for name, value in headers.items()
        if name.lower() not in HOP_BY_HOP and name.lower() not in connection_named
    ]
    if "X-Request-ID" not in headers:
        result.append((REQUEST_ID_HEADER, request_id))
    return result
