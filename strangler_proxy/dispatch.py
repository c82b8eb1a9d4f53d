"""The data plane: checks a request, picks its route and upstream, and
streams the answer back.

A request's walk: ``server.py`` parses it (httptools, on uvloop) and buffers
its body → here it is checked (``headers.py``), its route matched
(``domain.py``) → ``upstream.py`` sends it on a pooled connection → here the
answer is streamed back on the client's connection, and a record is handed
to the recorder. ``/_strangler/...`` goes to the admin app instead.

Nothing the client does wrong reaches an upstream or counts against one: the
request is refused (400/405/413/431/501) or, when the client goes away, logged
as 499 — before any upstream is contacted, because the body is read first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import unquote

from servicekit.ownership import NotOwner, OwnershipMoving
from servicekit.requestids import bound_request_id, new_request_id
from strangler_proxy import headers as rules
from strangler_proxy.domain import (
    MONOLITH,
    SHADOWED_METHODS,
    BadPath,
    Ownership,
    Route,
    RouteTable,
    normalise_path,
    owner_of,
)
from strangler_proxy.recording import CLIENT_CLOSED, Record, Recorder
from strangler_proxy.server import (
    BodyRefused,
    ClientConnection,
    ClientGone,
    Request,
    error_answer,
)
from strangler_proxy.shadowing import SHADOW_BODY_LIMIT, Shadower
from strangler_proxy.upstream import Upstream, UpstreamFailed, UpstreamResponse

__all__ = ["ADMIN_PREFIX", "AdminApp", "Dispatcher", "OwnershipHolder", "TableHolder"]

logger = logging.getLogger(__name__)

#: The admin app: given the request, the connection to answer on, its
#: decoded path and its request id.
AdminApp = Callable[[Request, ClientConnection, str, str], Awaitable[None]]

ADMIN_PREFIX = "/_strangler"
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: How an app says "these records are the other side's" (servicekit.ownership).
NOT_OWNER_CODE = f'"{NotOwner.code}"'.encode()
#: How an app says "these records are being handed over, ask again".
MOVING_CODE = f'"{OwnershipMoving.code}"'.encode()
#: A refusal is a small JSON envelope; a bigger 409 or 503 body is passed on as it is.
OWNERSHIP_PEEK_BYTES = 16 * 1024
#: Asking again for records being handed over: 10 ms, doubling to 100 ms.
FENCE_FIRST_PAUSE, FENCE_MAX_PAUSE = 0.01, 0.1


class TableHolder:
    """The route table the data plane reads; the background thread swaps it."""

    def __init__(self, table: RouteTable) -> None:
        self.table = table


class OwnershipHolder:
    """Each data move's ownership as the background thread last heard it from
    the data mover (None: it could not say)."""

    def __init__(self) -> None:
        self.by_move: dict[str, Ownership | None] = {}


class _Buffered:
    """An upstream answer whose (small) body was read to look at it."""

    def __init__(self, response: UpstreamResponse, body: bytes) -> None:
        self.status = response.status
        self.reason = response.reason
        self.headers = response.headers
        self._response = response
        self._body = body

    async def next_chunk(self) -> bytes | None:
        body, self._body = self._body, b""
        return body or None

    def close(self) -> None:
        self._response.close()


class Dispatcher:
    """The proxy's data plane; the front door calls it with each request."""

    def __init__(
        self,
        *,
        routes: TableHolder,
        owners: OwnershipHolder,
        upstreams: dict[str, Upstream],
        admin: AdminApp,
        recorder: Recorder,
        shadower: Shadower,
        max_body: int,
        body_timeout: float,
        fence_hold: float,
        canary_header: str,
        canary_cookie: str,
        trusted_peers: frozenset[str],
        on_shutdown: Callable[[], None],
    ) -> None:
        self.routes = routes
        self.owners = owners
        self.upstreams = upstreams
        self.admin = admin
        self.record = recorder.add
        self.shadower = shadower
        self.max_body = max_body
        self.body_timeout = body_timeout
        self.fence_hold = fence_hold
        self.canary_header = canary_header.lower().encode("latin-1")
        self.canary_cookie = canary_cookie.encode("latin-1") + b"="
        self.trusted_peers = trusted_peers
        self.on_shutdown = on_shutdown

    async def __call__(self, request: Request, client: ClientConnection) -> None:
        started = time.perf_counter()
        try:
            facts = rules.check_request(request.method, request.http_version, request.headers)
        except rules.BadRequest as refusal:
            request_id = new_request_id()
            _error(client, refusal.status, refusal.message, request_id, close=True)
            self.record(_refused(request, refusal.status, started, request_id))
            return
        request_id = rules.request_id_from(facts.request_id) or new_request_id()
        with bound_request_id(request_id):
            await self._handle(request, client, facts, request_id, started)

    def refused(self, request: Request, status: int, request_id: str) -> None:
        """The front door refused a request itself (a malformed or oversized
        head, one too slow to arrive): logged and counted like any other,
        against no route and no upstream."""
        self.record(_refused(request, status, time.perf_counter(), request_id))

    def shutdown(self) -> None:
        """The worker stops (its connections are done): the records of its
        last requests are written before it goes."""
        self.on_shutdown()

    async def _handle(
        self,
        request: Request,
        client: ClientConnection,
        facts: rules.RequestFacts,
        request_id: str,
        started: float,
    ) -> None:
        method, headers = request.method, request.headers
        try:
            path, query = _target(request.target)
        except BadPath as exc:
            _error(client, 400, f"bad request target: {exc}", request_id)
            self.record(_refused(request, 400, started, request_id))
            return
        if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
            # the admin app routes on the normalised path too
            await self.admin(request, client, _decoded(path), request_id)
            return
        if facts.content_length is not None and facts.content_length > self.max_body:
            # before reading a byte: no "100 Continue" for a body we refuse
            _error(client, 413, f"the body exceeds {self.max_body} bytes", request_id, close=True)
            self.record(
                Record(None, "-", "-", method, path, 413, _since(started), request_id, None)
            )
            return

        route = self.routes.table.match(method, path)
        mode = route.mode if route is not None else "-"
        if facts.content_length or facts.chunked:
            try:
                body = await client.read_body(request, self.body_timeout)
            except BodyRefused as refusal:
                _error(client, refusal.status, refusal.message, request_id, close=True)
                self.record(
                    Record(
                        _name(route),
                        mode,
                        "-",
                        method,
                        path,
                        refusal.status,
                        _since(started),
                        request_id,
                        None,
                    )
                )
                return
            except ClientGone:
                self.record(
                    Record(
                        _name(route),
                        mode,
                        "-",
                        method,
                        path,
                        CLIENT_CLOSED,
                        _since(started),
                        request_id,
                        None,
                        "client-gone",
                    )
                )
                return
        else:
            body = b""

        peer = client.peer
        primary = MONOLITH
        key: bytes | None = None
        if route is not None and route.data is not None:
            # Records that move: sent to the side that owns them, in every mode.
            key = rules.canary_key(facts, headers, self.canary_header, self.canary_cookie)
            primary = self._owner(route, key)
        elif route is not None and route.mode in ("canary", "service"):
            key = rules.canary_key(facts, headers, self.canary_header, self.canary_cookie)
            primary = route.upstream_for(
                key.decode("latin-1") if key else self._client_address(peer, headers)
            )
        forwarded = rules.upstream_headers(
            headers,
            facts,
            peer=peer,
            trusted=peer in self.trusted_peers,
            scheme="http",
            request_id=request_id,
        )
        target = path.encode("latin-1") + (b"?" + query if query else b"")
        retry = method in IDEMPOTENT_METHODS and not body

        used = primary
        held, fence_note = 0.0, ""
        service_failed: bool | None = None
        response: UpstreamResponse | _Buffered
        try:
            try:
                response = await self.upstreams[primary].send(
                    method, target, forwarded, body, retry=retry
                )
            except UpstreamFailed as failure:
                if route is None or primary == MONOLITH:
                    raise
                service_failed = True
                if not route.may_fall_back(method):
                    raise
                logger.warning("falling back to the monolith for %s: %s", route.name, failure)
                used = MONOLITH
                response = await self.upstreams[MONOLITH].send(
                    method, target, forwarded, b"", retry=True
                )
            else:
                if route is not None and route.data is not None and response.status in (409, 503):
                    response, used, held, fence_note = await self._follow_the_owner(
                        route, key, response, method, target, forwarded, body, retry, used
                    )
                if route is not None and used != MONOLITH:
                    # the fence's "ask again" is the data move's, not a failure
                    service_failed = response.status >= 500 and fence_note != "fenced"
        except UpstreamFailed as failure:
            extra = (
                [(b"retry-after", str(failure.retry_after).encode())] if failure.retry_after else []
            )
            _error(client, failure.status, failure.message, request_id, extra)
            self.record(
                Record(
                    _name(route),
                    mode,
                    used,
                    method,
                    path,
                    failure.status,
                    _since(started),
                    request_id,
                    service_failed,
                )
            )
            return

        shadow = (
            route is not None
            and route.mode == "shadow"
            and method in SHADOWED_METHODS
            and route.service in self.upstreams
        )
        if shadow:
            assert route is not None
            if not self.shadower.wanted(route.shadow_sample):
                self.shadower.skipped(route)
                shadow = False
        note, captured = await self._stream(
            client, response, request_id, used, capture=shadow, held=held
        )
        status = response.status
        if note == "client-gone":
            status = CLIENT_CLOSED  # nobody heard it; the upstream's answer was fine
        elif note == "upstream-cut" and route is not None and used != MONOLITH:
            service_failed = True
        self.record(
            Record(
                _name(route),
                mode,
                used,
                method,
                path,
                status,
                _since(started),
                request_id,
                service_failed,
                note or fence_note,
            )
        )
        if shadow:
            assert route is not None
            if captured is None:
                self.shadower.skipped(route)
            else:
                self.shadower.send(
                    self.upstreams[route.service],
                    route,
                    method,
                    target,
                    forwarded,
                    request_id,
                    (status, captured),
                )

    def _owner(self, route: Route, key: bytes | None) -> str:
        assert route.data is not None
        return owner_of(
            route, key.decode("latin-1") if key else None, self.owners.by_move.get(route.data)
        )

    async def _follow_the_owner(
        self,
        route: Route,
        key: bytes | None,
        response: UpstreamResponse | _Buffered,
        method: str,
        target: bytes,
        forwarded: list[tuple[bytes, bytes]],
        body: bytes,
        retry: bool,
        used: str,
    ) -> tuple[UpstreamResponse | _Buffered, str, float, str]:
        """The apps have the last word on who owns a record, and both of
        these answers say that nothing was applied:

        - 409 ``not_owner``: this worker's view of the owners is stale by a
          handover. Ask the other side, once.
        - 503 ``ownership_moving``: the records are being handed over. Hold
          the request and ask the owner again (by the newest view) until the
          handover is done, for at most ``fence_hold`` seconds; then the 503
          and its ``Retry-After`` go to the client.

        Returns the answer to pass on, who gave it, how long it was held, and
        a note for the access log: "held" (then answered), "fenced" (the 503
        passed on) or ""."""
        assert isinstance(response, UpstreamResponse)
        started = time.monotonic()
        pause = FENCE_FIRST_PAUSE
        asked_other = waited = False

        def outcome(
            answer: UpstreamResponse | _Buffered, fenced: bool = False
        ) -> tuple[UpstreamResponse | _Buffered, str, float, str]:
            seconds = time.monotonic() - started if waited else 0.0
            return answer, used, seconds, "fenced" if fenced else ("held" if waited else "")

        while True:
            seen = await response.read(OWNERSHIP_PEEK_BYTES)
            if seen is not None and response.status == 409 and NOT_OWNER_CODE in seen:
                if asked_other:
                    return outcome(_Buffered(response, seen))
                asked_other = True
                used = route.service if used == MONOLITH else MONOLITH
            elif seen is not None and response.status == 503 and MOVING_CODE in seen:
                if time.monotonic() - started + pause > self.fence_hold:
                    return outcome(_Buffered(response, seen), fenced=True)
                waited = True
                await asyncio.sleep(pause)
                pause = min(FENCE_MAX_PAUSE, pause * 2)
                asked_other = False  # the handover may end either way
                used = self._owner(route, key)
            else:
                return outcome(_Buffered(response, seen or b""))
            response.close()
            response = await self.upstreams[used].send(method, target, forwarded, body, retry=retry)
            if response.status not in (409, 503):
                return outcome(response)

    async def _stream(
        self,
        client: ClientConnection,
        response: UpstreamResponse | _Buffered,
        request_id: str,
        upstream: str,
        *,
        capture: bool,
        held: float = 0.0,
    ) -> tuple[str, bytes | None]:
        """Stream the answer; returns what cut it short ("" if nothing did)
        and, when ``capture``, the body (None when too big or incomplete).
        A request the fence ``held`` says for how long (``Server-Timing``)."""
        captured: list[bytes] | None = [] if capture else None
        size = 0
        try:
            client.start(
                response.status,
                rules.response_headers(response.headers, request_id, held),
                response.reason,
            )
            while (chunk := await response.next_chunk()) is not None:
                if client.closing:
                    return "client-gone", None
                if captured is not None:
                    size += len(chunk)
                    if size <= SHADOW_BODY_LIMIT:
                        captured.append(chunk)
                    else:
                        captured = None
                await client.write(chunk)
            if client.closing:
                return "client-gone", None
            client.end()
        except UpstreamFailed as exc:
            # Bytes may already be with the client: all we can do is cut the
            # connection so that it sees a truncated response, not a whole one.
            logger.warning("upstream %s broke mid-body: %s", upstream, exc)
            self.upstreams[upstream].cut()
            client.cut()
            return "upstream-cut", None
        finally:
            response.close()
        return "", (b"".join(captured) if captured is not None else None)

    def _client_address(self, peer: str, headers: list[tuple[bytes, bytes]]) -> str:
        if peer in self.trusted_peers:
            for name, value in headers:
                if name == b"x-forwarded-for":
                    return value.split(b",")[0].strip().decode("latin-1")
        return peer


