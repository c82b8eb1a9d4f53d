"""The proxy under gunicorn, as `make run` serves it, in front of real
upstream processes: convergence across workers, the `strangler` CLI, hostile
requests on the wire, upstream faults and auto-demotion."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from servicekit.db import create_engine
from strangler_proxy.cli import main as strangler
from strangler_proxy.repository import RouteStore
from tests.proxy.conftest import TOKENS, serve_proxy, start_upstream
from tests.support.databases import fresh_database, migrate
from tests.support.processes import free_port, poll

pytestmark = pytest.mark.e2e


@pytest.fixture
def proxy_server(tmp_path, proxy_database, upstreams):
    """A proxy of its own, for a test that moves routes."""
    server = serve_proxy(tmp_path, proxy_database, upstreams.monolith.url, upstreams.billing.url)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared_proxy(tmp_path_factory, upstreams):
    """One proxy for the tests that leave the route table as they found it."""
    directory = tmp_path_factory.mktemp("shared-proxy")
    url = f"sqlite:///{directory}/proxy.db"
    migrate("proxy", url)
    server = serve_proxy(directory, url, upstreams.monolith.url, upstreams.billing.url)
    yield server
    server.stop()


def run_cli(server, *args: str, token: str = TOKENS["billing-team"], capsys) -> tuple[int, str]:
    code = strangler(["--url", server.url, "--token", token, *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


_FRESH = httpx.Client(timeout=5, limits=httpx.Limits(max_keepalive_connections=0))


def fresh_get(url: str, **kwargs) -> httpx.Response:
    """A request on a new connection, so that gunicorn may hand it to any worker."""
    return _FRESH.get(url, **kwargs)


def raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(request)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# --- toggling ------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_every_worker_honours_a_change_within_two_seconds(tmp_path, upstreams, backend, capsys):
    with fresh_database(backend, tmp_path, "proxy_converge") as url:
        migrate("proxy", url)
        server = serve_proxy(
            tmp_path, url, upstreams.monolith.url, upstreams.billing.url, POLL_SECONDS=0.5
        )
        try:
            assert_workers_converge(server, capsys)
        finally:
            server.stop()


def assert_workers_converge(server, capsys) -> None:
    health = server.url + "/_strangler/health"
    poll(
        lambda: len({fresh_get(health).json()["worker"] for _ in range(20)}) == 2,
        message="both workers should answer",
    )

    code, _ = run_cli(server, "set", "billing", "service", "--reason", "go", capsys=capsys)
    changed_at = time.monotonic()
    assert code == 0
    converged: dict[int, float] = {}

    def every_worker_is_on_revision_2() -> bool:
        answer = fresh_get(health).json()
        if answer["revision"] == 2:
            converged.setdefault(answer["worker"], time.monotonic() - changed_at)
        return len(converged) == 2

    poll(every_worker_is_on_revision_2, timeout=5, interval=0.01)
    assert max(converged.values()) <= 2.0, converged
    served = {fresh_get(server.url + "/billing/x").json()["upstream"] for _ in range(10)}
    assert served == {"billing"}


def test_the_cli_moves_a_route_step_by_step_and_shows_it(proxy_server, capsys):
    steps = [("shadow",), ("canary", "25"), ("service",), ("monolith",)]
    for step in steps:
        code, out = run_cli(
            proxy_server, "set", "billing", *step, "--reason", f"step {step[0]}", capsys=capsys
        )
        assert code == 0, out
        code, listing = run_cli(proxy_server, "routes", capsys=capsys)
        row = next(line for line in listing.splitlines() if line.startswith("billing "))
        assert step[0] in row
        if step[0] == "canary":
            assert "25%" in row

    code, history = run_cli(proxy_server, "history", "billing", capsys=capsys)
    assert code == 0
    lines = history.splitlines()
    assert "step monolith" in lines[2] and "billing-team" in lines[2]
    assert "canary 25%" in history and "seeded from the route file" in history


def test_the_cli_exits_non_zero_on_a_refusal(shared_proxy, capsys):
    forbidden = run_cli(shared_proxy, "set", "users", "service", "--reason", "x", capsys=capsys)
    stale = run_cli(
        shared_proxy,
        "set",
        "billing",
        "service",
        "--reason",
        "x",
        "--revision",
        "99",
        capsys=capsys,
    )
    bad = run_cli(shared_proxy, "set", "billing", "canary", "200", "--reason", "x", capsys=capsys)
    no_token = run_cli(shared_proxy, "routes", token="", capsys=capsys)

    assert forbidden[0] == 1 and "refused (403)" in forbidden[1]
    assert stale[0] == 1 and "refused (409)" in stale[1]
    assert bad[0] == 1 and "refused (422)" in bad[1]
    assert no_token[0] == 1 and "refused (401)" in no_token[1]


# --- hostile requests on the wire --------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        b"/../billing/x",
        b"/%2e%2e/billing/x",
        b"/billing%2Fx",
        b"/billing%5cx",
        b"/x%00y",
        b"/bad%zz",
    ],
)
def test_hostile_paths_get_400_with_the_envelope(shared_proxy, target):
    reply = raw_request(
        shared_proxy.port, b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert b'"request_id"' in reply


def test_dotted_paths_reach_only_what_the_plain_path_reaches(proxy_server, capsys):
    run_cli(proxy_server, "set", "billing", "service", "--reason", "x", capsys=capsys)
    poll(
        lambda: (
            fresh_get(proxy_server.url + "/billing/x").json()["upstream"] == "billing"
            and fresh_get(proxy_server.url + "/billing/x").json()["upstream"] == "billing"
        )
    )

    def dotted() -> bytes:
        return raw_request(
            proxy_server.port,
            b"GET /users/%2e%2e//billing/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )

    # Each of the two workers picks the change up on its own poll: ask until
    # the one that answers has (a wrong route would never answer "billing").
    reply = poll(lambda: b'"upstream": "billing"' in (r := dotted()) and r, timeout=5)
    assert b'"path": "/billing/x"' in reply


def test_it_is_not_an_open_proxy(shared_proxy):
    absolute = raw_request(
        shared_proxy.port,
        b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    )
    connect = raw_request(
        shared_proxy.port,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
    )

    assert absolute.startswith(b"HTTP/1.1 400"), absolute[:200]
    assert connect.split(b" ")[1] in (b"400", b"405"), connect[:200]
    assert b"example" not in absolute.split(b"\r\n\r\n", 1)[1].replace(b"other hosts", b"")


def test_a_malformed_request_gets_400(shared_proxy):
    reply = raw_request(shared_proxy.port, b"GET /x HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400")


def test_a_chunked_body_over_the_limit_gets_413(shared_proxy):
    chunk = b"x" * 60_000
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(2)) + b"0\r\n\r\n"
    reply = raw_request(
        shared_proxy.port,
        b"POST /echo/x HTTP/1.1\r\nHost: t\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + body,
    )
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]


def test_metrics_and_access_logs_name_route_mode_and_upstream(shared_proxy):
    fresh_get(shared_proxy.url + "/billing/x", headers={"X-Request-ID": "trace-me"})

    # records are written by each worker's background thread, within FLUSH_SECONDS
    metrics = poll(
        lambda: (
            text
            if 'strangler_requests_total{route="billing",status="200",upstream="monolith"}'
            in (text := fresh_get(shared_proxy.url + "/_strangler/metrics").text)
            else None
        ),
        message="the request is not in the metrics",
    )
    assert "strangler_route_revision" in metrics
    poll(lambda: "rid=trace-me" in shared_proxy.log())
    line = next(line for line in shared_proxy.log().splitlines() if "rid=trace-me" in line)
    assert "route=billing mode=monolith upstream=monolith" in line
    assert "[trace-me]" in line


# --- upstream faults -----------------------------------------------------------


def test_upstream_faults_get_502_504_and_503_from_the_breaker(
    tmp_path, proxy_database, upstreams, capsys
):
    dead_port = free_port()
    server = serve_proxy(
        tmp_path,
        proxy_database,
        upstreams.monolith.url,
        f"http://127.0.0.1:{dead_port}",
        workers=1,
        READ_TIMEOUT=0.5,
        BREAKER_THRESHOLD=3,
        BREAKER_COOLDOWN=1.0,
    )
    revived = None
    try:
        # slow beyond the timeout: 504
        started = time.monotonic()
        slow = fresh_get(server.url + "/slow", params={"seconds": 3})
        assert slow.status_code == 504 and slow.json()["code"] == "gateway_timeout"
        assert time.monotonic() - started < 2.0

        # reset in the middle of the body: the client sees a cut, never a whole body
        with pytest.raises(httpx.RemoteProtocolError):
            fresh_get(server.url + "/reset-mid-body")

        # refused: 502, then the breaker opens: 503 with Retry-After
        run_cli(server, "set", "slow", "service", "--reason", "x", capsys=capsys)
        refused = [fresh_get(server.url + "/slow") for _ in range(3)]
        assert [r.status_code for r in refused] == [502, 502, 502]
        assert refused[0].json()["request_id"] == refused[0].headers["X-Request-ID"]
        open_ = fresh_get(server.url + "/slow")
        assert open_.status_code == 503
        assert int(open_.headers["Retry-After"]) >= 1

        # half-open after the cooldown: one trial, and a healthy service closes it
        revived = start_upstream("revived", tmp_path, port=dead_port)
        recovered = poll(
            lambda: fresh_get(server.url + "/slow", params={"seconds": 0}).status_code == 200,
            timeout=5,
        )
        assert recovered
    finally:
        server.stop()
        if revived:
            revived.stop()


# --- auto-demotion -----------------------------------------------------------------


def test_a_failing_service_is_demoted_to_the_monolith(tmp_path, proxy_database, upstreams, capsys):
    flag = tmp_path / "failing"
    billing = start_upstream("failing-billing", tmp_path, FAIL_FLAG=str(flag))
    server = serve_proxy(
        tmp_path,
        proxy_database,
        upstreams.monolith.url,
        billing.url,
        DEMOTE_MIN_REQUESTS=10,
        DEMOTE_ERROR_RATE=0.5,
    )
    try:
        run_cli(server, "set", "echo", "service", "--reason", "ship it", capsys=capsys)
        poll(lambda: fresh_get(server.url + "/echo/x").json()["upstream"] == "failing-billing")
        flag.touch()

        def demoted() -> bool:
            answers = [fresh_get(server.url + "/echo/x") for _ in range(5)]
            return all(a.status_code == 200 and a.json()["upstream"] == "monolith" for a in answers)

        poll(demoted, timeout=10, interval=0.1, message="the route was not demoted")

        # The breaker may send reads to the monolith (fallback) before any
        # worker has counted DEMOTE_MIN_REQUESTS answers from the service (each
        # worker counts its own): traffic goes on, as it would, until a
        # worker's flush demotes the route and the history says so.
        def latest_change() -> str:
            fresh_get(server.url + "/echo/x")
            _, history = run_cli(server, "history", "echo", capsys=capsys)
            return history.splitlines()[2]

        latest = poll(
            lambda: line if "strangler-proxy" in (line := latest_change()) else "",
            timeout=10,
            message="the demotion is not in the history",
        )
        assert "strangler-proxy" in latest
        assert re.search(r"auto-demotion: 5xx rate (0\.[5-9]\d|1\.00) over \d+ requests", latest)
    finally:
        server.stop()
        billing.stop()


# --- shutdown ------------------------------------------------------------------


def _workers_of(master: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == master:
                children.append(int(stat.parent.name))
    return children


def _the_worker(server) -> int:  # type: ignore[no-untyped-def]
    """The pid of the one worker of a proxy served with ``workers=1``."""
    (worker,) = poll(lambda: (found := _workers_of(server.pid)) and len(found) == 1 and found)
    return worker


def _loop_policy(worker: int) -> int:
    return os.sched_getscheduler(worker)  # the event loop runs on the main thread


def _background_policies(worker: int) -> set[int]:
    """The policies of the worker's other threads (records, shadow comparison, admin)."""
    threads = {int(task.name) for task in Path(f"/proc/{worker}/task").iterdir()} - {worker}
    assert threads, "the worker has no background threads"
    return {os.sched_getscheduler(thread) for thread in threads}


