"""The proxy against hostile clients and broken upstreams, one section per
category of issue 11: nothing a client does wrong reaches an upstream or
counts against one, and nothing it sends changes the route a request takes
but its plain path.

Most tests run the proxy in-process (the same protocol and settings its
gunicorn worker uses) in front of a raw upstream that records what it heard.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import time

import httpx
import pytest

from servicekit.db import utcnow
from tests.proxy.conftest import client_for, port_of, serve_proxy, set_mode
from tests.proxy.raw import counting_upstream, raw_upstream
from tests.support.processes import poll

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


def send_raw(port: int, data: bytes, *, close_write: bool = False, timeout: float = 5) -> bytes:
    """Send ``data``, optionally half-close, and read until the proxy closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(data)
        if close_write:
            connection.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := connection.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
    return b"".join(chunks)


def status_of(reply: bytes) -> int:
    assert reply.startswith(b"HTTP/1.1 "), reply[:200]
    return int(reply.split(b" ", 2)[1])


def route_counts(proxy, route: str) -> dict[str, int]:
    since = utcnow() - dt.timedelta(minutes=5)
    return proxy.store.traffic_since(since, route=route).get(route, {})


@pytest.fixture
def quiet_upstreams(make_proxy):
    """A proxy whose monolith and billing service are raw upstreams that say
    ``ok`` and keep every request they hear; ``billing`` routed to the service."""
    with (
        counting_upstream(OK) as (monolith, monolith_heard),
        counting_upstream(OK) as (
            billing,
            billing_heard,
        ),
    ):
        proxy = make_proxy(
            MONOLITH_URL=monolith, BILLING_URL=billing, BREAKER_THRESHOLD=2, BODY_TIMEOUT=0.5
        )
        with client_for(proxy) as client:
            assert set_mode(client, "billing", "service").status_code == 200
        yield proxy, (monolith_heard, billing_heard)


def nothing_heard(heard) -> bool:
    monolith, billing = heard
    return not monolith and not billing


# --- 1. a client's fault is not the upstream's ---------------------------------

CUT_SHORT = {
    "chunked body cut after 5 bytes": (
        b"POST /billing/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello"
    ),
    "Content-Length body cut short": (
        b"POST /billing/x HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly ten b"
    ),
}


@pytest.mark.parametrize("request_bytes", CUT_SHORT.values(), ids=CUT_SHORT.keys())
def test_a_body_cut_short_reaches_no_upstream_and_counts_against_none(
    quiet_upstreams, request_bytes
):
    proxy, heard = quiet_upstreams
    for _ in range(6):  # three times the breaker's threshold
        send_raw(port_of(proxy), request_bytes, close_write=True)

    with client_for(proxy) as client:
        healthy = client.get("/billing/x")
        unrouted = client.get("/elsewhere")

    assert (healthy.status_code, unrouted.status_code) == (200, 200)
    assert proxy.upstreams["billing"].breaker.state == "closed"
    monolith, billing = heard
    assert [h.split(b" ")[0:2] for h in billing] == [[b"GET", b"/billing/x"]]
    assert [h.split(b" ")[0:2] for h in monolith] == [[b"GET", b"/elsewhere"]]
    counts = poll(lambda: (c := route_counts(proxy, "billing")).get("requests") == 7 and c)
    assert counts["errors"] == 0
    assert counts["service_errors"] == 0
    assert counts["service_requests"] == 1


def test_a_huge_chunk_that_never_comes_gets_408_in_time(quiet_upstreams):
    proxy, heard = quiet_upstreams
    started = time.monotonic()
    reply = send_raw(
        port_of(proxy),
        b"POST /billing/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nfffffff\r\nabc",
    )
    assert status_of(reply) == 408
    assert time.monotonic() - started < 3
    assert nothing_heard(heard)


def test_a_chunk_size_that_overflows_gets_400(quiet_upstreams):
    proxy, heard = quiet_upstreams
    reply = send_raw(
        port_of(proxy),
        b"POST /billing/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"ffffffffffffffffffffffff\r\nabc",
    )
    assert status_of(reply) == 400
    assert nothing_heard(heard)


