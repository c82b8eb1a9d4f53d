"""Fixtures of the proxy's tests: ``upstreams`` (a fake monolith and billing
service as real processes), ``proxy`` (the wired proxy in-process on a fresh
route table, served by its front door on a thread of the test), ``proxy_client``
(httpx through it) and ``serve_proxy`` (the proxy under gunicorn, as
``make run`` serves it)."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvloop

from strangler_proxy.bootstrap import Proxy, bootstrap
from strangler_proxy.server import FrontDoor
from tests.support.databases import migrate
from tests.support.processes import BIN, Server, free_port, gunicorn, poll

HERE = Path(__file__).parent
ROUTES_FILE = str(HERE / "routes.toml")
TOKENS = {"billing-team": "billing-secret", "users-team": "users-secret", "admin": "admin-secret"}
TOKENS_SPEC = ",".join(f"{team}:{token}" for team, token in TOKENS.items())
UPSTREAM_APP = "tests.proxy.upstream:app"


@dataclasses.dataclass
class Upstreams:
    monolith: Server
    billing: Server


def start_upstream(name: str, log_dir: Path, port: int | None = None, **env: str) -> Server:
    return gunicorn(
        name,
        UPSTREAM_APP,
        {"UPSTREAM_NAME": name, "WEB_THREADS": "16", **env},
        log_dir,
        workers=1,
        port=port,
    )


@pytest.fixture(scope="session")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    log_dir = tmp_path_factory.mktemp("upstreams")
    monolith = start_upstream("monolith", log_dir)
    billing = start_upstream("billing", log_dir)
    yield Upstreams(monolith, billing)
    monolith.stop()
    billing.stop()


def settings_for(database_url: str, monolith_url: str, billing_url: str, **extra: Any) -> dict:
    return {
        "DATABASE_URL": database_url,
        "ROUTES_FILE": ROUTES_FILE,
        "MONOLITH_URL": monolith_url,
        "BILLING_URL": billing_url,
        "TOKENS": TOKENS_SPEC,
        "POLL_SECONDS": 0.1,
        "FLUSH_SECONDS": 0.2,
        "READ_TIMEOUT": 2.0,
        "SHADOW_TIMEOUT": 1.0,
        "MAX_BODY_BYTES": 100_000,
        "ACCESS_LOG": False,
        **extra,
    }


@pytest.fixture
def proxy_database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/proxy.db"
    migrate("proxy", url)
    return url


class InProcess:
    """The proxy's dispatcher served on a thread of the test, by the front
    door its gunicorn worker uses (on uvloop, with the same settings), on a
    free port."""

    def __init__(self, proxy: Proxy) -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.door = FrontDoor(proxy.app, proxy.settings, on_refused=proxy.app.refused)
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(listener,), name="in-process-proxy")
        self.thread.start()
        poll(self.started.is_set, message="the in-process proxy did not start")

    def _run(self, listener: socket.socket) -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            self.loop = runner.get_loop()
            runner.run(self.door.serve([listener], grace=5.0, started=self.started.set))
        listener.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.door.stop)
        self.thread.join(timeout=10)


#: Where each in-process proxy listens (``client_for`` looks it up).
_SERVED: dict[int, InProcess] = {}


@pytest.fixture
def make_proxy(proxy_database: str, upstreams: Upstreams) -> Iterator[Callable[..., Proxy]]:
    built: list[Proxy] = []

    def make(**extra: Any) -> Proxy:
        proxy = bootstrap(
            settings_for(proxy_database, upstreams.monolith.url, upstreams.billing.url, **extra)
        )
        built.append(proxy)
        _SERVED[id(proxy)] = InProcess(proxy)
        return proxy

    yield make
    for proxy in built:
        _SERVED.pop(id(proxy)).stop()
        proxy.close()


@pytest.fixture
def proxy(make_proxy: Callable[..., Proxy]) -> Proxy:
    return make_proxy()


def port_of(proxy: Proxy) -> int:
    """The port an in-process proxy listens on (for raw sockets)."""
    return _SERVED[id(proxy)].port


def client_for(proxy: Proxy, token: str | None = None) -> httpx.Client:
    """httpx to the in-process proxy, sending ``Host: proxy.test``."""
    headers = {"Host": "proxy.test"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(base_url=_SERVED[id(proxy)].url, headers=headers, timeout=10)


@pytest.fixture
def proxy_client(proxy: Proxy) -> Iterator[httpx.Client]:
    with client_for(proxy) as client:
        yield client


def set_mode(
    client: httpx.Client,
    route: str,
    mode: str,
    percent: int | None = None,
    *,
    token: str = TOKENS["admin"],
    reason: str = "test",
    **settings: Any,
) -> httpx.Response:
    """Move a route through the admin API, based on its current revision."""
    auth = {"Authorization": f"Bearer {token}"}
    revision = client.get(f"/_strangler/routes/{route}", headers=auth).json()["revision"]
    body: dict[str, Any] = {"mode": mode, "reason": reason, "revision": revision, **settings}
    if percent is not None:
        body["percent"] = percent
    return client.patch(f"/_strangler/routes/{route}", json=body, headers=auth)


def serve_proxy(
    log_dir: Path,
    database_url: str,
    monolith_url: str,
    billing_url: str,
    *,
    workers: int = 2,
    **extra: Any,
) -> Server:
    """The proxy under gunicorn, configured through PROXY_* variables like the Procfile."""
    port = free_port()
    env = {
        f"PROXY_{name}": str(value)
        for name, value in settings_for(database_url, monolith_url, billing_url, **extra).items()
    }
    argv = [
        str(BIN / "gunicorn"),
        "--config",
        "python:strangler_proxy.gunicorn_conf",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "strangler_proxy.main:app",
    ]
    server = Server("proxy", argv, {**env, "PROXY_ACCESS_LOG": "1"}, log_dir, port)
    server.wait_until_healthy("/_strangler/health")
    return server
