"""`make demo-load`: steady, bounded traffic through the proxy, from many
different users, so the dashboard has something to show while you move a route.

Each request carries an ``X-User-ID`` drawn from a pool of users, so a canary
sends its share of them to the service. It stops after ``--seconds`` (or
``max_requests``) on its own: a forgotten generator never runs forever.

    .venv/bin/python bench/demo_load.py [--url http://127.0.0.1:$PROXY_PORT] [--seconds 120]
"""

from __future__ import annotations

import argparse
import itertools
import threading
import time
from collections.abc import Sequence
from types import TracebackType

import httpx

from servicekit.ports import local_url

DEFAULT_PATHS = ("/billing/invoices?page=1&page_size=5", "/billing/plans")
DEFAULT_RATE = 20.0  # requests per second, all threads together
DEFAULT_USERS = 500
DEFAULT_THREADS = 2


class Load:
    """A traffic generator running in threads until ``stop()``, ``seconds`` or
    ``max_requests``; usable as a context manager."""

    def __init__(
        self,
        base_url: str,
        paths: Sequence[str] = DEFAULT_PATHS,
        *,
        rate: float = DEFAULT_RATE,
        seconds: float = 60.0,
        max_requests: int = 100_000,
        users: int = DEFAULT_USERS,
        threads: int = DEFAULT_THREADS,
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
            threading.Thread(target=self._run, name=f"demo-load-{n}", daemon=True)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # The proxy of `make run`, wherever PROXY_PORT put it.
    parser.add_argument("--url", help="default: the proxy at PROXY_PORT")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE)
    parser.add_argument("--path", action="append", dest="paths")
    args = parser.parse_args()
    args.url = args.url or local_url("proxy")
    load = Load(args.url, args.paths or DEFAULT_PATHS, rate=args.rate, seconds=args.seconds)
    print(f"sending ~{args.rate:g} req/s to {args.url} for {args.seconds:g} s (Ctrl-C stops)")
    with load:
        try:
            while load.running():
                time.sleep(1.0)
                statuses = dict(sorted(load.statuses.items()))
                print(f"\r{load.sent} sent, by status {statuses}", end="")
        except KeyboardInterrupt:
            pass
    print()


if __name__ == "__main__":
    main()
