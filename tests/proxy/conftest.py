"""Fixtures of the proxy's tests: ``upstreams`` (a fake monolith and billing
service as real processes), ``proxy`` (the app in-process on a fresh route
table), ``proxy_client`` (httpx through it) and ``serve_proxy`` (the proxy
under gunicorn, as ``make run`` serves it)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from strangler_proxy.app import Proxy, create_app
from tests.support.databases import migrate
from tests.support.processes import BIN, Server, free_port, gunicorn

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


@pytest.fixture
def make_proxy(proxy_database: str, upstreams: Upstreams) -> Iterator[Callable[..., Proxy]]:
    built: list[Proxy] = []

    def make(**extra: Any) -> Proxy:
        proxy = create_app(
            settings_for(proxy_database, upstreams.monolith.url, upstreams.billing.url, **extra)
        )
        built.append(proxy)
        return proxy

    yield make
    for proxy in built:
        proxy.close()


@pytest.fixture
def proxy(make_proxy: Callable[..., Proxy]) -> Proxy:
    return make_proxy()


def client_for(proxy: Proxy, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(
        transport=httpx.WSGITransport(app=proxy), base_url="http://proxy.test", headers=headers
    )


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
) -> httpx.Response:
    """Move a route through the admin API, based on its current revision."""
    auth = {"Authorization": f"Bearer {token}"}
    revision = client.get(f"/_strangler/routes/{route}", headers=auth).json()["revision"]
    body: dict[str, Any] = {"mode": mode, "reason": reason, "revision": revision}
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
        "strangler_proxy.wsgi:app",
    ]
    server = Server("proxy", argv, {**env, "PROXY_ACCESS_LOG": "1"}, log_dir, port)
    server.wait_until_healthy("/_strangler/health")
    return server
