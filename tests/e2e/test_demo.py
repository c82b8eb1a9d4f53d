"""`make demo`, run as a reader runs it: real processes on free ports, every
step of the journey under the shoppers' load, short steps. It must exit 0,
print its counts, and leave no process behind — also when interrupted."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.processes import ROOT, free_port

pytestmark = pytest.mark.e2e

PORTS = ("PROXY_PORT", "MONOLITH_PORT", "BILLING_PORT", "MOVER_PORT")
#: Small: the test is about the walk, not the load.
QUICK = ["--step-seconds", "0.5", "--shoppers", "3", "--invoices", "200"]
COUNTS = re.compile(
    r"requests sent (\d+); errors seen by users (\d+); rows verified (\d+) \((clean|NOT clean)\)"
)


def demo(
    directory: Path, *args: str, stdin: int | None = None
) -> tuple[subprocess.Popen[str], list[str]]:
    """`python -m demo` on free ports, and those ports."""
    ports = {name: str(free_port()) for name in PORTS}
    argv = [sys.executable, "-m", "demo", "--directory", str(directory), *QUICK, *args]
    run = subprocess.Popen(
        argv,
        cwd=ROOT,
        env={**os.environ, **ports},
        text=True,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return run, list(ports.values())


def nothing_listens(ports: list[str]) -> bool:
    for port in ports:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5)
        except httpx.HTTPError:
            continue
        return False
    return True


def test_the_demo_walks_the_journey_and_prints_its_counts(tmp_path: Path) -> None:
    run, ports = demo(tmp_path / "demo", "--auto")
    output, _ = run.communicate(timeout=120)
    assert run.returncode == 0, output
    assert nothing_listens(ports), "the demo exited before every process it started had"
    counts = COUNTS.search(output)
    assert counts, output
    requests, errors, rows, verdict = counts.groups()
    assert int(requests) > 0 and int(errors) == 0 and int(rows) > 0 and verdict == "clean"
    for step in ("shadow", "canary 10", "canary 50", "service", "monolith"):
        assert f"$ strangler set billing-invoices {step}" in output
    assert "$ strangler data verify billing" in output


@pytest.mark.parametrize("stop", ["ctrl-c", "end of input"])
def test_an_interrupted_demo_stops_every_process_it_started(tmp_path: Path, stop: str) -> None:
    run, ports = demo(tmp_path / "demo", stdin=subprocess.PIPE)  # waits for Enter at step 1
    assert run.stdout is not None
    lines = []
    for line in run.stdout:  # everything is up once the first step is shown
        lines.append(line)
        if line.startswith("== 1/"):
            break
    assert not nothing_listens(ports), "".join(lines)
    if stop == "ctrl-c":
        run.send_signal(signal.SIGINT)
    # communicate closes the demo's input: for "end of input" that is the stop
    # itself (Ctrl-D at the prompt, or a piped input that ran out)
    output, _ = run.communicate(timeout=60)
    assert run.returncode == 130, "".join(lines) + output
    assert "interrupted: stopping everything the demo started" in output
    assert nothing_listens(ports), "the demo exited before every process it started had"
