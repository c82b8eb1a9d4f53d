"""Start real processes on 127.0.0.1 for end-to-end tests, and stop them by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEFAULT_START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Process:
    """A child process with its output in a log file; ``stop()`` ends it by PID."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str],
        log_dir: Path,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: gunicorn's workers die with it
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole group: the crash a test wants to survive."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


class Server(Process):
    """A process serving HTTP on 127.0.0.1:``port``."""

    def __init__(
        self, name: str, argv: list[str], env: Mapping[str, str], log_dir: Path, port: int
    ) -> None:
        super().__init__(name, argv, env, log_dir)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def wait_until_healthy(
        self, path: str = "/health", timeout: float = DEFAULT_START_TIMEOUT
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + path, timeout=1.0).status_code == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not healthy after {timeout}s:\n{self.log()}")


def gunicorn(
    name: str,
    app: str,
    env: Mapping[str, str],
    log_dir: Path,
    *,
    workers: int = 2,
    port: int | None = None,
) -> Server:
    """Serve a WSGI app with gunicorn the way the Procfile does."""
    port = port or free_port()
    argv = [
        str(BIN / "gunicorn"),
        "--config",
        "python:servicekit.gunicorn_conf",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        app,
    ]
    server = Server(name, argv, env, log_dir, port)
    server.wait_until_healthy()
    return server


@contextlib.contextmanager
def running(*processes: Process) -> Iterator[None]:
    try:
        yield
    finally:
        for process in processes:
            process.stop()


def poll(condition, *, timeout: float = 10.0, interval: float = 0.05, message: str = ""):  # type: ignore[no-untyped-def]
    """Wait until ``condition()`` is truthy and return it; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not met within {timeout}s")
        time.sleep(interval)