def _target(raw: bytes) -> tuple[str, bytes]:
    if not raw.startswith(b"/"):
        # absolute-form (or '*'): what a client sends to a forward proxy,
        # which this is not; it never leaves the machine.
        raise BadPath("this is not a forward proxy: absolute-form targets are refused")
    if b"#" in raw:
        raise BadPath("a fragment is not part of a request target")
    path, _, query = raw.partition(b"?")
    try:
        text = path.decode("ascii")
    except UnicodeDecodeError as exc:
        raise BadPath("the target is not ASCII") from exc
    return normalise_path(text), query


def _decoded(path: str) -> str:
    return unquote(path, encoding="latin-1")


def _name(route: Route | None) -> str | None:
    return route.name if route is not None else None


def _since(started: float) -> float:
    return time.perf_counter() - started


def _refused(request: Request, status: int, started: float, request_id: str) -> Record:
    return Record(
        None,
        "-",
        "-",
        request.method or "-",  # a head refused before its method was read
        request.target.decode("latin-1")[:200] or "-",
        status,
        _since(started),
        request_id,
        None,
    )


def _error(
    client: ClientConnection,
    status: int,
    message: str,
    request_id: str,
    extra: list[tuple[bytes, bytes]] | None = None,
    *,
    close: bool = False,
) -> None:
    """Answer with servicekit's one error envelope; ``close`` when the
    request may have left a body (or garbage) on the wire."""
    headers, body = error_answer(status, message, request_id)
    client.respond(status, [*headers, *(extra or ())], body, close=close)
