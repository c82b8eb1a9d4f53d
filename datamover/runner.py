"""One move, running: backfill and capture interleaved on one thread,
verification on another.

Why one thread for copying and applying: every write to the target is the
source's *current* row, read just before it is written. With a single writer
those reads happen in time order, so a later write never carries an older
image than an earlier one — the property DBLog gets from watermarks and
Ghostferry from binlog positions, here without either. A row that changes
after its chunk was read has a change waiting in ``strangler_changes``, which
the next turn of the loop applies.

The loop, each turn: apply a batch of captured changes of each stream; copy
one chunk of the backfill (while there is one), committing the checkpoint with
it; sleep ``nice`` times the chunk's duration. After the last chunk the move
is ``streaming`` and the first verification starts.

Two streams: capture runs in both databases, and each stream applies only the
changes of records its origin owns (datamover.ownership). Before any
ownership is handed over, the source owns everything and the reverse stream
carries nothing; after the cut-over it is the other way round, and the
source stays a complete copy. A third thread, the fence, hands ownership
over when an operator asks for it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from datamover import state as phases
from datamover.dialects import CHANGES_TABLE, Key, dialect_for
from datamover.metrics import Metrics
from datamover.moves import Move
from datamover.ownership import Fence, Goal, OwnershipStore, SlotFinder
from datamover.schema import SchemaMismatch, TableSpec, matching_tables
from datamover.state import DONE, LeaseHeld, MoveState, StateStore
from datamover.verify import VerificationCancelled, Verifier
from servicekit.errors import Conflict

__all__ = ["MoveRunner", "Refused", "Tuning"]

logger = logging.getLogger(__name__)


class Refused(Conflict):
    """A command that cannot be carried out as asked (the message says why)."""

    code = "move_refused"


@dataclasses.dataclass
class Stream:
    """One direction: changes captured in ``origin``'s database, applied to the other's."""

    origin: str
    destination: str
    #: The origin's database, written only to forget applied changes.
    changes: Engine
    origin_reader: Engine
    destination_reader: Engine
    #: The destination, as a replica (SQLite: with the origin attached as ``src``).
    apply: Engine
    drained_at: float = 0.0
    oldest_pending: float | None = None
    #: Changes taken from the origin's change table since the process started.
    consumed: int = 0

    @property
    def name(self) -> str:
        return f"{self.origin}_to_{self.destination}"

    def lag(self) -> float:
        return 0.0 if self.oldest_pending is None else max(0.0, time.time() - self.oldest_pending)


class Tuning:
    """How hard the mover works; every default has a name in datamover.config."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.chunk_rows = int(settings["CHUNK_ROWS"])
        self.apply_batch = int(settings["APPLY_BATCH"])
        self.poll = float(settings["POLL_SECONDS"])
        self.nice = float(settings["NICE"])
        self.lease = float(settings["LEASE_SECONDS"])
        self.verify_every = float(settings["VERIFY_EVERY_SECONDS"])
        self.verify_range_rows = int(settings["VERIFY_RANGE_ROWS"])


