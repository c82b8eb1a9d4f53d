"""``make demo``: the whole journey in one command, under load.

It starts everything ``make run`` starts (on the configured ports, with its
own databases under ``var/demo/``), seeds the monolith, sends simulated
shoppers through the proxy, and moves billing a step at a time with the
``strangler`` command — data start and verify, shadow, canary 10, canary 50,
service, rollback to the monolith under load, service again — explaining
each step and pausing for Enter (``--auto`` runs straight through). It ends
with ``strangler data verify billing`` and the counts: requests sent, errors
seen by users, rows verified. Exit status 0 only if no user saw an error and
the verification is clean; every process it started is stopped by PID, on
Ctrl-C too.

    .venv/bin/python -m demo [--auto] [--step-seconds 8] [--directory var/demo]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from demo.loadgen import Crowd, a_plan
from demo.system import BIN, ROOT, System
from servicekit.ports import local_url

__all__ = ["STEPS", "main"]

#: The token `make run`'s proxy gives the billing team (Procfile: PROXY_TOKENS).
DEFAULT_TOKEN = "billing-dev-token"
DEFAULT_DIRECTORY = ROOT / "var" / "demo"
#: Seconds of load after each step has taken effect.
DEFAULT_STEP_SECONDS = 8.0
DEFAULT_SHOPPERS = 6
DEFAULT_INVOICES = 2_000
#: How long a move may be refused by the data gate (a copy lagging under load).
GATE_WAIT_SECONDS = 60
#: How long a handover may take to converge before the demo gives up.
CONVERGE_SECONDS = 120.0
#: The route the demo moves; billing's other routes move with it (one mode, one percent).
ROUTE = "billing-invoices"
WIDTH = 78


@dataclasses.dataclass(frozen=True)
class Step:
    title: str
    explanation: str
    #: `strangler` commands, as a reader would type them (without the program name).
    commands: tuple[tuple[str, ...], ...]
    #: The buckets the service must own before the step has taken effect.
    buckets: int | None = None


def _move(mode: str, *percent: str, reason: str) -> tuple[str, ...]:
    return ("set", ROUTE, mode, *percent, "--reason", reason, "--wait", str(GATE_WAIT_SECONDS))


STEPS = (
    Step(
        "Copy the data, and prove it (chapter 6)",
        "The service starts with an empty database: a route that moved now would answer "
        "404 for every record made before it existed. The data mover turns capture on, "
        "copies billing's tables in key order, then applies every captured change; "
        "verification compares both databases range by range.",
        (("data", "start", "billing", "--wait"), ("data", "verify", "billing")),
    ),
    Step(
        "Shadow",
        "The monolith still answers everyone; the service gets a copy of each read and the "
        "proxy compares the two answers (the dashboard counts matches and mismatches).",
        (_move("shadow", reason="demo: compare answers"),),
        buckets=0,
    ),
    Step(
        "Canary 10%: one user in ten belongs to the service (chapter 7)",
        "Buckets 0-9 are handed over through the fence: their writes wait a moment (503 + "
        "Retry-After, the shoppers ask again), both streams catch up, then the service owns "
        "them. From now on the service's writes flow back to the monolith.",
        (_move("canary", "10", reason="demo: first users"),),
        buckets=10,
    ),
    Step(
        "Canary 50%",
        "Half of the users now write to the service. Users whose bucket stays put are never held.",
        (_move("canary", "50", reason="demo: half of the users"),),
        buckets=50,
    ),
    Step(
        "Cut-over: the service owns everything (chapter 8)",
        "Every bucket and the plans move to the service. The sync turns around: only the "
        "service -> monolith stream carries changes, so the monolith stays a proved copy, "
        "ready for a rollback.",
        (_move("service", reason="demo: cut-over"),),
        buckets=100,
    ),
    Step(
        "Rollback to the monolith, under load (chapter 9)",
        "Something is wrong (say): everyone goes back. The same fence hands every bucket "
        "back to the monolith after the reverse stream has carried every write the service "
        "accepted. Nothing is lost; the shoppers keep reading what they were told.",
        (_move("monolith", reason="demo: roll back under load"),),
        buckets=0,
    ),
    Step(
        "The service again",
        "Fixed (say): the whole way forward in one move, through the same gate and fence.",
        (_move("service", reason="demo: forward again"),),
        buckets=100,
    ),
)


@dataclasses.dataclass
class Outcome:
    requests: int = 0
    errors: int = 0
    rows_verified: int = 0
    clean: bool = False


class Interrupted(Exception):
    """SIGTERM, or the end of the input at a prompt, turned into an exception
    so that every process is still stopped."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--auto", action="store_true", help="run straight through")
    parser.add_argument("--step-seconds", type=float, default=DEFAULT_STEP_SECONDS)
    parser.add_argument("--shoppers", type=int, default=DEFAULT_SHOPPERS)
    parser.add_argument("--invoices", type=int, default=DEFAULT_INVOICES, help="seed size")
    parser.add_argument("--directory", type=Path, default=DEFAULT_DIRECTORY)
    args = parser.parse_args(argv)

    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise Interrupted

    signal.signal(signal.SIGTERM, interrupted)
    demo = Demo(args)
    try:
        outcome = demo.run()
    except (KeyboardInterrupt, Interrupted):
        print("\ninterrupted: stopping everything the demo started")
        return 130
    except RuntimeError as error:
        print(f"\nthe demo stopped: {error}", file=sys.stderr)
        print(f"(every process's log: {demo.system.logs}/)", file=sys.stderr)
        return 2
    finally:
        demo.stop()
    print(
        f"\nrequests sent {outcome.requests}; errors seen by users {outcome.errors}; "
        f"rows verified {outcome.rows_verified} ({'clean' if outcome.clean else 'NOT clean'})"
    )
    return 0 if outcome.clean and outcome.errors == 0 else 1


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.system = System(args.directory)
        self.crowd: Crowd | None = None
        self.proxy_url = local_url("proxy")
        self.token = os.environ.get("STRANGLER_TOKEN") or DEFAULT_TOKEN
        self.started = time.monotonic()
        #: Seconds from the start to the first route move (the README's promise).
        self.first_move: float | None = None

    def run(self) -> Outcome:
        busy = self.system.busy_ports()
        if busy:
            raise RuntimeError(
                f"something already listens on {', '.join(busy)}: stop `make run` first, "
                "or choose other ports (PROXY_PORT, MONOLITH_PORT, BILLING_PORT, MOVER_PORT)"
            )
        say(f"The dashboard: {self.proxy_url}/_strangler/  (open it now and watch it live)")
        self.prepare()
        total = len(STEPS) + 1  # and the final verification
        for number, step in enumerate(STEPS, start=1):
            self.walk(number, total, step)
        return self.finish(total)

    def prepare(self) -> None:
        directory = self.args.directory
        if directory.exists():
            shutil.rmtree(directory)  # every demo starts from the same place
        say(f"Starting the Procfile's processes, databases in {directory} ...")
        self.system.migrate()
        seeded = self.system.run(
            "flask", "--app", "monolith", "seed", "--invoices", str(self.args.invoices)
        )
        say(seeded.strip())
        self.system.start()
        self.system.wait_until_healthy()
        say(
            f"Everything is up in {time.monotonic() - self.started:.1f} s; logs in "
            f"{self.system.logs}/"
        )
        with httpx.Client(base_url=self.proxy_url, timeout=10) as client:
            plan = a_plan(client)
        self.crowd = Crowd(self.proxy_url, plan, self.args.shoppers).start()
        say(
            f"{self.args.shoppers} simulated shoppers now subscribe, get invoiced, pay (some "
            "payments twice with the same key) and read their invoices back, through the proxy."
        )

    def walk(self, number: int, total: int, step: Step) -> None:
        heading(number, total, step.title)
        say(step.explanation)
        self.pause()
        for command in step.commands:
            self.strangler(*command)
        if step.buckets is not None:
            owners = self.converged(step.buckets)
            handover = owners.get("last_handover") or {}
            held = handover.get("hold_seconds")
            say(
                f"   ownership: the service owns {owners.get('service_buckets')}/100 buckets, "
                f"plans on the {owners.get('plans')}"
                + (f"; the last handover held writes {held:.2f} s" if held is not None else "")
            )
        self.hold()

    def finish(self, number: int) -> Outcome:
        heading(number, number, "Final verification")
        say(
            "The shoppers stop; the mover compares both databases row for row. "
            "Every record either side accepted must be on both."
        )
        self.pause()
        crowd = self.crowd
        assert crowd is not None
        crowd.stop()
        problems = crowd.errors + crowd.violations
        verified = self.strangler("data", "verify", "billing", check=False)
        verdict = self.admin("GET", "/data/billing").get("verdict") or {}
        for problem in problems[:10]:
            say(f"   seen by a user: {problem}")
        say(f"   {crowd.summary()}")
        return Outcome(
            requests=crowd.sent,
            errors=len(problems),
            rows_verified=int(verdict.get("rows_checked") or 0),
            clean=verified.returncode == 0 and bool(verdict.get("clean")),
        )

    # -- helpers ----------------------------------------------------------------

    def pause(self) -> None:
        if not self.args.auto:
            try:
                input(f"   [Enter] to go on (dashboard: {self.proxy_url}/_strangler/) ")
            except EOFError:
                # Ctrl-D, or the input closed: nobody is left to press Enter
                raise Interrupted from None

    def hold(self) -> None:
        """Let the shoppers shop for a step's seconds, then say what they did."""
        crowd = self.crowd
        assert crowd is not None
        before = crowd.sent
        deadline = time.monotonic() + self.args.step_seconds
        while time.monotonic() < deadline:
            self.system.check_alive()
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        errors = len(crowd.errors) + len(crowd.violations)
        say(
            f"   load: {crowd.sent - before:,} requests in {self.args.step_seconds:g} s; "
            f"{crowd.held:,} held by the fence so far; errors seen by users: {errors}"
        )

    def strangler(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        shown = " ".join(f'"{a}"' if " " in a else a for a in args)
        say(f"$ strangler {shown}")
        if args[:1] == ("set",) and self.first_move is None:
            self.first_move = time.monotonic() - self.started
        done = subprocess.run(
            [str(BIN / "strangler"), *args],
            env={**os.environ, "STRANGLER_URL": self.proxy_url, "STRANGLER_TOKEN": self.token},
            capture_output=True,
            text=True,
            check=False,
        )
        for line in (done.stdout + done.stderr).splitlines():
            shown_line = line.split("\r")[-1]  # a progress bar's last state
            # "waiting:" lines are the gate's refusals while a copy catches up.
            if shown_line.strip() and not shown_line.startswith("waiting:"):
                say(f"   {shown_line}")
        if check and done.returncode != 0:
            raise RuntimeError(f"`strangler {shown}` failed")
        return done

    def admin(self, method: str, path: str) -> dict[str, Any]:
        with httpx.Client(
            base_url=self.proxy_url + "/_strangler",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10,
        ) as client:
            reply = client.request(method, path)
        return reply.json() if reply.status_code == 200 else {}  # type: ignore[no-any-return]

    def converged(self, buckets: int) -> dict[str, Any]:
        """Wait until the mover reports ``buckets`` on the service and no handover pending."""
        deadline = time.monotonic() + CONVERGE_SECONDS
        while time.monotonic() < deadline:
            self.system.check_alive()
            owners = self.admin("GET", "/data/billing").get("ownership") or {}
            if owners.get("service_buckets") == buckets and owners.get("converged"):
                return owners
            time.sleep(0.2)
        raise RuntimeError(f"the handover to {buckets} buckets did not converge")

    def stop(self) -> None:
        if self.crowd is not None:
            self.crowd.stop(timeout=10)
        self.system.stop()
        if self.first_move is not None:
            say(f"(the first route move came {self.first_move:.1f} s after the start)")


def heading(number: int, total: int, title: str) -> None:
    line = f"== {number}/{total}  {title} "
    print(f"\n{line}{'=' * max(0, WIDTH - len(line))}", flush=True)


def say(text: str) -> None:
    """Print ``text`` wrapped at ``WIDTH``, continuing at its own indent; commands unwrapped."""
    indent = text[: len(text) - len(text.lstrip())]
    wrap = len(text) > WIDTH and not text.startswith("$")
    print(textwrap.fill(text, WIDTH, subsequent_indent=indent) if wrap else text, flush=True)
