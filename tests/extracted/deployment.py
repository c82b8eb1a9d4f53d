"""The monolith and the billing service as `make run` serves them, for tests.

Each deployable gets its own SQLite file, built by its own migrations, and
its own gunicorn on 127.0.0.1; relays run as the Procfile runs them. Every
process is stopped by PID when the deployment is (tests/support/processes.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.support.databases import fresh_database, migrate
from tests.support.processes import BIN, Process, Server, free_port, poll

#: Both deployables trust this key in tests (never the development default).
TEST_KEYS = "test:integration-test-secret"
#: The proxy's admin tokens in tests: the billing team's and the admin's.
PROXY_TOKENS = "billing-team:billing-test-token,admin:admin-test-token"
#: Short waits, so that a test about recovery does not wait out production backoff.
FAST_RECOVERY = {
    "BILLING_SERVICE_RELAY_POLL_SECONDS": "0.05",
    "BILLING_SERVICE_EVENTS_BREAKER_RESET": "0.5",
    "BILLING_SERVICE_EVENTS_BACKOFF_MAX_SECONDS": "0.5",
    "MONOLITH_RELAY_POLL_SECONDS": "0.05",
}


class Deployment:
    """The monolith, optionally the billing service and its relay, on loopback."""

    def __init__(
        self,
        directory: Path,
        *,
        billing_adapter: str,
        with_service: bool,
        relays: bool = True,
        databases: tuple[str, str] | None = None,
        service_settings: dict[str, str] | None = None,
    ) -> None:
        """``databases``: the monolith's and the service's URLs (empty ones,
        e.g. PostgreSQL); SQLite files in ``directory`` when None.
        ``service_settings``: more ``BILLING_SERVICE_*`` variables, by name."""
        self.directory = directory
        self.logs = directory / "logs"
        self.logs.mkdir(exist_ok=True)
        self.monolith_port = free_port()
        self.service_port = free_port()
        self.mover_port = free_port()
        self.proxy_port = free_port()
        self.mover_url = f"http://127.0.0.1:{self.mover_port}"
        self.proxy_url = f"http://127.0.0.1:{self.proxy_port}"
        self.monolith_url = f"http://127.0.0.1:{self.monolith_port}"
        self.service_url = f"http://127.0.0.1:{self.service_port}"
        self.service_db_path = directory / "billing_service.db"
        self.monolith_db, self.service_db = databases or (
            f"sqlite:///{directory / 'monolith.db'}",
            f"sqlite:///{self.service_db_path}",
        )
        migrate("monolith", self.monolith_db)
        self.monolith_env = {
            "MONOLITH_DATABASE_URL": self.monolith_db,
            "MONOLITH_INTERNAL_KEYS": TEST_KEYS,
            "MONOLITH_BILLING_ADAPTER": billing_adapter,
            "MONOLITH_BILLING_SERVICE_URL": self.service_url,
            **FAST_RECOVERY,
        }
        self.service_env = {
            "BILLING_SERVICE_DATABASE_URL": self.service_db,
            "BILLING_SERVICE_USERS_URL": self.monolith_url,
            "BILLING_SERVICE_EVENTS_URL": self.monolith_url,
            "BILLING_SERVICE_INTERNAL_KEYS": TEST_KEYS,
            **FAST_RECOVERY,
            **{f"BILLING_SERVICE_{k}": v for k, v in (service_settings or {}).items()},
        }
        #: The current process of each role; ``started`` also keeps the replaced ones.
        self.processes: dict[str, Process] = {}
        self.started: list[Process] = []
        self._starts = 0
        if with_service:
            migrate("billing_service", self.service_db)
        try:
            # Started together, then waited for: start-up is most of a test's time.
            servers = [self.start_monolith(wait=False)]
            if with_service:
                servers.append(self.start_service(wait=False))
            if relays:
                self.start_monolith_relay()
                if with_service:
                    self.start_service_relay()
            for server in servers:
                server.wait_until_healthy()
        except BaseException:
            self.stop()  # never leave a process behind
            raise

    # -- processes -------------------------------------------------------------

    def _name(self, role: str) -> str:
        self._starts += 1
        return f"{role}-{self._starts}"

    def _keep(self, role: str, process: Process) -> None:
        self.processes[role] = process
        self.started.append(process)

    def _gunicorn(self, role: str, app: str, env: dict[str, str], port: int, wait: bool) -> Server:
        # The argv of tests.support.processes.gunicorn, which always waits.
        argv = [str(BIN / "gunicorn"), "--config", "python:servicekit.gunicorn_conf"]
        argv += ["--bind", f"127.0.0.1:{port}", "--workers", "2", app]
        server = Server(self._name(role), argv, env, self.logs, port)
        if wait:
            server.wait_until_healthy()
        return server

    def start_monolith(self, *, wait: bool = True) -> Server:
        server = self._gunicorn(
            "monolith", "monolith.wsgi:app", self.monolith_env, self.monolith_port, wait
        )
        self._keep("monolith", server)
        return server

    def start_service(self, *, wait: bool = True) -> Server:
        server = self._gunicorn(
            "billing-service",
            "extracted.billing_service.wsgi:app",
            self.service_env,
            self.service_port,
            wait,
        )
        self._keep("service", server)
        return server

    def start_mover(self, *, wait: bool = True, **settings: object) -> Server:
        """The data mover on the two databases (one worker, as the Procfile runs it)."""
        env = {
            "MOVER_SOURCE_URL": self.monolith_db,
            "MOVER_TARGET_URL": self.service_db,
            "MOVER_INTERNAL_KEYS": TEST_KEYS,
            **{f"MOVER_{name}": str(value) for name, value in settings.items()},
        }
        argv = [str(BIN / "gunicorn"), "--config", "python:servicekit.gunicorn_conf"]
        argv += ["--bind", f"127.0.0.1:{self.mover_port}", "--workers", "1", "datamover.wsgi:app"]
        server = Server(self._name("mover"), argv, env, self.logs, self.mover_port)
        if wait:
            server.wait_until_healthy()
        self._keep("mover", server)
        return server

    def start_proxy(self, **settings: object) -> Server:
        """The strangler proxy in front of both, with its route table from routes.toml."""
        database = f"sqlite:///{self.directory / 'proxy.db'}"
        migrate("proxy", database)
        env = {
            "PROXY_DATABASE_URL": database,
            "PROXY_MONOLITH_URL": self.monolith_url,
            "PROXY_BILLING_URL": self.service_url,
            "PROXY_MOVER_URL": self.mover_url,
            "PROXY_INTERNAL_KEYS": TEST_KEYS,
            "PROXY_TOKENS": PROXY_TOKENS,
            "PROXY_POLL_SECONDS": "0.1",
            "PROXY_FLUSH_SECONDS": "0.2",
            **{f"PROXY_{name}": str(value) for name, value in settings.items()},
        }
        argv = [str(BIN / "gunicorn"), "--config", "python:strangler_proxy.gunicorn_conf"]
        argv += ["--bind", f"127.0.0.1:{self.proxy_port}", "--workers", "2"]
        argv += ["strangler_proxy.main:app"]
        server = Server(self._name("proxy"), argv, env, self.logs, self.proxy_port)
        server.wait_until_healthy("/_strangler/health")
        self._keep("proxy", server)
        return server

    def proxy_workers(self) -> list[int]:
        """The PIDs of the proxy's gunicorn workers (the master's children)."""
        master = self.processes["proxy"].pid
        children = Path(f"/proc/{master}/task/{master}/children")
        return [int(pid) for pid in children.read_text().split()] if children.exists() else []

    def start_service_relay(self) -> Process:
        relay = Process(
            self._name("billing-relay"),
            [str(BIN / "flask"), "--app", "extracted.billing_service.wsgi", "events", "relay"],
            self.service_env,
            self.logs,
        )
        self._keep("service-relay", relay)
        return relay

    def start_monolith_relay(self) -> Process:
        relay = Process(
            self._name("monolith-relay"),
            [str(BIN / "flask"), "--app", "monolith.wsgi", "events", "relay"],
            self.monolith_env,
            self.logs,
        )
        self._keep("monolith-relay", relay)
        return relay

    def stop(self) -> None:
        # SIGTERM to all first, then wait for each: they shut down in parallel.
        for process in self.started:
            if process.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.started:
            process.stop()

    def logs_text(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.logs.glob("*.log"))
        )


@contextlib.contextmanager
def deployed(
    directory: Path,
    *,
    billing_adapter: str,
    with_service: bool,
    relays: bool = True,
    databases: tuple[str, str] | None = None,
    service_settings: dict[str, str] | None = None,
) -> Iterator[Deployment]:
    deployment = Deployment(
        directory,
        billing_adapter=billing_adapter,
        with_service=with_service,
        relays=relays,
        databases=databases,
        service_settings=service_settings,
    )
    try:
        yield deployment
    finally:
        deployment.stop()


@contextlib.contextmanager
def moving_data(
    backend: str,
    directory: Path,
    *,
    lease_seconds: float,
    service_settings: dict[str, str] | None = None,
) -> Iterator[Deployment]:
    """Everything a data move needs as real processes — monolith, service,
    relays, the data mover and the proxy — on ``backend``'s databases
    (SQLite files, or two PostgreSQL databases made and dropped here)."""
    with (
        fresh_database(backend, directory, "moving_monolith") as monolith,
        fresh_database(backend, directory, "moving_service") as service,
        deployed(
            directory,
            billing_adapter="inprocess",
            with_service=True,
            databases=(monolith, service),
            service_settings=service_settings,
        ) as deployment,
    ):
        deployment.start_mover(LEASE_SECONDS=lease_seconds, POLL_SECONDS=0.02)
        deployment.start_proxy()
        yield deployment


# -- the APIs, in a few verbs ----------------------------------------------------


def created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, (response.status_code, response.text)
    return response.json()


def answered(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.text)
    return response.json()


def kinds_of(monolith: httpx.Client, user_id: str) -> list[str]:
    notifications = answered(
        monolith.get("/notifications", params={"user_id": user_id, "page_size": 100})
    )
    return [n["kind"] for n in notifications]


def wait_for_kinds(monolith: httpx.Client, user_id: str, expected: list[str]) -> None:
    poll(
        lambda: kinds_of(monolith, user_id) == expected,
        timeout=15,
        message=f"notifications of {user_id} never became {expected}",
    )
