"""Everything ``make run`` starts, started for the demo: each line of the
Procfile, on the configured ports (``servicekit.ports``), with the databases
in the demo's own directory so that a demo never touches ``make run``'s data.

Each process runs in its own process group with its output in
``<directory>/logs/<name>.log``; ``stop()`` ends every group by its PID —
SIGTERM, then SIGKILL for one that does not go — and is safe to call twice.
(honcho would start them as well, but it puts each child in a session of its
own, so a demo killed hard would leave them running: here the PIDs are ours.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from servicekit.ports import local_url, port

__all__ = ["ROOT", "System", "procfile"]

ROOT = Path(__file__).resolve().parents[1]
#: The venv's scripts (gunicorn, flask, alembic, strangler): the Procfile names them bare.
BIN = Path(sys.prefix) / "bin"
#: How long every server gets to answer its health check.
DEFAULT_START_TIMEOUT = 60.0
DEFAULT_STOP_TIMEOUT = 10.0
#: Where each server of the Procfile answers "healthy".
HEALTH = {
    "monolith": "/health",
    "billing": "/health",
    "mover": "/health",
    "proxy": "/_strangler/health",
}


def procfile(path: Path = ROOT / "Procfile") -> dict[str, str]:
    """The Procfile's processes, by name, in order."""
    processes = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, command = line.split(":", 1)
            processes[name.strip()] = command.strip()
    return processes


class System:
    """The Procfile's processes on the databases in ``directory``."""

    def __init__(self, directory: Path, extra_env: Mapping[str, str] | None = None) -> None:
        self.directory = directory
        self.logs = directory / "logs"
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "MONOLITH_DATABASE_URL": self._sqlite("monolith"),
            "BILLING_SERVICE_DATABASE_URL": self._sqlite("billing_service"),
            "PROXY_DATABASE_URL": self._sqlite("proxy"),
            "MOVER_SOURCE_URL": self._sqlite("monolith"),
            "MOVER_TARGET_URL": self._sqlite("billing_service"),
            **(extra_env or {}),
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def _sqlite(self, name: str) -> str:
        return f"sqlite:///{self.directory / (name + '.db')}"

    def busy_ports(self) -> list[str]:
        """The processes whose port something already answers on (``make run``?)."""
        busy = []
        for name in HEALTH:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(local_url(name), timeout=0.5)
                busy.append(f"{name} :{port(name)}")
        return busy

    def run(self, *argv: str) -> str:
        """Run one of the venv's commands to completion; its output, or an error with it."""
        done = subprocess.run(
            [str(BIN / argv[0]), *argv[1:]],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def migrate(self) -> None:
        """Every database at the latest schema, as ``make migrate`` does."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for environment in ("monolith", "billing_service", "proxy"):
            self.run("alembic", "-n", environment, "upgrade", "heads")

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        for name, command in procfile().items():
            with (self.logs / f"{name}.log").open("wb") as log:
                self.processes[name] = subprocess.Popen(
                    ["/bin/sh", "-c", command],
                    cwd=ROOT,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own group: gunicorn's workers go with it
                )

    def wait_until_healthy(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        pending = dict(HEALTH)
        deadline = time.monotonic() + timeout
        while pending:
            self.check_alive()
            for name, path in list(pending.items()):
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(local_url(name) + path, timeout=1.0).status_code == 200:
                        del pending[name]
            if time.monotonic() > deadline:
                raise RuntimeError(f"not healthy after {timeout:g} s: {', '.join(pending)}")
            time.sleep(0.1)

    def check_alive(self) -> None:
        """Raise, naming the process and the end of its log, if one has died."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {process.returncode}; "
                    f"the end of {self.logs / (name + '.log')}:\n{self.tail(name)}"
                )

    def tail(self, name: str, lines: int = 15) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """End every process group we started, by its PID, and wait until each
        group is empty (the shell a line runs in goes before its server does)."""
        for process in self.processes.values():
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            while _group_alive(process.pid) and time.monotonic() < deadline:
                process.poll()  # reap the leader, so that only the rest of its group counts
                time.sleep(0.05)
            if _group_alive(process.pid):
                _signal_group(process.pid, signal.SIGKILL)
            process.wait()
        self.processes.clear()


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


def _group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True
