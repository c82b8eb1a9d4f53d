"""The project's one load generator: simulated users ("shoppers") who
subscribe, are invoiced and pay — some payments retried with their
idempotency key — and read their own invoices back, through the proxy.

Each shopper keeps what it was told and checks it on every read: a record
missing from its owner's list, or shown with an older payment state, is a
*violation* (the failure the data moves exist to prevent). Answers that mean
"nothing was done, ask again" (the fence's 503 + ``Retry-After``, a peer
restarting) are asked again, as a real client would; any other unexpected
answer is an *error seen by a user*.

Used by ``tests/datamover/test_journey.py``, ``make demo`` and
``make demo-load``:

    .venv/bin/python -m demo.loadgen [--url http://127.0.0.1:8000] [--seconds 120]

It stops at ``--seconds``, on Ctrl-C or on SIGTERM (``kill PID``: a
background job ignores Ctrl-C's signal), and prints its sums either way.

``Load`` is the plain variant: GETs of any paths from many users at a fixed
rate, for the dashboard's browser test (which runs against a stub upstream).
"""

from __future__ import annotations

import argparse
import itertools
import random
import signal
import threading
import time
import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import httpx

from servicekit.ports import local_url

__all__ = ["Crowd", "Load", "Shopper", "a_plan"]

#: Answers that mean "nothing was done, ask again": the fence, a restarting peer.
TRY_AGAIN = frozenset({502, 503, 504})
#: A keyed payment whose first attempt timed out on the client is still being
#: processed: a real client waits and asks again with the same key.
IN_FLIGHT = b"idempotency_key_in_flight"
#: The fence's 503: the user's records are being handed over (servicekit.ownership).
MOVING = b"ownership_moving"
#: How long a shopper keeps asking again before it calls the answer an error:
#: long enough for a killed service to restart under a full test suite on 2 cores.
GIVE_UP_SECONDS = 45.0
#: A shopper's backoff between two attempts, doubling up to MAX_PAUSE (a
#: ``Retry-After`` is followed instead, a quarter of it: the fence is short).
FIRST_PAUSE, MAX_PAUSE = 0.02, 0.5
#: The newest invoices a shopper checks on each read (its list is newest first).
CHECKED = 50
#: A breath between a shopper's cycles: bounded load on two shared cores.
DEFAULT_PAUSE_SECONDS = 0.05
#: A bound on each shopper's cycles (each invoices and pays once), not a goal.
DEFAULT_MAX_CYCLES = 1000
#: The share of payments a shopper sends twice with the same key.
RETRY_SHARE = 0.4
DEFAULT_TIMEOUT = 10.0


class Unexpected(Exception):
    """An answer a shopper did not expect: an error its user would see."""


def _expect(response: httpx.Response, status: int) -> Any:
    if response.status_code != status:
        raise Unexpected(
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code}: {response.text[:200]}"
        )
    return response.json()


def a_plan(client: httpx.Client) -> dict[str, Any]:
    """A plan of 25 EUR a month for the shoppers (a record of no user)."""
    body = {
        "code": f"plan-{uuid.uuid4().hex[:12]}",
        "name": "Pro",
        "price_minor": 2_500,
        "currency": "EUR",
        "interval": "month",
    }
    return _expect(client.post("/billing/plans", json=body), 201)  # type: ignore[no-any-return]