class MoveRunner:
    def __init__(
        self, move: Move, source_url: str, target_url: str, tuning: Tuning, metrics: Metrics
    ) -> None:
        self.move = move
        self.tuning = tuning
        self.metrics = metrics
        self.dialect = dialect_for(source_url, target_url)
        self.source = self.dialect.source_engine(source_url)
        self.target = self.dialect.target_engine(target_url, source_url)
        # The source is written only to install capture and forget applied
        # changes; everything else reads it in transactions that lock nothing.
        self.source_reader = self.dialect.reader_engine(source_url)
        self.readers = (self.source_reader, self.dialect.reader_engine(target_url))
        # The reverse stream's engines: the target written like the source
        # (its change table), the source written like the target (as a replica).
        self.target_writer = self.dialect.source_engine(target_url)
        self.back = self.dialect.target_engine(source_url, target_url)
        source_side, target_side = move.source_side, move.target_side
        self.streams = (
            Stream(
                source_side,
                target_side,
                self.source,
                self.source_reader,
                self.readers[1],
                self.target,
            ),
            Stream(
                target_side,
                source_side,
                self.target_writer,
                self.readers[1],
                self.source_reader,
                self.back,
            ),
        )
        self.ownership = OwnershipStore(
            move,
            self.dialect,
            {source_side: self.source, target_side: self.target_writer},
            {source_side: self.source_reader, target_side: self.readers[1]},
        )
        self.slots = SlotFinder(move, self.dialect)
        self.fence = Fence(
            move, self.ownership, wait_for_streams=self.wait_for_capture, metrics=metrics
        )
        self._ownership_wanted = threading.Event()
        self._fence_thread: threading.Thread | None = None
        self._fence_error: str | None = None
        self.store = StateStore(self.target, move.name)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.sides = (move.source_side, move.target_side)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._specs: list[TableSpec] = []
        self._verifying = threading.Lock()
        self._verify_requested = threading.Event()
        self._cancel_verification = threading.Event()
        self._drained = threading.Condition()
        self._rate = 0.0
        self._waiting_for: str | None = None
        self._lease_renewed = 0.0

    # --- commands ----------------------------------------------------------------

    def start(self, *, replace: bool = False) -> dict[str, Any]:
        """Begin (or resume) the backfill and capture; idempotent while running."""
        with self._lock:
            # First, even when running: a mover standing by for the lease refuses too.
            self.store.acquire(self.holder, self.tuning.lease)
            if self.running:
                return self.status()
            specs = self._check_schema()
            state = self.store.load()
            if state.phase not in phases.RUNNING_PHASES:
                if state.phase == phases.IDLE and not replace:
                    self._refuse_a_foreign_target(specs)
                self._install_capture(specs)
                with self.source_reader.connect() as source:
                    total = sum(self.dialect.count(source, spec) for spec in specs)
                self.store.update(
                    phase=phases.BACKFILL,
                    cursors={},
                    rows_copied=0,
                    rows_total=total,
                    started_at=time.time(),
                    backfilled_at=None,
                    error=None,
                )
                logger.info(
                    "move %s: capture installed, backfill of %s rows begins", self.move.name, total
                )
            self._launch(specs)
            return self.status()

    def resume(self) -> None:
        """After a restart: carry on with a move that was running (no command needed)."""
        state = self.store.load()
        if state.phase in phases.RUNNING_PHASES:
            with self._lock:
                if not self.running:
                    logger.info(
                        "move %s: resuming %s from its checkpoint", self.move.name, state.phase
                    )
                    specs = self._check_schema()
                    # A move begun by an older mover captured in the source only.
                    self._install_capture(specs)
                    self._launch(specs)

    def stop(self) -> dict[str, Any]:
        """Stop capturing: the copy stops following the source (a restart re-copies)."""
        with self._lock:
            # Only the lease holder may take capture away from under a move.
            self.store.acquire(self.holder, self.tuning.lease)
            actual = self.fence.actual()
            if actual["service_buckets"] or actual["plans"] != self.move.source_side:
                raise Refused(
                    f"the {self.move.target_side} owns some of {self.move.name}'s records: "
                    f"without capture its writes would stay there. Hand them back first "
                    f"(service_buckets 0, plans {self.move.source_side})"
                )
            self._halt()
            # A verification reading the tables would hold up the DROP TRIGGER.
            self._cancel_verification.set()
            with self._verifying:
                self._cancel_verification.clear()
            specs = self._specs or self._check_schema()
            for changes in (self.source, self.target_writer):
                with changes.begin() as connection:
                    self.dialect.remove_capture(connection, specs)
            self.store.update(phase=phases.STOPPED)
            self.store.release(self.holder)
            logger.info("move %s stopped; capture removed", self.move.name)
            return self.status()

    def request_verification(self) -> float:
        """Ask for a verification; returns the time from which its verdict counts."""
        if not self.running:
            raise Refused(
                f"move {self.move.name} is not running: start it with "
                f"`strangler data start {self.move.name}`"
            )
        requested = time.time()
        self._verify_requested.set()
        return requested

    def set_ownership(self, service_buckets: int, plans: str) -> dict[str, Any]:
        """Ask for an ownership; the fence converges both databases to it."""
        state = self.store.load()
        if state.phase != phases.STREAMING or not self.running:
            raise Refused(
                f"move {self.move.name} is {state.phase}: ownership moves only once the "
                f"backfill is done and changes stream (`strangler data start {self.move.name}`)"
            )
        self.store.save_goal(service_buckets, plans)
        self._ownership_wanted.set()
        return self.status()

    def close(self) -> None:
        self._halt()
        self._cancel_verification.set()
        for engine in (self.source, self.target, *self.readers, self.target_writer, self.back):
            engine.dispose()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- status ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        state = self.store.load()
        verdict = state.verdict
        lag = None
        lags: dict[str, float | None] = {stream.name: None for stream in self.streams}
        if state.phase in phases.RUNNING_PHASES and self.running:
            # (not running: nobody is applying changes here, the lag is unknown)
            lags = {stream.name: round(stream.lag(), 3) for stream in self.streams}
            lag = lags[self.streams[0].name]
        remaining = max(0, state.rows_total - state.rows_copied)
        status = {
            "move": self.move.name,
            "phase": state.phase,
            "sides": list(self.sides),
            "running": self.running,
            "rows_copied": state.rows_copied,
            "rows_total": state.rows_total,
            "tables": {
                spec.name: "done" if state.cursor(spec.name) == DONE else "copying"
                for spec in self._specs
            },
            "rate_rows_per_second": round(self._rate, 1),
            "eta_seconds": round(remaining / self._rate, 1)
            if state.phase == phases.BACKFILL and self._rate > 0
            else None,
            "lag_seconds": None if lag is None else round(lag, 3),
            "streams": {name: {"lag_seconds": value} for name, value in lags.items()},
            "ownership": self._ownership_status(),
            "verifying": self._verifying.locked() or self._verify_requested.is_set(),
            "verdict": verdict,
            "holder": state.holder,
            "waiting_for_lease": self._waiting_for,
            "error": state.error,
        }
        self._export(status)
        return status

    def _ownership_status(self) -> dict[str, Any]:
        goal = self.store.load_goal()
        try:
            actual = self.fence.actual()
        except Exception as exc:  # a database being migrated: say so, don't fail the status
            return {"error": f"{type(exc).__name__}: {exc}"}
        return {
            **actual,
            "desired": None if goal is None else goal[0],
            "desired_plans": None if goal is None else goal[1],
            "converged": goal is None
            or (
                actual["service_buckets"] == goal[0]
                and actual["plans"] == goal[1]
                and not actual["moving"]
            ),
            "last_handover": self.fence.last_handover,
            "error": self._fence_error,
        }

    def _export(self, status: dict[str, Any]) -> None:
        name = self.move.name
        m = self.metrics
        m.lag.labels(name).set(status["lag_seconds"] or 0.0)
        for stream, figures in status["streams"].items():
            m.stream_lag.labels(name, stream).set(figures["lag_seconds"] or 0.0)
        m.rows_copied.labels(name).set(status["rows_copied"])
        m.rows_total.labels(name).set(status["rows_total"])
        verdict = status["verdict"]
        m.verdict.labels(name).set(-1 if verdict is None else int(verdict["clean"]))
        m.rows_diverged.labels(name).set(
            0 if verdict is None else len(verdict["diverged"]) + len(verdict["unsettled"])
        )
        for phase in (
            phases.IDLE,
            phases.BACKFILL,
            phases.STREAMING,
            phases.STOPPED,
            phases.FAILED,
        ):
            m.phase.labels(name, phase).set(int(phase == status["phase"]))

    # --- the loop ----------------------------------------------------------------

    def _launch(self, specs: list[TableSpec]) -> None:
        self._specs = specs
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"move-{self.move.name}", daemon=True
        )
        self._thread.start()
        self._fence_thread = threading.Thread(
            target=self._converge, name=f"fence-{self.move.name}", daemon=True
        )
        self._fence_thread.start()

    def _halt(self) -> None:
        self._stop.set()
        self._ownership_wanted.set()
        for thread in (self._thread, self._fence_thread):
            if thread is not None:
                thread.join(timeout=30)
        self._thread = self._fence_thread = None

    def _run(self) -> None:
        try:
            self._take_lease()
            state = self.store.load()
            if state.phase == phases.STREAMING and state.verdict is None:
                self._verify_requested.set()
            last_verified = time.time()
            while not self._stop.is_set():
                self._renew_lease()
                applied = sum(self._apply_changes(stream) for stream in self.streams)
                state = self.store.load()
                if state.phase == phases.BACKFILL:
                    started = time.monotonic()
                    if self._copy_next_chunk(state):
                        self.store.update(phase=phases.STREAMING, backfilled_at=time.time())
                        logger.info("move %s: backfill complete, streaming changes", self.move.name)
                        self._verify_requested.set()
                    elif self.tuning.nice:
                        self._stop.wait(self.tuning.nice * (time.monotonic() - started))
                elif applied == 0:
                    self._stop.wait(self.tuning.poll)
                if time.time() - last_verified > self.tuning.verify_every:
                    self._verify_requested.set()
                if self._verify_requested.is_set() and not self._verifying.locked():
                    self._verify_requested.clear()
                    last_verified = time.time()
                    threading.Thread(
                        target=self._verify, name=f"verify-{self.move.name}", daemon=True
                    ).start()
        except Exception as exc:
            if self._stop.is_set():
                return
            logger.exception("move %s failed", self.move.name)
            self.store.update(phase=phases.FAILED, error=f"{type(exc).__name__}: {exc}")

    def _take_lease(self) -> None:
        while not self._stop.is_set():
            try:
                self.store.acquire(self.holder, self.tuning.lease)
                self._lease_renewed = time.monotonic()
                self._waiting_for = None
                return
            except LeaseHeld as held:
                if self._waiting_for != held.holder:
                    logger.warning("move %s: %s; waiting for it to end", self.move.name, held)
                self._waiting_for = held.holder
                self._stop.wait(self.tuning.lease / 2)

    def _renew_lease(self) -> None:
        if time.monotonic() - self._lease_renewed > self.tuning.lease / 3:
            self.store.acquire(self.holder, self.tuning.lease)
            self._lease_renewed = time.monotonic()

    # --- capture -----------------------------------------------------------------

    def _check_schema(self) -> list[TableSpec]:
        try:
            return matching_tables(self.source, self.target, self.move.tables, sides=self.sides)
        except SchemaMismatch as mismatch:
            self.store.update(phase=phases.FAILED, error=str(mismatch))
            raise Refused(f"move {self.move.name} cannot run: {mismatch}") from mismatch

    def _refuse_a_foreign_target(self, specs: list[TableSpec]) -> None:
        with self.target.connect() as target:
            held = {spec.name: self.dialect.count(target, spec) for spec in specs}
        if any(held.values()):
            rows = ", ".join(f"{name} {count}" for name, count in held.items() if count)
            raise Refused(
                f"the {self.sides[1]}'s database already holds rows ({rows}) that this move did "
                f"not copy; the copy would replace them with the {self.sides[0]}'s. "
                f"To do that, start with --replace"
            )

    def _install_capture(self, specs: list[TableSpec]) -> None:
        # Before the first chunk is read: no change can fall between copy and
        # capture. In both databases: the target's changes stream back once it
        # owns records.
        # One table per transaction, the change table first and apart: on
        # PostgreSQL each trigger is replaced under an exclusive lock on its
        # table, and a writer holding one table while its trigger or foreign
        # key reaches another would deadlock with a wider transaction.
        for changes in (self.source, self.target_writer):
            with changes.begin() as connection:
                self.dialect.install_changes_table(connection)
            for spec in specs:
                with changes.begin() as connection:
                    self.dialect.install_capture(connection, [spec])

    def _apply_changes(self, stream: Stream) -> int:
        """Apply a batch of ``stream``'s changes; the number of changes consumed."""
        limit = self.tuning.apply_batch
        read_at = time.time()
        with stream.origin_reader.connect() as origin:
            rows = origin.exec_driver_sql(
                f"SELECT seq, tbl, pk, at FROM {CHANGES_TABLE} ORDER BY seq LIMIT {limit}"
            ).all()
        if not rows:
            stream.oldest_pending = None
            self._mark_drained(stream, read_at)
            return 0
        stream.oldest_pending = min(row.at for row in rows)
        latest: OrderedDict[tuple[str, str], int] = OrderedDict()
        for row in rows:  # a key changed twice is applied once, at its last place
            latest.pop((row.tbl, row.pk), None)
            latest[(row.tbl, row.pk)] = row.seq
        by_table: dict[str, list[Key]] = {}
        for table, key_text in latest:
            by_table.setdefault(table, []).append(tuple(json.loads(key_text)))
        specs = {spec.name: spec for spec in self._specs}
        by_table = self._owned_by_origin(stream, specs, by_table)
        try:
            with stream.apply.begin() as target, stream.origin_reader.connect() as source:
                self.dialect.begin_applying(target)
                for table, keys in by_table.items():
                    self.dialect.apply_keys(target, source, specs[table], keys)
                self.dialect.end_applying(target)
        except IntegrityError:
            # Two changes that only work in their order (a row freeing a unique
            # value another one takes): apply them one by one, as they happened.
            for table, keys in by_table.items():
                for key in keys:
                    with stream.apply.begin() as target, stream.origin_reader.connect() as source:
                        self.dialect.begin_applying(target)
                        self.dialect.apply_keys(target, source, specs[table], [key])
                        self.dialect.end_applying(target)
        applied_at = time.time()
        with stream.changes.begin() as origin:
            seqs = ", ".join(str(row.seq) for row in rows)
            origin.exec_driver_sql(f"DELETE FROM {CHANGES_TABLE} WHERE seq IN ({seqs})")
        histogram = self.metrics.apply_lag.labels(self.move.name)
        for row in rows:
            histogram.observe(max(0.0, applied_at - row.at))
        self.metrics.changes.labels(self.move.name).inc(len(rows))
        stream.consumed += len(rows)
        if len(rows) < limit:
            self._mark_drained(stream, read_at)
        return len(rows)

    def _owned_by_origin(
        self, stream: Stream, specs: dict[str, TableSpec], by_table: dict[str, list[Key]]
    ) -> dict[str, list[Key]]:
        """The changed keys of records ``stream``'s origin owns.

        The others were written there without owning them — by no app, which
        refuses such writes, but possibly by a hand or an event handler — and
        must not overwrite the owner's row. A record gone from the origin is
        placed by the copy the destination still holds."""
        with (
            stream.origin_reader.connect() as origin,
            stream.destination_reader.connect() as destination,
        ):
            owned = self.ownership.owned_slots(stream.origin, origin)
            kept: dict[str, list[Key]] = {}
            for table, keys in by_table.items():
                slots = self.slots.slots(specs[table], keys, (origin, destination))
                mine = [key for key in keys if key in slots and slots[key] in owned]
                if len(mine) < len(keys):
                    logger.debug(
                        "move %s: %s of %s changes to %s not applied from the %s (not its records)",
                        self.move.name,
                        len(keys) - len(mine),
                        len(keys),
                        table,
                        stream.origin,
                    )
                if mine:
                    kept[table] = mine
        return kept

    def _mark_drained(self, stream: Stream, read_at: float) -> None:
        with self._drained:
            stream.drained_at = max(stream.drained_at, read_at)
            self._drained.notify_all()

    def wait_for_capture(self, moment: float, timeout: float = 30.0) -> bool:
        """Block until every change committed before ``moment``, on either side,
        has been applied to the other."""
        deadline = time.monotonic() + timeout
        with self._drained:
            while any(stream.drained_at <= moment for stream in self.streams):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.running:
                    return False
                self._drained.wait(min(remaining, 0.5))
        return True

    # --- ownership ---------------------------------------------------------------

    def _converge(self) -> None:
        """The fence's thread: one handover at a time towards the asked ownership."""
        while not self._stop.is_set():
            self._ownership_wanted.wait(timeout=max(1.0, self.tuning.poll))
            self._ownership_wanted.clear()
            if self._stop.is_set():
                return
            goal = self.store.load_goal()
            if goal is None or self.store.load().phase != phases.STREAMING:
                continue
            try:
                while not self._stop.is_set() and self.fence.converge(Goal(*goal)):
                    self._fence_error = None
            except Exception as exc:
                if self._stop.is_set():
                    return
                logger.exception("move %s: handing ownership over failed", self.move.name)
                self._fence_error = f"{type(exc).__name__}: {exc}"
                self._stop.wait(1.0)
                self._ownership_wanted.set()  # try again: slots may be left moving

    # --- backfill ----------------------------------------------------------------

    def _copy_next_chunk(self, state: MoveState) -> bool:
        """Copy one chunk; True when the whole backfill is done."""
        spec = next((s for s in self._specs if state.cursor(s.name) != DONE), None)
        if spec is None:
            return True
        lo = state.cursor(spec.name)
        assert lo != DONE
        lo_key = lo if isinstance(lo, tuple) else None
        started = time.monotonic()
        with self.source_reader.connect() as source:
            hi = self.dialect.key_after(source, spec, lo_key, self.tuning.chunk_rows)
        try:
            copied = self._copy(spec, state, lo_key, hi)
        except IntegrityError:
            # The target still holds a row whose change is waiting (a subscription
            # cancelled since it was copied, and its successor in this chunk):
            # apply every waiting change, then copy the chunk again.
            while self._apply_changes(self.streams[0]):
                pass
            copied = self._copy(spec, state, lo_key, hi)
        elapsed = time.monotonic() - started
        if elapsed > 0:
            self._rate = (
                0.7 * self._rate + 0.3 * (copied / elapsed) if self._rate else copied / elapsed
            )
        return False

    def _copy(self, spec: TableSpec, state: MoveState, lo: Key | None, hi: Key | None) -> int:
        cursors = dict(state.cursors)
        cursors[spec.name] = DONE if hi is None else list(hi)
        with self.target.begin() as target, self.source_reader.connect() as source:
            self.dialect.begin_applying(target)
            copied = self.dialect.copy_range(target, source, spec, lo, hi)
            rows_copied = state.rows_copied + copied
            # The checkpoint commits with the chunk: a kill never loses or repeats one.
            self.store.update(target, cursors=cursors, rows_copied=rows_copied)
            self.dialect.end_applying(target)
        state.cursors, state.rows_copied = cursors, rows_copied
        return copied

    # --- verification ------------------------------------------------------------

    def _verify(self) -> None:
        with self._verifying:
            try:
                verdict = Verifier(
                    self.dialect,
                    *self.readers,
                    self._specs,
                    sides=self.sides,
                    wait_for_capture=self.wait_for_capture,
                    cancelled=self._cancel_verification.is_set,
                    range_rows=self.tuning.verify_range_rows,
                ).run()
            except VerificationCancelled:
                logger.info("move %s: verification cancelled", self.move.name)
                return
            except Exception as exc:
                logger.exception("move %s: verification failed", self.move.name)
                verdict = {
                    "clean": False,
                    "at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                    "error": f"{type(exc).__name__}: {exc}",
                    "rows_checked": 0,
                    "diverged": [],
                    "unsettled": [],
                }
            self.store.update(verdict=verdict)
            self.metrics.verified_at.labels(self.move.name).set(time.time())
            logger.info(
                "move %s verified: %s, %s rows checked, %s diverged, %s unsettled",
                self.move.name,
                "clean" if verdict["clean"] else "NOT clean",
                verdict["rows_checked"],
                len(verdict["diverged"]),
                len(verdict["unsettled"]),
            )