def test_a_client_that_leaves_mid_response_is_logged_499_not_502(proxy):
    with socket.create_connection(("127.0.0.1", port_of(proxy)), timeout=5) as connection:
        connection.sendall(b"GET /big?bytes=20000000 HTTP/1.1\r\nHost: t\r\n\r\n")
        connection.recv(65536)  # the answer has begun; now leave

    def recorded() -> str:
        text = proxy.metrics.render().decode()
        return text if 'status="499"' in text else ""

    metrics = poll(recorded, message="the abandoned response was not recorded")
    assert 'status="502"' not in metrics
    assert proxy.upstreams["monolith"].breaker.state == "closed"


# --- 2. slow clients -----------------------------------------------------------


def test_slow_clients_hold_sockets_not_workers(make_proxy):
    proxy = make_proxy(HEADER_TIMEOUT=1.0)
    port = port_of(proxy)
    slow = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(80)]
    try:
        for connection in slow:
            connection.sendall(b"GET /echo/x HTTP/1.1\r\nHost: t\r\nX-Half: a")
        with client_for(proxy) as client:
            started = time.monotonic()
            answer = client.get("/echo/x")
            elapsed = time.monotonic() - started
        assert answer.status_code == 200
        assert elapsed < 1.0

        # and the half-sent headers are given up on, with 408
        reply = slow[0].recv(65536)
        assert status_of(reply) == 408
    finally:
        for connection in slow:
            connection.close()


# --- 3. an upstream that fails after its headers -----------------------------------

BROKEN_BODY = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n0123456789"
)


def test_an_upstream_that_breaks_mid_body_cuts_the_client_and_counts_against_itself(
    make_proxy,
):
    with raw_upstream(BROKEN_BODY) as url:
        proxy = make_proxy(BILLING_URL=url, BREAKER_THRESHOLD=100)
        with client_for(proxy) as client:
            set_mode(client, "billing", "service")
            with pytest.raises(httpx.RemoteProtocolError):
                client.get("/billing/x")  # a truncated body, never a server's 500 page

    counts = poll(lambda: (c := route_counts(proxy, "billing")).get("requests") and c)
    assert counts["service_errors"] == 1


# --- 4. the request target and the framing -------------------------------------------

# nginx answers an unknown transfer coding with 501; the HTTP parser refuses
# one whose last coding is not chunked as malformed (400, RFC 9112 6.3) first.
REFUSED = {
    "a fragment": (b"GET /billing/x#/../../_strangler/routes HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "a bad method": (b"G@T /billing/x HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "no Host": (b"GET /billing/x HTTP/1.1\r\n\r\n", 400),
    "two Hosts": (b"GET /billing/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "a Host with a slash": (b"GET /billing/x HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    "a Host of dots": (b"GET /billing/x HTTP/1.1\r\nHost: ..\r\n\r\n", 400),
    "a gzip transfer coding": (
        b"POST /billing/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
        400,
    ),
    "gzip then chunked": (
        b"POST /billing/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    "Content-Length and chunked": (
        b"POST /billing/x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "100 KB of headers": (
        b"GET /billing/x HTTP/1.1\r\nHost: t\r\n"
        + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(100))
        + b"\r\n",
        431,
    ),
}


@pytest.mark.parametrize("request_bytes, status", REFUSED.values(), ids=REFUSED.keys())
def test_requests_nginx_refuses_are_refused_before_any_upstream(
    quiet_upstreams, request_bytes, status
):
    proxy, heard = quiet_upstreams
    reply = send_raw(port_of(proxy), request_bytes, close_write=True)
    assert status_of(reply) == status
    assert nothing_heard(heard)
    # in the access log and the metrics too, whoever refused it (the front
    # door or the dispatcher), and against no route or upstream
    counted = f'strangler_requests_total{{route="-",status="{status}",upstream="-"}} 1.0'
    poll(lambda: counted in proxy.metrics.render().decode(), message="the refusal was not counted")


def test_an_upstream_sending_both_lengths_gets_502(make_proxy):
    both = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n"
    )
    with raw_upstream(both) as url, client_for(make_proxy(MONOLITH_URL=url)) as client:
        assert client.get("/anything").status_code == 502


# --- 5. the body is checked before an upstream hears of it ----------------------------


