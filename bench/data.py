"""`make bench-data`: the data mover against the plainest way to do the same
work on the same engine, on SQLite and on PostgreSQL (issue 7's "Speed").

1. backfill throughput of the mover (``MoveRunner`` through ``create_app``,
   its default settings, and again with ``NICE=0``) against a plain bulk copy
   of the same rows: ``INSERT … SELECT`` across ATTACHed SQLite files, binary
   ``COPY … TO STDOUT`` piped into ``COPY … FROM STDIN`` on PostgreSQL;
   with the time of each backfill split per chunk (key lookup, copy,
   checkpoint, commit, the loop's own reads, the throttle's sleep);
2. capture lag p99 while a load generator writes billing through the real
   monolith (gunicorn on 127.0.0.1, over HTTP: register, subscribe, invoice,
   pay), from the mover's ``strangler_mover_apply_lag_seconds``;
3. the mover's full verification against one plain ordered scan, through the
   driver, of every billing table on both sides;
4. the monolith's billing write latency p99 with capture on (the mover's
   triggers installed, the mover applying) against off (no triggers).

Rounds are interleaved (this machine's 2 cores are shared and noisy) and every
figure is the median of its rounds. The seeded monolith database is built once
per size with ``flask seed`` and kept in ``var/`` (as bench/run.py keeps its
own); PostgreSQL's source is loaded from that same seed with ``COPY``, so both
engines move the same rows. Every database and process a run starts is
removed or stopped, by name and by PID.

    .venv/bin/python bench/data.py [--invoices 1000000] [--rounds 3] [--engines sqlite,postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import logging
import multiprocessing
import os
import pstats
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/data.py` puts bench/, not the root, first
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psycopg  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from datamover.app import create_app, runners_of  # noqa: E402
from datamover.moves import BILLING  # noqa: E402
from datamover.runner import MoveRunner  # noqa: E402
from datamover.schema import matching_tables  # noqa: E402
from tests.support import postgres  # noqa: E402
from tests.support.databases import migrate  # noqa: E402
from tests.support.processes import BIN, Server, gunicorn  # noqa: E402

DEFAULT_INVOICES = 1_000_000
DEFAULT_USERS = 1_000
DEFAULT_ROUNDS = 3
#: Load generator: a cycle invoices a subscription and pays the invoice (5
#: billing changes: the invoice, the payment, the invoice paid, the idempotency
#: record reserved and completed); every few cycles a thread registers a user
#: and subscribes (1 more). 44 cycles/s aims above the issue's 200 changes/s.
DEFAULT_CYCLES_PER_SECOND = 44.0
CYCLES_PER_SUBSCRIPTION = 5
DEFAULT_LOAD_SECONDS = 10.0
#: Each round's p99 is about its tenth-worst write: with 3 rounds one bad
#: round moved the median by 20% (PostgreSQL rounds ranged 47 to 278 ms).
DEFAULT_LOAD_ROUNDS = 5
#: Threads of the load generator. Each cycle's first request is timed from
#: the moment it was due, not from when a thread got to send it, so a
#: generator that falls behind shows as latency rather than hiding it; more
#: threads only measured the generator itself: at 44 cycles/s on PostgreSQL,
#: write p99 was 97 ms with 8 threads, 139 with 16 and 250 with 32, while the
#: monolith's own access log said 80, 80 and 100 ms.
LOAD_THREADS = 8
BENCH_KEYS = "bench:bench-data-secret"
PG_PREFIX = "strangler_bench_data"
BARS = {"backfill": 0.5, "lag": 1.0, "verify": 2.0, "latency": 1.2}
TABLES = BILLING.tables
FETCH_ROWS = 10_000
#: Longer than any run: no periodic re-verification (see MoverRun).
VERIFY_NEVER = 86_400.0
#: The trigger toggling's DDL waits no longer than this for a lock.
DDL_LOCK_TIMEOUT = "10s"
#: Wait this long at most for a backfill or a verification (a hung mover fails the bench).
PHASE_TIMEOUT = 900.0

logger = logging.getLogger("bench.data")


# --- the two engines ----------------------------------------------------------


def _columns(url: str, table: str) -> tuple[list[str], list[str]]:
    """A table's columns and primary key, read from the database."""
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        columns = [c["name"] for c in inspector.get_columns(table)]
        key = inspector.get_pk_constraint(table)["constrained_columns"]
    finally:
        engine.dispose()
    return columns, key


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def seeded_sqlite(invoices: int, users: int) -> Path:
    """The monolith's database seeded by `flask seed`, built once per size in var/."""
    path = ROOT / "var" / f"bench-data-monolith-{invoices}.db"
    if path.exists():
        return path
    path.parent.mkdir(exist_ok=True)
    partial = path.with_suffix(".partial")
    for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
        leftover.unlink(missing_ok=True)
    url = f"sqlite:///{partial}"
    print(f"seeding {path.name} with {invoices} invoices (once; kept in var/)...", flush=True)
    started = time.perf_counter()
    migrate("monolith", url)
    subprocess.run(
        [
            str(BIN / "flask"),
            "--app",
            "monolith",
            "seed",
            "--users",
            str(users),
            "--invoices",
            str(invoices),
        ],
        cwd=ROOT,
        env={**os.environ, "MONOLITH_DATABASE_URL": url, "LOG_LEVEL": "WARNING"},
        check=True,
    )
    with contextlib.closing(sqlite3.connect(partial)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.execute("PRAGMA journal_mode=DELETE")  # one self-contained file to copy
    partial.rename(path)
    print(f"  seeded in {time.perf_counter() - started:.0f}s", flush=True)
    return path


class Bed:
    """One engine's databases for the run, and the plain ways to copy and scan them."""

    name: str

    def __init__(self, seed: Path, workdir: Path) -> None:
        self.seed = seed
        self.workdir = workdir
        self.source = ""

    def prepare(self) -> None: ...
    def fresh_target(self) -> str: ...
    def drop(self, url: str) -> None: ...
    def bulk_copy(self, source: str, target: str) -> float: ...
    def plain_scan(self, urls: tuple[str, str]) -> tuple[float, int]: ...
    def close(self) -> None: ...

    def settle(self, target: str) -> None:
        """Before the load: let the engine write out what the copies left behind,
        and vacuum both databases (the move's target was just bulk-loaded, which
        autovacuum would otherwise take up during some rounds and not others),
        so that no round of either mode measures a bulk load's aftermath."""

    def rows(self) -> int:
        engine = sa.create_engine(self.source)
        with engine.connect() as connection:
            total = sum(
                connection.exec_driver_sql(f"SELECT count(*) FROM {_q(t)}").scalar_one()
                for t in TABLES
            )
        engine.dispose()
        return int(total)


class SQLiteBed(Bed):
    name = "sqlite"

    def prepare(self) -> None:
        source = self.workdir / "source.db"
        shutil.copyfile(self.seed, source)
        self.source = f"sqlite:///{source}"
        # A seed kept from an older checkout lacks the newer migrations (the
        # ownership table the app now reads): bring the copy up to date.
        migrate("monolith", self.source)
        self._targets = 0

    def fresh_target(self) -> str:
        self._targets += 1
        url = f"sqlite:///{self.workdir / f'target-{self._targets}.db'}"
        migrate("billing_service", url)
        return url

    def drop(self, url: str) -> None:
        path = sa.engine.make_url(url).database or ""
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(path + suffix).unlink(missing_ok=True)

    def bulk_copy(self, source: str, target: str) -> float:
        source_file = sa.engine.make_url(source).database
        target_file = sa.engine.make_url(target).database
        columns = {t: _columns(target, t)[0] for t in TABLES}
        connection = sqlite3.connect(target_file, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=WAL")  # as the mover's target
            started = time.perf_counter()
            connection.execute("ATTACH DATABASE ? AS src", (source_file,))
            connection.execute("BEGIN")
            for table in TABLES:
                cols = ", ".join(_q(c) for c in columns[table])
                connection.execute(
                    f"INSERT INTO main.{_q(table)} ({cols}) SELECT {cols} FROM src.{_q(table)}"
                )
            connection.execute("COMMIT")
            return time.perf_counter() - started
        finally:
            connection.close()

    def plain_scan(self, urls: tuple[str, str]) -> tuple[float, int]:
        shapes = {t: _columns(urls[0], t) for t in TABLES}
        rows = 0
        started = time.perf_counter()
        for url in urls:
            connection = sqlite3.connect(sa.engine.make_url(url).database)
            try:
                rows += _scan(connection, shapes)
            finally:
                connection.close()
        return time.perf_counter() - started, rows


def _conninfo(url: str) -> str:
    return (
        sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    )


class PostgresBed(Bed):
    name = "postgres"

    def __init__(self, seed: Path, workdir: Path) -> None:
        super().__init__(seed, workdir)
        self._created: list[str] = []

    def prepare(self) -> None:
        self.source = self._create()
        migrate("monolith", self.source)
        started = time.perf_counter()
        self._load_seed(self.source)
        print(f"  postgres source loaded from the seed in {time.perf_counter() - started:.0f}s")

    def _create(self) -> str:
        url = postgres.create_database(PG_PREFIX)
        self._created.append(url)
        return url

    def _load_seed(self, url: str) -> None:
        """The seeded SQLite rows (users and billing), as seed_billing made them, by COPY."""
        seed = sa.create_engine(f"sqlite:///{self.seed}")
        tables = ("users_accounts", *TABLES)
        metadata = sa.MetaData()
        with seed.connect() as reader, psycopg.connect(_conninfo(url)) as writer:
            writer.execute("SET session_replication_role = replica")  # parents come first anyway
            for name in tables:
                # The monolith's own column types turn SQLite's text back into values.
                table = _monolith_table(name)
                if table is None:
                    table = sa.Table(name, metadata, autoload_with=seed)
                cols = ", ".join(_q(c.name) for c in table.columns)
                with writer.cursor().copy(f"COPY {_q(name)} ({cols}) FROM STDIN") as copy:
                    for row in reader.execute(sa.select(table)).yield_per(FETCH_ROWS):
                        copy.write_row(tuple(row))
            writer.commit()
            writer.execute("ANALYZE")
        seed.dispose()

    def fresh_target(self) -> str:
        url = self._create()
        migrate("billing_service", url)
        return url

    def drop(self, url: str) -> None:
        postgres.drop_database(url)
        if url in self._created:
            self._created.remove(url)

    def close(self) -> None:
        for url in list(self._created):
            self.drop(url)

    def settle(self, target: str) -> None:
        started = time.perf_counter()
        for url in (target, self.source):
            with psycopg.connect(_conninfo(url), autocommit=True) as connection:
                connection.execute("VACUUM ANALYZE")
        with psycopg.connect(_conninfo(self.source), autocommit=True) as connection:
            connection.execute("CHECKPOINT")
        print(f"  settled (VACUUM ANALYZE, CHECKPOINT) in {time.perf_counter() - started:.0f}s")

    def bulk_copy(self, source: str, target: str) -> float:
        columns = {t: _columns(target, t)[0] for t in TABLES}
        with psycopg.connect(_conninfo(source)) as out, psycopg.connect(_conninfo(target)) as into:
            # The mover's target session runs as a replica (no FK triggers): so does this one.
            into.execute("SET session_replication_role = replica")
            into.commit()
            started = time.perf_counter()
            for table in TABLES:
                cols = ", ".join(_q(c) for c in columns[table])
                with (
                    out.cursor().copy(f"COPY {_q(table)} ({cols}) TO STDOUT (FORMAT BINARY)") as o,
                    into.cursor().copy(
                        f"COPY {_q(table)} ({cols}) FROM STDIN (FORMAT BINARY)"
                    ) as i,
                ):
                    for block in o:
                        i.write(block)
            into.commit()
            return time.perf_counter() - started

    def plain_scan(self, urls: tuple[str, str]) -> tuple[float, int]:
        shapes = {t: _columns(urls[0], t) for t in TABLES}
        rows = 0
        started = time.perf_counter()
        for url in urls:
            with psycopg.connect(_conninfo(url)) as connection:
                rows += _scan(connection, shapes)
        return time.perf_counter() - started, rows


def _scan(connection: Any, shapes: dict[str, tuple[list[str], list[str]]]) -> int:
    """Read every row of every table in key order through the driver (a
    sqlite3 or psycopg connection); how many there were."""
    rows = 0
    for table, (columns, key) in shapes.items():
        cursor = connection.execute(
            f"SELECT {', '.join(map(_q, columns))} FROM {_q(table)} "
            f"ORDER BY {', '.join(map(_q, key))}"
        )
        while batch := cursor.fetchmany(FETCH_ROWS):
            rows += len(batch)
    return rows


def _monolith_table(name: str) -> sa.Table | None:
    from monolith.billing import orm as billing
    from monolith.users import orm as users

    for metadata in (billing.metadata, users.metadata):
        if name in metadata.tables:
            return metadata.tables[name]
    return None


# --- the mover, timed ----------------------------------------------------------


class ChunkClock:
    """Where a backfill's time goes: the runner's own steps, timed on its thread.

    Wraps (does not change) the calls the loop makes for a chunk: the key
    lookup (``key_position``, in key order only), the copy (``copy_chunk``
    less the lookup), the checkpoint written
    in the chunk's transaction (``store.update``), the rest of that
    transaction (connect, begin, commit: ``_copy`` less the two), the
    captured-changes poll of each turn (``_apply_changes``) and the state read
    (``store.load``), and ``start`` itself (schema check, triggers, row
    count). What is left is the throttle's sleep and the loop.
    """

    STEPS = ("key lookup", "copy", "checkpoint", "commit+connect", "changes poll", "state read")

    def __init__(self, runner: MoveRunner) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.by_table: dict[str, float] = defaultdict(float)
        self.chunks = 0
        self._inside: set[str] = set()  # touched by the mover's thread only
        dialect, store = runner.dialect, runner.store
        self._wrap(dialect, "key_position", "key lookup")
        self._wrap(dialect, "copy_chunk", "chunk", per_table=True)
        self._wrap(store, "load", "state read")
        self._wrap(runner, "_apply_changes", "changes poll")
        self._wrap(runner, "_copy", "_copy")
        real_update = store.update

        def update(*args: Any, **values: Any) -> None:
            if not args or not self._mine():  # only the checkpoint inside a chunk
                return real_update(*args, **values)
            started = time.perf_counter()
            try:
                return real_update(*args, **values)
            finally:
                self.seconds["checkpoint"] += time.perf_counter() - started

        store.update = update  # type: ignore[method-assign]

    @staticmethod
    def _mine() -> bool:
        return threading.current_thread().name.startswith("move-")

    def _wrap(self, owner: Any, attribute: str, step: str, per_table: bool = False) -> None:
        real = getattr(owner, attribute)

        def timed(*args: Any, **kwargs: Any) -> Any:
            # store.load() calls itself with a connection: time the outer call only.
            if not self._mine() or step in self._inside:
                return real(*args, **kwargs)
            self._inside.add(step)
            started = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self._inside.discard(step)
                elapsed = time.perf_counter() - started
                self.seconds[step] += elapsed
                if per_table:
                    self.chunks += 1
                    self.by_table[args[2].name] += elapsed

        setattr(owner, attribute, timed)

    def split(self, total: float) -> dict[str, float]:
        s = dict(self.seconds)
        steps = {step: s.get(step, 0.0) for step in self.STEPS if step != "commit+connect"}
        # copy_chunk finds its chunk's end (key order) or not (SQLite's rowid ranges).
        steps["copy"] = max(0.0, s.get("chunk", 0.0) - steps["key lookup"])
        steps["commit+connect"] = max(
            0.0, s.get("_copy", 0.0) - s.get("chunk", 0.0) - steps["checkpoint"]
        )
        steps["start"] = s.get("start", 0.0)
        steps["throttle+loop"] = max(0.0, total - sum(steps.values()))
        return steps


class MoverRun:
    """One move on a fresh target: started, backfilled, verified."""

    def __init__(self, bed: Bed, nice: float | None, profile: bool = False) -> None:
        self.target = bed.fresh_target()
        config: dict[str, Any] = {
            "SOURCE_URL": bed.source,
            "TARGET_URL": self.target,
            "INTERNAL_KEYS": BENCH_KEYS,
            # Not a speed setting, but a workaround: the runner also requests
            # its periodic verification *during* the backfill, so a backfill
            # longer than the default 300 s verifies a half-copied target at
            # the same time (and on PostgreSQL that verification's long source
            # transaction blocks the triggers' DDL). Once the runner counts
            # VERIFY_EVERY_SECONDS from the end of the backfill, drop this.
            "VERIFY_EVERY_SECONDS": VERIFY_NEVER,
        }
        if nice is not None:
            config["NICE"] = nice
        self.app = create_app(config)
        self.runner = runners_of(self.app)["billing"]
        self.clock = ChunkClock(self.runner)
        self.profiler = cProfile.Profile() if profile else None
        if self.profiler is not None:
            self._profile_chunks(self.profiler)

    def _profile_chunks(self, profiler: cProfile.Profile) -> None:
        runner = self.runner
        real = runner._copy_next_chunk

        def profiled(*args: Any) -> bool:
            profiler.enable()
            try:
                return real(*args)
            finally:
                profiler.disable()

        runner._copy_next_chunk = profiled  # type: ignore[method-assign]

    def backfill(self) -> tuple[float, int]:
        """Seconds from `start` to the phase "streaming", and the rows copied."""
        started = time.time()
        self.runner.start()
        self.clock.seconds["start"] = time.time() - started
        status = _poll(lambda: (s := self.runner.status())["phase"] != "backfill" and s)
        if status["phase"] != "streaming":
            raise RuntimeError(f"the move ended in {status['phase']}: {status['error']}")
        state = self.runner.store.load()
        return (state.backfilled_at or time.time()) - started, state.rows_copied

    def verification(self) -> dict[str, Any]:
        """The verdict of the verification the mover runs once it is streaming."""
        return _poll(  # type: ignore[no-any-return]
            lambda: (
                (s := self.runner.status())["verdict"] is not None
                and not s["verifying"]
                and s["verdict"]
            )
        )

    def end(self, bed: Bed) -> None:
        """Stop the move (its capture leaves the source) and drop its target."""
        with contextlib.suppress(Exception):
            self.runner.stop()
        self.runner.close()
        bed.drop(self.target)


def _poll(condition: Callable[[], Any], timeout: float = PHASE_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.2)
    raise TimeoutError(f"no result within {timeout}s")


# --- load through the monolith ---------------------------------------------------


def _load_worker(url: str, plan_id: str, rate: float, seconds: float, out: Any) -> None:
    """A process apart (so the mover has its own GIL): paced cycles of writes."""
    latencies: dict[str, list[float]] = defaultdict(list)
    failures: list[str] = []
    lock = threading.Lock()
    counter = iter(range(10**9))
    started = time.monotonic()
    deadline = started + seconds

    def one(
        client: httpx.Client,
        kind: str,
        path: str,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
        due: float | None = None,
    ) -> Any:
        sent = time.monotonic()
        response = client.post(path, json=body, headers=headers)
        elapsed = time.monotonic() - (sent if due is None else min(sent, due))
        if response.status_code != 201:
            failures.append(f"{kind} {response.status_code} {response.text[:120]}")
            return None
        with lock:
            latencies[kind].append(elapsed)
        return response.json()

    def subscribe(client: httpx.Client, due: float) -> Any:
        tag = uuid.uuid4().hex
        body = {"email": f"{tag}@bench.test", "name": "Bench"}
        user = one(client, "register", "/users", body, due=due)
        if user is None:
            return None
        body = {"user_id": user["id"], "plan_id": plan_id}
        return one(client, "subscribe", "/billing/subscriptions", body)

    def cycle(client: httpx.Client, subscription: dict[str, Any], due: float | None) -> None:
        body = {"subscription_id": subscription["id"], "draft": False}
        invoice = one(client, "invoice", "/billing/invoices", body, due=due)
        if invoice is None:
            return
        body = {"amount_minor": invoice["amount_minor"], "currency": invoice["currency"]}
        key = {"Idempotency-Key": uuid.uuid4().hex}
        one(client, "pay", f"/billing/invoices/{invoice['id']}/payments", body, key)

    def work() -> None:
        # Each thread invoices and pays its own subscription (no two threads
        # queue on one subscription's lock), and subscribes anew every few cycles.
        subscription = None
        done = 0
        with httpx.Client(base_url=url, timeout=10.0) as client:
            while True:
                with lock:
                    n = next(counter)
                due = started + n / rate
                if due >= deadline:
                    return
                time.sleep(max(0.0, due - time.monotonic()))
                try:
                    first: float | None = due  # the cycle's first request is timed from here
                    if subscription is None or done % CYCLES_PER_SUBSCRIPTION == 0:
                        subscription = subscribe(client, due) or subscription
                        first = None
                    if subscription is not None:
                        cycle(client, subscription, first)
                    done += 1
                except httpx.HTTPError as error:
                    failures.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=work, daemon=True) for _ in range(LOAD_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 30)
    out.send(
        {
            "latencies": dict(latencies),
            "failures": failures[:20],
            "failed": len(failures),
            "seconds": time.monotonic() - started,
        }
    )
    out.close()


def load_round(url: str, plan_id: str, rate: float, seconds: float) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_load_worker, args=(url, plan_id, rate, seconds, send))
    process.start()
    try:
        if not receive.poll(seconds + 60):
            raise TimeoutError("the load generator did not report")
        return receive.recv()  # type: ignore[no-any-return]
    finally:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()  # by its handle, i.e. its PID
            process.join()


