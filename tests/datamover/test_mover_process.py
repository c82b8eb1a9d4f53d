"""The mover as `make run` runs it — a gunicorn process — killed with SIGKILL
at random moments of its backfill and of its capture, while the monolith's
tables keep changing. Each restart resumes from the checkpoint on its own;
at the end both databases hold the same rows."""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from servicekit.httpclient import HttpClient
from servicekit.signing import Keyring
from tests.datamover.support import FAST, Pair, Writer, caught_up, same_rows
from tests.support.processes import BIN, Server, free_port, poll

pytestmark = pytest.mark.e2e


class MoverProcess:
    """Starts (and restarts) the mover on ``pair``; commands are signed."""

    def __init__(self, pair: Pair, log_dir: Path, **settings: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            "MOVER_SOURCE_URL": pair.source,
            "MOVER_TARGET_URL": pair.target,
            **{f"MOVER_{name}": str(value) for name, value in {**FAST, **settings}.items()},
        }
        self.log_dir = log_dir
        self.started: list[Server] = []
        self.commands = HttpClient(
            self.url, name="mover", keyring=Keyring.parse(FAST["INTERNAL_KEYS"]), read_retries=0
        )

    def start(self) -> Server:
        argv = [str(BIN / "gunicorn"), "--config", "python:servicekit.gunicorn_conf"]
        argv += ["--bind", f"127.0.0.1:{self.port}", "--workers", "1", "datamover.wsgi:app"]
        server = Server(f"mover-{len(self.started)}", argv, self.env, self.log_dir, self.port)
        self.started.append(server)
        server.wait_until_healthy()
        return server

    def status(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/moves/billing", timeout=5).json()  # type: ignore[no-any-return]

    def command(self, verb: str) -> dict[str, Any]:
        response = self.commands.post(f"/moves/billing/{verb}", json_body={})
        assert response.status_code in (200, 202), response.text
        return response.json()  # type: ignore[no-any-return]

    def stop(self) -> None:
        for server in self.started:
            server.stop()
        self.commands.close()


@pytest.fixture
def mover_process(pair: Pair, tmp_path: Path) -> Iterator[MoverProcess]:
    # Many small, slow chunks (a nice of 3) stretch the backfill so that kills
    # land inside it: SQLite's chunks by rowid made 100-row chunks too quick.
    process = MoverProcess(pair, tmp_path, CHUNK_ROWS=20, NICE=3, LEASE_SECONDS=1)
    yield process
    process.stop()


def test_sigkill_at_random_moments_loses_nothing(pair: Pair, mover_process: MoverProcess) -> None:
    chance = random.Random()
    kills = {"backfill": 0, "streaming": 0}
    with Writer(pair.source, limit=4_000, seconds=60) as writer:
        server = mover_process.start()
        mover_process.command("start")
        for _ in range(3):
            poll(lambda: mover_process.status()["rows_copied"] > 0, timeout=20)
            # A random moment: mid-chunk, mid-apply, mid-checkpoint, mid-verify.
            _wait(chance.uniform(0.05, 0.6))
            kills[mover_process.status()["phase"]] += 1
            server.kill()
            server = mover_process.start()  # resumes on its own, once the lease lapses
        poll(
            lambda: (
                mover_process.status()["phase"] == "streaming" and mover_process.status()["running"]
            ),
            timeout=60,
            message="the backfill never completed after the kills",
        )
        _wait(0.3)
        kills["streaming"] += 1
        server.kill()
        server = mover_process.start()
        poll(lambda: writer.done > 200, timeout=30)
    assert kills["backfill"] >= 1, kills

    poll(lambda: caught_up(mover_process.status()), timeout=30)
    requested = mover_process.command("verify")["requested_at"]
    verdict = poll(
        lambda: (
            (v := mover_process.status()["verdict"])
            and not mover_process.status()["verifying"]
            and _after(v["at"], requested)
            and v
        ),
        timeout=60,
    )
    assert verdict["clean"], verdict
    counts = same_rows(pair)
    assert counts["billing_invoices"] > 1_500


def _wait(seconds: float) -> None:
    """A pause that is the point of the test (a random kill moment), not a wait for a condition."""
    time.sleep(seconds)


def _after(moment: str, epoch: float) -> bool:
    return dt.datetime.fromisoformat(moment).timestamp() >= epoch
