"""What a reader has after ``git clone`` and ``make install``, and ``make run`` in it.

The tutorial's commands edit source files (to watch a contract fail) and
write ``var/``, so they run in a copy of the working tree: a git repository
of its own whose ``.venv`` is this one's. ``make run`` runs in that copy, on
free ports that are not the defaults — which is the proof that every peer
URL follows from the four ``*_PORT`` variables.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

from servicekit.ports import DEFAULT_PORTS
from tests.support.processes import ROOT, Process, free_port, poll

__all__ = ["System", "copy_of_repository", "reader_environment", "running_system"]

#: How long `make run` may take to migrate and answer on every port.
START_TIMEOUT = 60.0
#: Where each process of the Procfile says it is healthy.
HEALTH_PATHS = {
    "proxy": "/_strangler/health",
    "monolith": "/health",
    "billing": "/health",
    "mover": "/health",
}
#: The copy's commit needs an author, and no signing key.
GIT_SETTINGS = ("user.name=docs", "user.email=docs@127.0.0.1", "commit.gpgsign=false")
#: Settings of the outer environment that must not leak into the reader's shell.
DEPLOYABLE_PREFIXES = ("MONOLITH_", "BILLING_", "PROXY_", "MOVER_", "STRANGLER_", "VIRTUAL_ENV")


def copy_of_repository(destination: Path) -> Path:
    """The working tree (tracked and new files, as they are now) as a fresh repository."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    venv = Path(sys.prefix)
    (destination / ".venv").symlink_to(venv)
    stamp = venv / ".installed-stamp"
    if stamp.exists():
        # make would otherwise reinstall into the shared .venv, pointing it at the copy.
        # In nanoseconds: a float's seconds can round up past the stamp, and make
        # compares at the filesystem's resolution.
        mtime = stamp.stat().st_mtime_ns
        os.utime(destination / "pyproject.toml", ns=(mtime, mtime))
    git = ["git"] + [option for setting in GIT_SETTINGS for option in ("-c", setting)]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "the clone"]):
        subprocess.run([*git, *command], cwd=destination, check=True, capture_output=True)
    return destination


def reader_environment(ports: dict[str, int]) -> dict[str, str]:
    """A shell after ``make install``: no venv on PATH, the system's ports exported."""
    venv_bin = str(Path(sys.prefix) / "bin")
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(DEPLOYABLE_PREFIXES) and not name.startswith("PYTEST_")
    }
    env["PATH"] = os.pathsep.join(
        entry for entry in env.get("PATH", "").split(os.pathsep) if entry != venv_bin
    )
    env.update({f"{name.upper()}_PORT": str(port) for name, port in ports.items()})
    return env


class System:
    """``make run`` in ``repository``, every port away from its default."""

    def __init__(self, repository: Path, logs: Path) -> None:
        self.repository = repository
        self.ports = {name: _free_port_not_a_default() for name in DEFAULT_PORTS}
        self.env = reader_environment(self.ports)
        self.process = Process("make-run", ["make", "run"], self.env, logs, cwd=repository)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def wait_until_up(self) -> None:
        def healthy() -> bool:
            if not self.process.alive():
                raise RuntimeError(f"make run exited:\n{self.log_tail()}")
            return all(_answers(self.url(name) + path) for name, path in HEALTH_PATHS.items())

        poll(healthy, timeout=START_TIMEOUT, interval=0.2, message="make run never came up")

    def alive(self) -> bool:
        return self.process.alive()

    def log_tail(self, characters: int = 6000) -> str:
        return self.process.log()[-characters:]

    def stop(self) -> None:
        self.process.stop(timeout=20)
        # honcho stops its children itself (each in its own session): wait for them.
        poll(
            lambda: not any(_listening(port) for port in self.ports.values()),
            timeout=20,
            interval=0.2,
            message="a process of make run outlived it",
        )


@contextmanager
def running_system(repository: Path, logs: Path) -> Iterator[System]:
    system = System(repository, logs)
    try:
        system.wait_until_up()
        yield system
    finally:
        system.stop()


def _free_port_not_a_default() -> int:
    port = free_port()
    while port in DEFAULT_PORTS.values():
        port = free_port()
    return port


def _answers(url: str) -> bool:
    with suppress(httpx.HTTPError):
        return httpx.get(url, timeout=1.0).status_code == 200
    return False


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