class LagRecorder:
    """Every apply lag the runner observes (its histogram still gets each one)."""

    def __init__(self, runner: MoveRunner) -> None:
        self.samples: list[float] = []
        histogram = runner.metrics.apply_lag
        samples = self.samples

        class Child:
            def __init__(self, child: Any) -> None:
                self._child = child

            def observe(self, value: float) -> None:
                samples.append(value)
                self._child.observe(value)

        class Labelled:
            def labels(self, *names: str) -> Child:
                return Child(histogram.labels(*names))

        runner.metrics.apply_lag = Labelled()  # type: ignore[assignment]


_BUCKET = re.compile(
    r'^strangler_mover_apply_lag_seconds_bucket\{le="([^"]+)",move="billing"\} ([\d.e+]+)$', re.M
)


def histogram_buckets(app: Any) -> dict[float, float]:
    """The lag histogram's cumulative buckets, read from the mover's /metrics."""
    text = app.test_client().get("/metrics").get_data(as_text=True)
    return {float(le): float(count) for le, count in _BUCKET.findall(text)}


def bucket_p99(before: dict[float, float], after: dict[float, float]) -> float | None:
    counts = {le: after[le] - before.get(le, 0.0) for le in after}
    total = counts.get(float("inf"), 0.0)
    if not total:
        return None
    return min(le for le, count in counts.items() if count >= 0.99 * total)