class Shopper(threading.Thread):
    """One simulated user: every record it was told about must stay readable."""

    def __init__(
        self,
        proxy_url: str,
        plan: dict[str, Any],
        stop: threading.Event,
        *,
        max_cycles: int = DEFAULT_MAX_CYCLES,
        pause: float = DEFAULT_PAUSE_SECONDS,
    ) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=proxy_url, timeout=DEFAULT_TIMEOUT)
        self.plan = plan
        self.stop_event = stop
        self.max_cycles = max_cycles
        self.pause = pause
        self.user_id = ""
        self.invoices: dict[str, int] = {}  # invoice id -> amount paid as told
        self.keys: set[str] = set()
        self.cycles = 0
        self.sent = 0
        self.held = 0
        #: Per call the fence held: (when it ended, seconds from the start of
        #: its first held attempt to its answer, as this client saw it).
        self.holds: list[tuple[float, float]] = []
        self.violations: list[str] = []
        self.errors: list[str] = []
        self.random = random.Random()

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send until the answer is not "try again" (503 from the fence, a 502
        while the service restarts, a key still in flight, a connection cut by
        a killed proxy worker), backing off as a real client does; give up
        after ``GIVE_UP_SECONDS``."""
        response = None
        deadline = time.monotonic() + GIVE_UP_SECONDS
        pause = FIRST_PAUSE
        # The fence's hold: from the first attempt it held to the answer that
        # ended it. A cut connection or a restarting peer after it ends it
        # too: what follows is another wait, not the fence's.
        held_since: float | None = None
        held_end: float | None = None
        while time.monotonic() < deadline:
            self.sent += 1
            attempt = time.monotonic()
            try:
                response = self.client.request(method, path, **kwargs)
            except httpx.TransportError:
                if held_since is not None and held_end is None:
                    held_end = attempt
                time.sleep(pause)
                pause = min(MAX_PAUSE, pause * 2)
                continue
            fenced = response.status_code == 503 and MOVING in response.content
            in_flight = response.status_code == 409 and IN_FLIGHT in response.content
            done = response.status_code not in TRY_AGAIN and not in_flight
            if fenced or "fence;" in response.headers.get("Server-Timing", ""):
                held_since = attempt if held_since is None else held_since
                held_end = None if not done else time.monotonic()
            elif held_since is not None and held_end is None:
                held_end = time.monotonic() if done else attempt
            if done:
                if held_since is not None and held_end is not None:
                    self.holds.append((time.time(), held_end - held_since))
                return response
            self.held += fenced
            told = response.headers.get("Retry-After")
            time.sleep(float(told) / 4 if told else pause)
            pause = min(MAX_PAUSE, pause * 2)
        shown = "no answer" if response is None else str(response.status_code)
        raise Unexpected(f"{method} {path} kept answering {shown}")

    def run(self) -> None:
        try:
            user = _expect(
                self.call("POST", "/users", json={"email": _email(), "name": "Shopper"}), 201
            )
            self.user_id = user["id"]
            acting = {"X-User-ID": self.user_id}
            subscription = _expect(
                self.call(
                    "POST",
                    "/billing/subscriptions",
                    json={"user_id": self.user_id, "plan_id": self.plan["id"]},
                    headers=acting,
                ),
                201,
            )
            while not self.stop_event.is_set() and self.cycles < self.max_cycles:
                self.cycle(subscription, acting)
                self.cycles += 1
                self.stop_event.wait(self.pause)
        except Exception as exc:  # counted as an error its user saw, with the user
            self.errors.append(f"{self.user_id or 'new user'}: {type(exc).__name__}: {exc}")
        finally:
            self.client.close()

    def cycle(self, subscription: dict[str, Any], acting: dict[str, str]) -> None:
        invoice = _expect(
            self.call(
                "POST",
                "/billing/invoices",
                json={"subscription_id": subscription["id"]},
                headers=acting,
            ),
            201,
        )
        self.invoices[invoice["id"]] = 0
        key = f"key-{uuid.uuid4().hex}"
        body = {"amount_minor": invoice["amount_minor"], "currency": invoice["currency"]}
        headers = {**acting, "Idempotency-Key": key}
        path = f"/billing/invoices/{invoice['id']}/payments"
        paid = self.call("POST", path, json=body, headers=headers)
        _expect(paid, 201)
        self.keys.add(key)
        self.invoices[invoice["id"]] = invoice["amount_minor"]
        if self.random.random() < RETRY_SHARE:  # the client retries: it must replay, not pay twice
            again = self.call("POST", path, json=body, headers=headers)
            if again.status_code != 201 or again.json() != paid.json():
                self.violations.append(f"retried key {key} answered {again.status_code}")
        listed = _expect(
            self.call(
                "GET", f"/billing/invoices?user_id={self.user_id}&page_size=100", headers=acting
            ),
            200,
        )
        seen = {row["id"]: row["amount_paid_minor"] for row in listed}
        for invoice_id, amount in list(self.invoices.items())[-CHECKED:]:
            if invoice_id not in seen:
                self.violations.append(f"invoice {invoice_id} missing from its owner's list")
            elif seen[invoice_id] < amount:
                self.violations.append(f"invoice {invoice_id} shows an older payment state")


def _email() -> str:
    return f"shopper-{uuid.uuid4().hex[:12]}@example.test"


class Crowd:
    """``size`` shoppers on one plan, started and stopped together, and their sums."""

    def __init__(
        self,
        proxy_url: str,
        plan: dict[str, Any],
        size: int,
        *,
        max_cycles: int = DEFAULT_MAX_CYCLES,
        pause: float = DEFAULT_PAUSE_SECONDS,
    ) -> None:
        self.stop_event = threading.Event()
        self.shoppers = [
            Shopper(proxy_url, plan, self.stop_event, max_cycles=max_cycles, pause=pause)
            for _ in range(size)
        ]

    def start(self) -> Crowd:
        for shopper in self.shoppers:
            shopper.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        for shopper in self.shoppers:
            shopper.join(timeout=timeout)

    def __enter__(self) -> Crowd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def all_done(self) -> bool:
        return all(not s.is_alive() for s in self.shoppers)

    @property
    def cycles(self) -> int:
        return sum(s.cycles for s in self.shoppers)

    @property
    def sent(self) -> int:
        return sum(s.sent for s in self.shoppers)

    @property
    def held(self) -> int:
        return sum(s.held for s in self.shoppers)

    @property
    def holds(self) -> list[tuple[float, float]]:
        """Every call the fence held: (when it ended, seconds held), by time."""
        return sorted(h for s in self.shoppers for h in s.holds)

    @property
    def errors(self) -> list[str]:
        return [e for s in self.shoppers for e in s.errors]

    @property
    def violations(self) -> list[str]:
        return [v for s in self.shoppers for v in s.violations]

    @property
    def keys(self) -> set[str]:
        return {k for s in self.shoppers for k in s.keys}

    def summary(self) -> str:
        return (
            f"{self.sent:,} requests, {self.cycles:,} purchases by {len(self.shoppers)} users, "
            f"{hold_figures([h for _, h in self.holds])}, "
            f"{len(self.errors) + len(self.violations)} errors seen by users"
        )


def hold_figures(holds: Sequence[float]) -> str:
    """How the fence held calls, as their clients saw it: count, p50, p99, max."""
    if not holds:
        return "no call held by the fence"
    ordered = sorted(holds)

    def at(share: float) -> float:
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    return (
        f"{len(ordered)} calls held by the fence: p50 {at(0.5) * 1000:.0f} ms, "
        f"p99 {at(0.99) * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms"
    )


class Load:
    """GETs of ``paths`` from ``users`` different users at ``rate`` per second,
    in threads, until ``stop()``, ``seconds`` or ``max_requests``; usable as a
    context manager. A forgotten generator never runs forever."""

    def __init__(
        self,
        base_url: str,
        paths: Sequence[str],
        *,
        rate: float = 20.0,
        seconds: float = 60.0,
        max_requests: int = 100_000,
        users: int = 500,
        threads: int = 2,
    ) -> None:
        self.base_url = base_url
        self.paths = tuple(paths)
        self.interval = threads / rate
        self.deadline = time.monotonic() + seconds
        self.max_requests = max_requests
        self.users = users
        self.sent = 0
        self.statuses: dict[int, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._counter = itertools.count()
        self._threads = [
            threading.Thread(target=self._run, name=f"load-{n}", daemon=True)
            for n in range(threads)
        ]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=5.0) as client:
            while not self._stop.is_set() and time.monotonic() < self.deadline:
                n = next(self._counter)
                if n >= self.max_requests:
                    return
                path = self.paths[n % len(self.paths)]
                try:
                    status = client.get(path, headers={"X-User-ID": f"user-{n % self.users}"})
                    code = status.status_code
                except httpx.HTTPError:
                    code = 0
                with self._lock:
                    self.sent += 1
                    self.statuses[code] = self.statuses.get(code, 0) + 1
                self._stop.wait(self.interval)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """``make demo-load``: shoppers through the proxy while you watch the dashboard."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--url", default=local_url("proxy"), help="the proxy")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--shoppers", type=int, default=10)
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between purchases")
    args = parser.parse_args()
    # `kill PID` stops a background run as Ctrl-C stops one in front: with its sums.
    signal.signal(signal.SIGTERM, _interrupt)
    with httpx.Client(base_url=args.url, timeout=DEFAULT_TIMEOUT) as client:
        plan = a_plan(client)
    print(f"{args.shoppers} shoppers through {args.url} for {args.seconds:g} s (Ctrl-C stops)")
    crowd = Crowd(args.url, plan, args.shoppers, pause=args.pause)
    deadline = time.monotonic() + args.seconds
    with crowd:
        try:
            while time.monotonic() < deadline and not crowd.all_done():
                time.sleep(1.0)
                print(f"\r{crowd.summary()}", end="", flush=True)
        except KeyboardInterrupt:
            pass
    print(f"\r{crowd.summary()}")
    for problem in (crowd.errors + crowd.violations)[:10]:
        print(f"  {problem}")


if __name__ == "__main__":
    main()