SCHED_BATCH, SCHED_OTHER = getattr(os, "SCHED_BATCH", 3), getattr(os, "SCHED_OTHER", 0)


@pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="Linux's scheduling policies")
def test_a_busy_worker_yields_on_wakeup_and_a_light_one_preempts(
    tmp_path, proxy_database, upstreams
):
    server = serve_proxy(
        tmp_path, proxy_database, upstreams.monolith.url, upstreams.billing.url, workers=1
    )
    try:
        worker = _the_worker(server)
        assert fresh_get(server.url + "/slow", params={"seconds": 0}).status_code == 200
        assert _loop_policy(worker) == SCHED_OTHER  # one request in flight: preempt
        # the other threads take the GIL: they must never wait for someone's slice with it
        assert _background_policies(worker) == {SCHED_OTHER}

        with ThreadPoolExecutor(5) as pool:  # five in flight, the upstream the bottleneck
            slow = [
                pool.submit(fresh_get, server.url + "/slow", params={"seconds": 1})
                for _ in range(5)
            ]
            poll(
                lambda: _loop_policy(worker) == SCHED_BATCH, message="the busy loop kept preempting"
            )
            assert [answer.result().status_code for answer in slow] == [200] * 5

        assert fresh_get(server.url + "/slow", params={"seconds": 0}).status_code == 200
        poll(lambda: _loop_policy(worker) == SCHED_OTHER)  # light again
        assert _background_policies(worker) == {SCHED_OTHER}
    finally:
        server.stop()


@pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="Linux's scheduling policies")
def test_a_worker_told_not_to_yield_keeps_the_default_policy(tmp_path, proxy_database, upstreams):
    server = serve_proxy(
        tmp_path,
        proxy_database,
        upstreams.monolith.url,
        upstreams.billing.url,
        workers=1,
        YIELD_UNDER_LOAD=False,
    )
    try:
        worker = _the_worker(server)
        with ThreadPoolExecutor(5) as pool:
            slow = [
                pool.submit(fresh_get, server.url + "/slow", params={"seconds": 0.5})
                for _ in range(5)
            ]
            assert [answer.result().status_code for answer in slow] == [200] * 5
        assert _loop_policy(worker) == SCHED_OTHER
        assert _background_policies(worker) == {SCHED_OTHER}
    finally:
        server.stop()


def test_a_stopping_worker_writes_its_last_requests(tmp_path, proxy_database, upstreams):
    """Records are written every FLUSH_SECONDS; a worker stopped in between
    still logs and counts the requests it served (gunicorn's worker_exit)."""
    server = serve_proxy(
        tmp_path,
        proxy_database,
        upstreams.monolith.url,
        upstreams.billing.url,
        workers=1,
        FLUSH_SECONDS=3600,
    )
    try:
        for number in range(5):
            headers = {"X-Request-ID": f"last-{number}"}
            assert fresh_get(server.url + "/billing/x", headers=headers).status_code == 200
        assert "rid=last-" not in server.log()  # nothing flushed yet: the hour has not passed
    finally:
        server.stop()
    assert not server.alive()
    logged = {f"last-{n}" for n in range(5) if f"rid=last-{n}" in server.log()}
    assert logged == {f"last-{n}" for n in range(5)}
    engine = create_engine(proxy_database)
    counted = RouteStore(engine).traffic_since(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    engine.dispose()
    assert counted["billing"]["requests"] == 5