def set_capture(runner: MoveRunner, on: bool) -> None:
    """Install the mover's triggers (its own code), or drop them (the change table stays)."""
    specs = matching_tables(runner.source, runner.target, BILLING.tables, sides=runner.sides)
    with runner.source.begin() as source:
        if runner.dialect.name != "sqlite":
            source.exec_driver_sql(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
        if on:
            runner.dialect.install_capture(source, specs)
            return
        for spec in specs:
            if runner.dialect.name == "sqlite":
                for operation in ("insert", "update", "delete"):
                    source.exec_driver_sql(
                        f"DROP TRIGGER IF EXISTS strangler_capture_{spec.name}_{operation}"
                    )
            else:
                source.exec_driver_sql(
                    f"DROP TRIGGER IF EXISTS strangler_capture ON {_q(spec.name)}"
                )


def captured(runner: MoveRunner) -> int:
    """How many changes the triggers have written so far (the change table's sequence)."""
    sql = (
        "SELECT seq FROM sqlite_sequence WHERE name = 'strangler_changes'"
        if runner.dialect.name == "sqlite"
        else "SELECT last_value FROM strangler_changes_seq_seq"
    )
    with runner.source_reader.connect() as source:
        return int(source.exec_driver_sql(sql).scalar() or 0)


def p99(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[98]


# --- the run -----------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def bench_engine(bed: Bed, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    print(f"\n== {bed.name}: preparing", flush=True)
    result: dict[str, Any] = defaultdict(list)
    kept: MoverRun | None = None
    try:
        bed.prepare()
        rows = result["rows"] = bed.rows()
        print(f"  {rows} billing rows to move ({args.invoices} invoices)", flush=True)
        for round_ in range(1, args.rounds + 1):
            # Each round: plain copy, mover (default), plain scan, mover (NICE=0);
            # the order turns each round so no contender always goes first.
            steps = ["copy", "mover", "scan", "mover0"]
            shift = (round_ - 1) % len(steps)
            order = steps[shift:] + steps[:shift]
            # The run's last backfill stays up, streaming, for the load (2. and 4.).
            keep = max(i for i, step in enumerate(order) if step.startswith("mover"))
            for index, step in enumerate(order):
                last = round_ == args.rounds and index == keep
                if step == "copy":
                    target = bed.fresh_target()
                    try:
                        seconds = bed.bulk_copy(bed.source, target)
                        result["copy"].append(seconds)
                        if not result.get("scan_target"):
                            result["scan_target"] = target  # a full copy for the scans
                        else:
                            bed.drop(target)
                    except BaseException:
                        bed.drop(target)
                        raise
                    print(f"  round {round_}: plain copy {seconds:.1f}s", flush=True)
                elif step == "scan":
                    scan_target = result.get("scan_target") or bed.source
                    seconds, scanned = bed.plain_scan((bed.source, scan_target))
                    result["scan"].append(seconds)
                    print(
                        f"  round {round_}: plain scan {seconds:.1f}s ({scanned} rows)", flush=True
                    )
                else:
                    nice = 0.0 if step == "mover0" else None
                    run = MoverRun(
                        bed, nice, profile=args.profile and step == "mover0" and round_ == 1
                    )
                    try:
                        seconds, copied = run.backfill()
                        verdict = run.verification()
                        key = "mover0" if nice == 0.0 else "mover"
                        result[key].append(seconds)
                        result[f"{key}_split"].append(run.clock.split(seconds))
                        result[f"{key}_chunks"].append(run.clock.chunks)
                        result[f"{key}_tables"].append(dict(run.clock.by_table))
                        result["verify"].append(verdict["seconds"])
                        if not verdict["clean"]:
                            result["dirty"].append(verdict)
                        if copied != rows:
                            result["dirty"].append({"copied": copied, "rows": rows})
                        print(
                            f"  round {round_}: mover NICE={'0' if nice == 0.0 else 'default'} "
                            f"backfill {seconds:.1f}s ({copied} rows), verification "
                            f"{verdict['seconds']:.1f}s, "
                            f"{'clean' if verdict['clean'] else 'NOT CLEAN'}\n"
                            f"    where it went: "
                            + ", ".join(
                                f"{step} {part:.1f}s"
                                for step, part in run.clock.split(seconds).items()
                            ),
                            flush=True,
                        )
                        if run.profiler is not None:
                            out = io.StringIO()
                            pstats.Stats(run.profiler, stream=out).sort_stats(
                                "tottime"
                            ).print_stats(14)
                            result["profile"] = out.getvalue()
                    except BaseException:
                        run.end(bed)
                        raise
                    if last:
                        kept = run
                    else:
                        run.end(bed)
        if kept is None:
            kept = MoverRun(bed, None)
            kept.backfill()
            kept.verification()  # its first verification, not beside the load
        if args.load_rounds:
            bed.settle(kept.target)
            try:
                result.update(load_phase(bed, kept, args, log_dir))
            except Exception as error:  # the backfill's figures still count
                result["load_error"] = f"{type(error).__name__}: {error}"
                print(f"  the load phase failed: {result['load_error']}", flush=True)
    finally:
        if kept is not None:
            kept.end(bed)
        if result.get("scan_target"):
            bed.drop(result["scan_target"])
        bed.close()
    return result


def load_phase(bed: Bed, run: MoverRun, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    """Write through the monolith with capture on and off, in turns."""
    monolith: Server = gunicorn(
        f"monolith-{bed.name}",
        "monolith.wsgi:app",
        {
            "MONOLITH_DATABASE_URL": bed.source,
            "LOG_LEVEL": "WARNING",
            "MONOLITH_INTERNAL_KEYS": BENCH_KEYS,
        },
        log_dir,
    )
    out: dict[str, Any] = defaultdict(list)
    recorder = LagRecorder(run.runner)
    try:
        plan_id = _first_plan(monolith.url)
        load_round(monolith.url, plan_id, args.cycles_per_second, 2.0)  # warm both paths
        for round_ in range(1, args.load_rounds + 1):
            modes = ("on", "off") if round_ % 2 else ("off", "on")
            for mode in modes:
                set_capture(run.runner, mode == "on")
                run.runner.wait_for_capture(time.time(), timeout=30)
                recorder.samples.clear()
                before = histogram_buckets(run.app)
                seq = captured(run.runner)
                report = load_round(
                    monolith.url, plan_id, args.cycles_per_second, args.load_seconds
                )
                writes = [
                    v
                    for kind in ("subscribe", "invoice", "pay")
                    for v in report["latencies"].get(kind, [])
                ]
                out[f"p99_{mode}"].append(p99(writes))
                out["failed"].append(report["failed"])
                if report["failures"]:
                    out["failures"].extend(report["failures"][:3])
                line = (
                    f"  load round {round_}, capture {mode}: {len(writes)} billing writes, "
                    f"p99 {1000 * p99(writes):.1f} ms"
                )
                if mode == "on":
                    run.runner.wait_for_capture(time.time(), timeout=30)
                    after = histogram_buckets(run.app)
                    changes = captured(run.runner) - seq
                    if len(recorder.samples) != changes:
                        line += f"; {len(recorder.samples)} lags for {changes} changes"
                    out["lag_p99"].append(p99(recorder.samples))
                    out["lag_bucket"].append(bucket_p99(before, after))
                    out["changes_per_s"].append(changes / report["seconds"])
                    line += (
                        f"; {changes / report['seconds']:.0f} changes/s, lag p99 "
                        f"{1000 * p99(recorder.samples):.0f} ms (histogram: <= "
                        f"{bucket_p99(before, after)} s)"
                    )
                if report["failed"]:
                    line += f"; {report['failed']} failed requests"
                print(line, flush=True)
    finally:
        set_capture(run.runner, True)
        monolith.stop()
    return out


def _fmt_ratio(value: float, bar: float, higher_is_better: bool) -> str:
    met = value >= bar if higher_is_better else value <= bar
    sign = ">=" if higher_is_better else "<="
    return f"{value:.3f}x (bar {sign} {bar}x: {'met' if met else 'MISSED'})"


def report(engine: str, r: dict[str, Any]) -> None:
    rows = r["rows"]
    copy, mover, mover0 = median(r["copy"]), median(r["mover"]), median(r["mover0"])
    print(f"\n{engine}: {rows} rows, medians of {len(r['copy'])} interleaved rounds")
    print(f"  1. plain bulk copy    {copy:8.1f} s  {rows / copy:>10.0f} rows/s")
    print(
        f"     mover (default)    {mover:8.1f} s  {rows / mover:>10.0f} rows/s  "
        f"{_fmt_ratio(copy / mover, BARS['backfill'], True)}"
    )
    print(
        f"     mover (NICE=0)     {mover0:8.1f} s  {rows / mover0:>10.0f} rows/s  "
        f"{_fmt_ratio(copy / mover0, BARS['backfill'], True)}"
    )
    for key, label in (("mover_split", "default"), ("mover0_split", "NICE=0")):
        splits = r.get(key) or []
        if not splits:
            continue
        total = sum(sum(s.values()) for s in splits) / len(splits)
        chunks = median(r[key.replace("split", "chunks")])
        parts = ", ".join(
            f"{step} {100 * median([s[step] for s in splits]) / total:.0f}%"
            f" ({1000 * median([s[step] for s in splits]) / chunks:.1f} ms/chunk)"
            for step in splits[0]
        )
        print(f"     where it goes ({label}, {chunks:.0f} chunks): {parts}")
        tables = r[key.replace("split", "tables")]
        by_table = ", ".join(
            f"{t} {median([x.get(t, 0.0) for x in tables]):.1f}s" for t in tables[0]
        )
        print(f"       copy time per table: {by_table}")
    verify, scan = median(r["verify"]), median(r["scan"])
    print(f"  3. plain ordered scan {scan:8.1f} s (both sides, every billing table)")
    print(
        f"     mover verification {verify:8.1f} s  "
        f"{_fmt_ratio(verify / scan, BARS['verify'], False)}"
    )
    if r.get("lag_p99"):
        lag = median(r["lag_p99"])
        buckets = [b for b in r["lag_bucket"] if b is not None]
        print(
            f"  2. capture lag p99    {1000 * lag:8.0f} ms at {median(r['changes_per_s']):.0f} "
            f"changes/s (histogram p99 bucket <= {median(buckets) if buckets else '?'} s)  "
            f"bar <= 1 s: {'met' if lag <= BARS['lag'] else 'MISSED'}"
        )
        on, off = median(r["p99_on"]), median(r["p99_off"])
        print(
            f"  4. write p99 capture off {1000 * off:6.1f} ms, on {1000 * on:6.1f} ms  "
            f"{_fmt_ratio(on / off, BARS['latency'], False)}"
        )
        if sum(r["failed"]):
            print(f"     {sum(r['failed'])} load requests failed, e.g. {r['failures'][:2]}")
    if r.get("load_error"):
        print(f"  2. and 4. not measured: {r['load_error']}")
    if r.get("dirty"):
        print(f"  WARNING: a verification was not clean or rows were missing: {r['dirty'][:2]}")
    if r.get("profile"):
        print(f"\n  cProfile of the mover thread's chunks (NICE=0, round 1):\n{r['profile']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--invoices", type=int, default=DEFAULT_INVOICES)
    parser.add_argument("--users", type=int, default=DEFAULT_USERS)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--engines", default="sqlite,postgres")
    parser.add_argument(
        "--load-rounds",
        type=int,
        default=DEFAULT_LOAD_ROUNDS,
        help="capture on/off pairs of load (0: skip 2. and 4.)",
    )
    parser.add_argument("--load-seconds", type=float, default=DEFAULT_LOAD_SECONDS)
    parser.add_argument("--cycles-per-second", type=float, default=DEFAULT_CYCLES_PER_SECOND)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile the mover's chunks in the first NICE=0 backfill",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    random.seed(7)

    started = time.monotonic()
    seed = seeded_sqlite(args.invoices, args.users)
    results = {}
    with tempfile.TemporaryDirectory(prefix="strangler-bench-data-") as tmp:
        for engine in args.engines.split(","):
            bed: Bed = (SQLiteBed if engine == "sqlite" else PostgresBed)(seed, Path(tmp))
            results[engine] = bench_engine(bed, args, Path(tmp))
            report(engine, results[engine])
    print(
        f"\n=== the data mover, {os.cpu_count()} shared cores, "
        f"{time.monotonic() - started:.0f}s in all"
    )
    for engine, result in results.items():
        report(engine, result)
    return 0


def _first_plan(monolith_url: str) -> str:
    """The id of a seeded plan; says what the monolith answered if it cannot give one
    (a 1M run once got an error envelope here, seen only as ``KeyError: 0``)."""
    answer = None
    for _ in range(20):
        answer = httpx.get(f"{monolith_url}/billing/plans?page_size=1", timeout=30)
        body = answer.json()
        if answer.status_code == 200 and isinstance(body, list) and body:
            return str(body[0]["id"])
        time.sleep(0.5)
    assert answer is not None
    raise RuntimeError(f"no plan from the monolith: {answer.status_code} {answer.text[:300]}")


if __name__ == "__main__":
    sys.exit(main())
