"""`make bench-list`: the invoice list at 100,000 invoices, before and after
keyset pagination, on SQLite and on PostgreSQL, measured in the same run.

For each database it seeds the monolith (``flask seed``, the data of
``make seed SIZE=100000``), then serves that one database twice with gunicorn
and servicekit's settings, as ``make run`` does: *after* is this checkout,
*before* is the code of ``--baseline`` (the last revision that paged by offset
and counted every row), extracted with ``git archive``. wrk then measures, in
interleaved rounds, the median of each figure over the rounds:

- page 1: ``GET /billing/invoices?page=1&page_size=20``, both sides;
- a deep page (1,000 by default): ``page=1000`` before; after, the same page
  reached by the ``next_cursor`` of the page before it, and by number;
- p50 and p99 at one connection, and p99 at 8 connections.

    .venv/bin/python bench/list.py [--invoices 100000] [--backends sqlite,postgres]
        [--duration 4] [--rounds 3] [--deep-page 1000] [--baseline REV]
        [--postgres-url URL-OF-A-SEEDED-DATABASE]

The SQLite database is seeded once and kept in ``var/``; the PostgreSQL one
(``BENCH_POSTGRES_ADMIN_URL``, by default the test server's) is created and
dropped by each run, unless ``--postgres-url`` names one seeded already.
Numbers on a shared 2-core machine are noisy (the load average is printed):
compare the sides of one run, not runs.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
#: The last revision whose lists paged by offset and counted every row.
DEFAULT_BASELINE = "897f7e3"
DEFAULT_INVOICES = 100_000
DEFAULT_USERS = 200  # `make seed`'s default
DEFAULT_DEEP_PAGE = 1_000
DEFAULT_DURATION = 4
DEFAULT_ROUNDS = 3
PAGE_SIZE = 20
CONCURRENT = 8
LIST = "/billing/invoices"
POSTGRES_ADMIN_URL = os.environ.get(
    "BENCH_POSTGRES_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def run(argv: list[str], database_url: str) -> None:
    subprocess.run(
        argv,
        cwd=ROOT,
        env={**os.environ, "MONOLITH_DATABASE_URL": database_url},
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def migrate_and_seed(url: str, invoices: int, *, seed: bool) -> None:
    run([str(BIN / "alembic"), "-n", "monolith", "-x", f"url={url}", "upgrade", "heads"], url)
    if seed:
        print(f"  seeding {invoices:,} invoices...", flush=True)
        seed_command = ["seed", "--users", str(DEFAULT_USERS), "--invoices", str(invoices)]
        run([str(BIN / "flask"), "--app", "monolith", *seed_command], url)


@contextlib.contextmanager
def sqlite_database(invoices: int) -> Iterator[str]:
    """Seeded once, kept in var/, brought to the latest schema on every run."""
    path = ROOT / "var" / f"bench-list-{invoices}.db"
    if path.exists():
        migrate_and_seed(f"sqlite:///{path}", invoices, seed=False)
    else:
        path.parent.mkdir(exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        migrate_and_seed(f"sqlite:///{partial}", invoices, seed=True)
        partial.rename(path)
    yield f"sqlite:///{path}"


@contextlib.contextmanager
def postgres_database(invoices: int, url: str | None = None) -> Iterator[str]:
    """A database of its own, dropped at the end; or ``url``, seeded already."""
    if url is not None:
        migrate_and_seed(url, invoices, seed=False)
        yield url
        return
    name = f"strangler_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        migrate_and_seed(url, invoices, seed=True)
        with contextlib.closing(sa.create_engine(url).connect()) as connection:
            connection.execute(sa.text("ANALYZE"))  # what autovacuum would do after a load
            connection.commit()
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def baseline_tree(revision: str, directory: Path) -> Path:
    """The code of ``revision``, without touching the checkout."""
    tree = directory / "baseline"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "archive", revision], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def served(code: Path, database_url: str, log: Path) -> Iterator[str]:
    """The monolith of the tree ``code`` under gunicorn, on ``database_url``."""
    port = free_port()
    argv = [str(BIN / "gunicorn"), "--config", "python:servicekit.gunicorn_conf"]
    argv += ["--bind", f"127.0.0.1:{port}", "monolith.wsgi:app"]
    env = {
        **os.environ,
        "PYTHONPATH": str(code),  # ahead of the editable install of this checkout
        "MONOLITH_DATABASE_URL": database_url,
        "LOG_LEVEL": "WARNING",
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            argv, cwd=code, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the monolith did not come up; see {log}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
                time.sleep(0.1)
            yield url
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


_PERCENTILE = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url: str, connections: int, duration: int) -> dict[str, float]:
    """p50 and p99 in milliseconds."""
    argv = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{duration}s"]
    out = subprocess.run(
        [*argv, "--timeout", "10s", "--latency", url], capture_output=True, text=True, check=True
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"{url} did not answer 200 every time:\n{out}")
    return {p: float(value) * _UNIT[unit] for p, value, unit in _PERCENTILE.findall(out)}


def pagination(url: str) -> dict[str, object]:
    response = httpx.get(url, timeout=30)
    response.raise_for_status()
    return dict(json.loads(response.headers["X-Pagination"]))


def targets(before: str, after: str, deep: int) -> dict[str, str]:
    """What is measured, by name: the same page before and after."""
    first = f"{LIST}?page=1&page_size={PAGE_SIZE}"
    by_number = f"{LIST}?page={deep}&page_size={PAGE_SIZE}"
    previous = pagination(f"{after}{LIST}?page={deep - 1}&page_size={PAGE_SIZE}")
    by_cursor = f"{LIST}?page_size={PAGE_SIZE}&cursor={previous['next_cursor']}"
    # The two servers must be the two versions, or the comparison means nothing.
    assert "total" in pagination(before + first), "the baseline should count"
    assert "total" not in pagination(after + first), "this checkout should not count"
    same_rows = httpx.get(after + by_cursor).json() == httpx.get(after + by_number).json()
    assert same_rows, "the cursor should reach the same page as its number"
    return {
        "page 1, before": before + first,
        "page 1, after": after + first,
        f"page {deep}, before": before + by_number,
        f"page {deep}, after (cursor)": after + by_cursor,
        f"page {deep}, after (number)": after + by_number,
    }


def measure(urls: dict[str, str], rounds: int, duration: int) -> dict[str, dict[str, float]]:
    """Median over interleaved rounds of p50/p99 at 1 connection and p99 at 8."""
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
    for url in urls.values():
        wrk(url, 2, 1)  # warm pools and caches
    for _ in range(rounds):
        for name, url in urls.items():
            one = wrk(url, 1, duration)
            concurrent = wrk(url, CONCURRENT, duration) if "number" not in name else {"99": 0.0}
            samples[name].append({"p50": one["50"], "p99": one["99"], "p99@8": concurrent["99"]})
    return {
        name: {key: statistics.median(s[key] for s in runs) for key in ("p50", "p99", "p99@8")}
        for name, runs in samples.items()
    }


def report(results: dict[str, dict[str, float]], deep: int) -> None:
    print(f"  {'':<34} {'p50 ms':>8} {'p99 ms':>8} {f'p99@{CONCURRENT} ms':>11}")
    for name, r in results.items():
        at_8 = f"{r['p99@8']:>11.2f}" if r["p99@8"] else f"{'-':>11}"
        print(f"  {name:<34} {r['p50']:>8.2f} {r['p99']:>8.2f} {at_8}")
    for page, after in (
        ("page 1", "page 1, after"),
        (f"page {deep}", f"page {deep}, after (cursor)"),
    ):
        a, b = results[after], results[f"{page}, before"]
        print(
            f"  {page}, after/before: p50 {a['p50'] / b['p50']:.2f}x, "
            f"p99 {a['p99'] / b['p99']:.2f}x, p99@{CONCURRENT} {a['p99@8'] / b['p99@8']:.2f}x"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--invoices", type=int, default=DEFAULT_INVOICES)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--duration", type=int, default=DEFAULT_DURATION, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--deep-page", type=int, default=DEFAULT_DEEP_PAGE)
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="the code before")
    parser.add_argument("--postgres-url", help="a PostgreSQL database seeded already (kept)")
    args = parser.parse_args()
    databases: dict[str, Callable[[int], contextlib.AbstractContextManager[str]]] = {
        "sqlite": sqlite_database,
        "postgres": functools.partial(postgres_database, url=args.postgres_url),
    }

    print(
        f"invoice list, {args.invoices:,} invoices, page_size {PAGE_SIZE}; wrk, median of "
        f"{args.rounds} interleaved rounds of {args.duration}s; {os.cpu_count()} cores "
        f"shared by client, servers and database; before = {args.baseline}"
    )
    with tempfile.TemporaryDirectory(prefix="strangler-bench-list-") as tmp:
        baseline = baseline_tree(args.baseline, Path(tmp))
        for backend in args.backends.split(","):
            print(f"\n{backend}: (load average {os.getloadavg()[0]:.1f})", flush=True)
            with (
                databases[backend](args.invoices) as url,
                served(baseline, url, Path(tmp) / f"{backend}-before.log") as before,
                served(ROOT, url, Path(tmp) / f"{backend}-after.log") as after,
            ):
                results = measure(
                    targets(before, after, args.deep_page), args.rounds, args.duration
                )
            report(results, args.deep_page)
            print(f"  (load average {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