def test_an_invalid_chunked_body_gets_400_and_reaches_no_upstream(quiet_upstreams):
    proxy, heard = quiet_upstreams
    reply = send_raw(
        port_of(proxy),
        b"POST /billing/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n",
    )
    assert status_of(reply) == 400
    assert nothing_heard(heard)


def test_a_chunked_body_over_the_limit_reaches_no_upstream(quiet_upstreams):
    proxy, heard = quiet_upstreams
    chunk = b"x" * 60_000
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(2)) + b"0\r\n\r\n"
    reply = send_raw(
        port_of(proxy),
        b"POST /billing/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + body,
    )
    assert status_of(reply) == 413
    assert nothing_heard(heard)


def test_a_declared_body_over_the_limit_gets_413_without_100_continue(quiet_upstreams):
    proxy, heard = quiet_upstreams
    reply = send_raw(
        port_of(proxy),
        b"POST /billing/x HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n"
        b"Expect: 100-continue\r\n\r\n",
    )
    assert status_of(reply) == 413
    assert b"100 Continue" not in reply
    assert nothing_heard(heard)


# --- 6. trust: the proxy's TRUSTED_PEERS is the only trust decision ------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory, upstreams):
    from tests.support.databases import migrate

    directory = tmp_path_factory.mktemp("hardening-proxy")
    url = f"sqlite:///{directory}/proxy.db"
    migrate("proxy", url)
    server = serve_proxy(directory, url, upstreams.monolith.url, upstreams.billing.url, workers=1)
    yield server
    server.stop()


@pytest.mark.e2e
def test_a_local_client_can_neither_set_the_scheme_nor_break_a_request(served):
    hostile = {"X-Forwarded-Proto": "https", "SCRIPT_NAME": "/evil", "X-Forwarded-For": "1.2.3.4"}
    with httpx.Client(base_url=served.url, timeout=5) as client:
        echoed = client.get("/echo/x", headers=hostile)
        health = client.get("/_strangler/health", headers=hostile)

    assert echoed.status_code == 200 and health.status_code == 200
    headers = echoed.json()["headers"]
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert echoed.json()["path"] == "/echo/x"


@pytest.mark.e2e
def test_the_api_description_is_public_and_the_state_is_not(served):
    # Intended: the OpenAPI document and its docs page say how to call the
    # admin API, which the repository says too; every route's state and every
    # change needs a token.
    with httpx.Client(base_url=served.url, timeout=5) as client:
        assert client.get("/_strangler/openapi.json").status_code == 200
        assert client.get("/_strangler/routes").status_code == 401
        assert client.get("/_strangler/routes/billing/mismatches").status_code == 401


def test_a_slow_reader_is_waited_for_and_not_held_against_the_upstream(make_proxy):
    proxy = make_proxy(READ_TIMEOUT=0.5)
    size = 30_000_000
    with socket.create_connection(("127.0.0.1", port_of(proxy)), timeout=10) as connection:
        connection.sendall(
            b"GET /big?bytes=%d HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % size
        )
        time.sleep(1.5)  # the fault planted: a client slower than READ_TIMEOUT
        received = 0
        while chunk := connection.recv(1 << 20):
            received += len(chunk)

    assert received > size  # the whole body (and its chunk framing) arrived
    assert proxy.upstreams["monolith"].breaker._failures == 0


def test_a_client_that_stops_reading_is_cut_after_the_send_timeout(make_proxy):
    proxy = make_proxy(SEND_TIMEOUT=0.5)
    size = 50_000_000
    with socket.create_connection(("127.0.0.1", port_of(proxy)), timeout=10) as connection:
        connection.sendall(b"GET /big?bytes=%d HTTP/1.1\r\nHost: t\r\n\r\n" % size)

        def recorded() -> str:
            text = proxy.metrics.render().decode()
            return text if 'status="499"' in text else ""

        poll(recorded, message="the proxy kept waiting on a client that never reads")
        received = 0
        with contextlib.suppress(ConnectionResetError):
            while chunk := connection.recv(1 << 20):
                received += len(chunk)
    assert received < size  # cut off: what was in flight, then the end
    assert proxy.upstreams["monolith"].breaker.state == "closed"
