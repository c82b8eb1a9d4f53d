"""One move, running: backfill and capture interleaved on one thread,
verification on another.

Why one thread for copying and applying: every write to the target is the
source's *current* row, read just before it is written. With a single writer
those reads happen in time order, so a later write never carries an older
image than an earlier one — the property DBLog gets from watermarks and
Ghostferry from binlog positions, here without either. A row that changes
after its chunk was read has a change waiting in ``strangler_changes``, which
the next turn of the loop applies.

"A single writer" is enforced, not assumed: every transaction that writes the
target first renews the lease *in that transaction* (``StateStore.fence``),
so a mover that stalled past its lease cannot commit a row it read before
another mover took over.

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
import datetime as dt
import json
import logging
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from datamover import state as phases
from datamover.dialects import CHANGES_TABLE, Key, dialect_for
from datamover.metrics import Metrics
from datamover.moves import Move
from datamover.ownership import Fence, Goal, OwnershipStore, SlotFinder
from datamover.schema import SchemaMismatch, TableSpec, matching_tables
from datamover.state import DONE, LeaseHeld, LeaseLost, MoveState, StateStore, holder_name
from datamover.verify import VerificationCancelled, Verifier
from servicekit.errors import Conflict
from servicekit.ownership import USER_BUCKETS

__all__ = ["MoveRunner", "Refused", "Tuning"]

logger = logging.getLogger(__name__)

#: The longest wait between two attempts while a database is unavailable.
MAX_RETRY_PAUSE = 5.0
#: Batches of changes applied to clear the way for a chunk that conflicted.
DRAIN_PASSES = 20
#: How long stop() waits for the loop to finish its turn.
HALT_TIMEOUT = 30.0
#: Database errors that mean "the schema is not what the move was started on":
#: no retry will help, unlike a database that is restarting.
_SCHEMA_ERRORS = ("no such table", "no such column", "does not exist", "has no column")


class Refused(Conflict):
    """A command that cannot be carried out as asked (the message says why)."""

    code = "move_refused"


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
        self.schema_check = float(settings["SCHEMA_CHECK_SECONDS"])
        self.alembic_config = str(settings.get("ALEMBIC_CONFIG") or "")
        self.decommission_environment = str(settings.get("DECOMMISSION_ENVIRONMENT") or "")
        self.archive_timeout = float(settings.get("ARCHIVE_TIMEOUT") or 120.0)


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
    #: Whether ``apply`` is the database that holds the lease (the forward stream).
    fenced: bool
    drained_at: float = 0.0
    oldest_pending: float | None = None
    last_read_at: float | None = None
    pending: int = 0
    #: Changes taken from the origin's change table since the process started.
    consumed: int = 0

    @property
    def name(self) -> str:
        return f"{self.origin}_to_{self.destination}"

    def lag(self, now: float) -> float | None:
        """How late a change committed now would arrive, at least (None: not read yet)."""
        if self.last_read_at is None:
            return None
        lag = now - self.last_read_at  # a loop stuck in a call falls behind too
        if self.oldest_pending is not None:
            lag = max(lag, now - self.oldest_pending)
        return round(max(0.0, lag), 3)


class MoveRunner:
    def __init__(
        self, move: Move, source_url: str, target_url: str, tuning: Tuning, metrics: Metrics
    ) -> None:
        self.move = move
        self.source_url = source_url
        self.tuning = tuning
        self.metrics = metrics
        self.dialect = dialect_for(source_url, target_url)
        self.source = self.dialect.source_engine(source_url)
        self.target = self.dialect.target_engine(target_url, source_url)
        # The source is written only to install capture and forget applied
        # changes; everything else reads it in transactions that lock nothing.
        self.source_reader = self.dialect.reader_engine(source_url)
        self.readers = (self.source_reader, self.dialect.reader_engine(target_url))
        self.store = StateStore(self.target, move.name)
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
                fenced=True,
            ),
            Stream(
                target_side,
                source_side,
                self.target_writer,
                self.readers[1],
                self.source_reader,
                self.back,
                fenced=False,
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
        self.holder = holder_name()
        self.sides = (move.source_side, move.target_side)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._specs: list[TableSpec] = []
        #: Both sides' schema versions when their schemas last matched _specs.
        self._schema_versions: tuple[str, str] | None = None
        # Verifications are numbered: one is "running" from the moment it is
        # asked for until a run that began after the request has ended.
        self._verify_lock = threading.Lock()
        self._counter_lock = threading.Lock()
        self._verify_asked = 0
        self._verify_done = 0
        self._verify_thread: threading.Thread | None = None
        self._cancel_verification = threading.Event()
        self._drained = threading.Condition()
        #: Ends an idle loop's pause: a handover waits for the streams, or a halt.
        self._wake = threading.Event()
        self._rate = 0.0
        self._waiting_for: str | None = None
        self._retry_pause = tuning.poll
        self._last_state = MoveState(move.name)

    # --- commands ----------------------------------------------------------------

    def start(self, *, replace: bool = False) -> dict[str, Any]:
        """Begin (or resume) the backfill and capture; idempotent while running."""
        with self._lock:
            # First, even when running: a mover standing by for the lease refuses too.
            self.store.acquire(self.holder, self.tuning.lease)
            if self.running:
                return self.status()
            self._refuse_if_completed("start")
            specs = self._check_schema()
            state = self.store.load()
            if state.phase not in phases.RUNNING_PHASES:
                if state.started_at is None and not replace:
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
                    verdict=None,  # it was about another copy
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
        if state.phase not in phases.RUNNING_PHASES:
            return
        with self._lock:
            if self.running:
                return
            try:
                specs = self._check_schema()
            except Refused as refused:  # recorded as failed; the process still serves
                logger.error("%s", refused)
                return
            logger.info("move %s: resuming %s from its checkpoint", self.move.name, state.phase)
            # A move begun by an older mover captured in the source only.
            self._install_capture(specs)
            self._launch(specs)

    def stop(self) -> dict[str, Any]:
        """Stop capturing: the copy stops following the source (a restart re-copies)."""
        with self._lock:
            self._refuse_if_completed("stop")
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
            with self._verify_lock:
                self._cancel_verification.clear()
            for changes in (self.source, self.target_writer):
                with changes.begin() as connection:  # by name: the schema may have changed
                    self.dialect.remove_capture(connection, self.move.tables)
            self.store.update(phase=phases.STOPPED)
            self.store.release(self.holder)
            logger.info("move %s stopped; capture removed", self.move.name)
            return self.status()

    def request_verification(self) -> float:
        """Ask for a verification; returns the time from which its verdict counts."""
        self._refuse_if_completed("verify")
        state = self.store.load()
        if not self.running or state.phase not in phases.RUNNING_PHASES:
            raise Refused(
                f"move {self.move.name} is not running: start it with "
                f"`strangler data start {self.move.name}`"
            )
        if state.phase == phases.BACKFILL:
            raise Refused(
                f"the copy of {self.move.name} is still running "
                f"({state.rows_copied:,} of {state.rows_total:,} rows): it is verified as soon "
                "as it completes"
            )
        requested = time.time()
        with self._counter_lock:
            self._verify_asked += 1
        return requested

    def set_ownership(self, service_buckets: int, plans: str) -> dict[str, Any]:
        """Ask for an ownership; the fence converges both databases to it."""
        self._refuse_if_completed("hand ownership over")
        state = self.store.load()
        if state.phase != phases.STREAMING or not self.running:
            raise Refused(
                f"move {self.move.name} is {state.phase}: ownership moves only once the "
                f"backfill is done and changes stream (`strangler data start {self.move.name}`)"
            )
        self.store.save_goal(service_buckets, plans)
        self._ownership_wanted.set()
        return self.status()

    def complete(self) -> dict[str, Any]:
        """End the journey: the target owns everything for good.

        Refused unless the target owns every slot (nothing moving) and a clean
        verification began after the last handover. Then: the decision is
        recorded in the source's database (every slot ``retired``: its app
        answers 410 from that commit on), both streams and capture stop, the
        move is ``completed``, and the source's tables are archived by the
        decommission's migration. Asked again, it only retries the archive.
        """
        with self._lock:
            if self.store.load().phase != phases.COMPLETED:
                self.store.acquire(self.holder, self.tuning.lease)
                reasons = self._reasons_not_to_complete()
                if reasons:
                    raise Refused(
                        f"{self.move.name} cannot be completed: " + "; ".join(reasons),
                        reasons=reasons,
                    )
                # Whatever either side committed before now is across (the
                # source owns nothing, so its stream should carry nothing).
                if not self.wait_for_capture(time.time()):
                    raise Refused(
                        f"the streams of {self.move.name} did not catch up in time; try again"
                    )
                self._halt()  # the fence's thread too: nothing hands a slot back now
                self._cancel_verification.set()
                with self._verify_lock:
                    self._cancel_verification.clear()
                source, target = self.move.source_side, self.move.target_side
                self.ownership.retire(source, target)
                for changes in (self.source, self.target_writer):
                    with changes.begin() as connection:
                        self.dialect.remove_capture(connection, self.move.tables)
                with self.target.begin() as connection:
                    self.store.complete(connection)
                logger.info(
                    "move %s completed: the %s owns its records for good; capture removed",
                    self.move.name,
                    target,
                )
            completion = self.store.load_completion()
            if completion is None or completion.archived_at is None:
                self.store.archived(error=self._archive_source())
            return self.status()

    def _reasons_not_to_complete(self) -> list[str]:
        """Why the move may not be completed now, each with what fixes it."""
        name = self.move.name
        state = self.store.load()
        if state.phase != phases.STREAMING or not self.running:
            return [
                f"the move is {state.phase}, not streaming: nothing proves the "
                f"{self.move.target_side}'s copy (`strangler data start {name}`)"
            ]
        reasons = []
        actual = self.fence.actual()
        target = self.move.target_side
        if (
            actual["service_buckets"] < USER_BUCKETS
            or actual["plans"] != target
            or actual["moving"]
        ):
            reasons.append(
                f"the {target} owns {actual['service_buckets']}/{USER_BUCKETS} buckets and the "
                f"records of no user are the {actual['plans']}'s: set {name}'s routes to "
                f"service and wait for the handover (`strangler set <route> service`, then "
                f"`strangler data status`)"
            )
        verdict = state.verdict
        handed_at = self.ownership.last_changed(target)
        fix = f"run `strangler data verify {name}`"
        if verdict is None:
            reasons.append(f"the copy has not been verified: {fix}")
        elif not verdict.get("clean"):
            reasons.append(f"the last verification was not clean: {fix} to see the rows")
        elif handed_at is not None and dt.datetime.fromisoformat(verdict["started_at"]) < handed_at:
            reasons.append(
                f"the last clean verification began before the last handover; "
                f"prove the copy as it is now: {fix}"
            )
        return reasons

    def _archive_source(self) -> str | None:
        """Apply the decommission's archive revision to the source's database;
        the error, or None. In a process of its own: the migration is the
        source app's, run with its own Alembic environment, not this one's code."""
        environment = self.tuning.decommission_environment
        revision = self.move.archive_revision
        if not (self.tuning.alembic_config and environment and revision):
            return "no archive migration is configured: archive the tables by hand"
        command = [
            sys.executable,
            "-m",
            "alembic",
            "-c",
            self.tuning.alembic_config,
            "-n",
            environment,
            "-x",
            f"url={self.source_url}",
            "upgrade",
            revision,
        ]
        try:
            ran = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=self.tuning.archive_timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"the archive migration did not run: {exc}"
        if ran.returncode != 0:
            lines = [line for line in ran.stderr.strip().splitlines() if line.strip()]
            reason = lines[-1] if lines else f"exit status {ran.returncode}"
            logger.error("move %s: the archive migration failed: %s", self.move.name, reason)
            return f"the archive migration failed: {reason}"
        logger.info("move %s: the %s's tables are archived", self.move.name, self.sides[0])
        return None

    def _refuse_if_completed(self, what: str) -> None:
        if self.store.load().phase == phases.COMPLETED:
            raise Refused(
                f"move {self.move.name} is completed: the {self.move.target_side} owns its "
                f"records for good and the {self.move.source_side}'s copy is archived; "
                f"nothing to {what}"
            )

    def close(self) -> None:
        self._cancel_verification.set()
        self._halt(refuse=False)
        for engine in (self.source, self.target, *self.readers, self.target_writer, self.back):
            engine.dispose()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- status ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        unavailable = None
        try:
            state = self._last_state = self.store.load()
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as error:
            state = self._last_state
            unavailable = f"the target database is unavailable: {error.orig}"
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
            "lag_seconds": None if unavailable else self._lag(state, self.streams[0]),
            "pending_changes": sum(stream.pending for stream in self.streams),
            "streams": {
                stream.name: {"lag_seconds": None if unavailable else self._lag(state, stream)}
                for stream in self.streams
            },
            "ownership": self._ownership_status(state.phase),
            "completed": self._completion(),
            "backfilled_at": _iso(state.backfilled_at),
            "verifying": self._verify_asked > self._verify_done,
            "verdict": state.verdict,
            "holder": state.holder,
            "waiting_for_lease": self._waiting_for,
            "error": unavailable or state.error,
        }
        self._export(status)
        return status

    def _lag(self, state: MoveState, stream: Stream) -> float | None:
        """How late a change committed now would reach the other side, at least.

        None when nobody applies changes here (not running, or standing by
        for another mover's lease): an unknown lag must never read as zero.
        """
        if state.phase not in phases.RUNNING_PHASES or not self.running or self._waiting_for:
            return None
        return stream.lag(time.time())

    def _completion(self) -> dict[str, Any] | None:
        try:
            completion = self.store.load_completion()
        except (sa.exc.OperationalError, sa.exc.InterfaceError):
            return None
        if completion is None:
            return None
        return {
            "at": _iso(completion.completed_at),
            "archived_at": _iso(completion.archived_at),
            "archive_error": completion.archive_error,
        }

    def _ownership_status(self, phase: str) -> dict[str, Any]:
        if phase == phases.COMPLETED:
            # The source's ownership table is archived: the target's for good.
            target = self.move.target_side
            return {
                "service_buckets": USER_BUCKETS,
                "plans": target,
                "moving": [],
                "desired": USER_BUCKETS,
                "desired_plans": target,
                "converged": True,
                "completed": True,
                "last_handover": self.fence.last_handover,
                "error": None,
            }
        try:
            goal = self.store.load_goal()
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
        m.rows_copied.labels(name).set(status["rows_copied"])
        m.rows_total.labels(name).set(status["rows_total"])
        verdict = status["verdict"]
        m.verdict.labels(name).set(-1 if verdict is None else int(verdict["clean"]))
        m.rows_diverged.labels(name).set(0 if verdict is None else _differing(verdict))
        for phase in phases.ALL_PHASES:
            m.phase.labels(name, phase).set(int(phase == status["phase"]))
        for stream, figures in status["streams"].items():
            m.stream_lag.labels(name, stream).set(figures["lag_seconds"] or 0.0)

    # --- the loop ----------------------------------------------------------------

    def _launch(self, specs: list[TableSpec]) -> None:
        self._specs = specs
        self._schema_versions = None  # the first check compares in full
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"move-{self.move.name}", daemon=True
        )
        self._thread.start()
        self._fence_thread = threading.Thread(
            target=self._converge, name=f"fence-{self.move.name}", daemon=True
        )
        # Look at once: a mover that died mid-handover left slots moving, and
        # their users are held until this one finishes the handover.
        self._ownership_wanted.set()
        self._fence_thread.start()

    def _halt(self, *, refuse: bool = True) -> None:
        self._stop.set()
        self._wake.set()
        self._ownership_wanted.set()
        for thread in (self._thread, self._fence_thread):
            if thread is not None:
                thread.join(timeout=HALT_TIMEOUT)
                if thread.is_alive():
                    # Never start a second loop beside one that is still in a call.
                    if refuse:
                        raise Refused(f"move {self.move.name} is busy finishing a step; try again")
                    return
        self._thread = self._fence_thread = None

    def _run(self) -> None:
        transient: tuple[type[Exception], ...] = (
            sa.exc.OperationalError,
            sa.exc.InterfaceError,
            *self.dialect.transient_errors,
        )
        while not self._stop.is_set():
            try:
                self._take_lease()
                if self._turns():
                    return
            except LeaseHeld as held:
                # Our lease lapsed (a long stall) and another mover took over: stand by.
                logger.warning("move %s: %s", self.move.name, held)
            except LeaseLost:
                logger.warning("move %s: the lease lapsed in a step; standing by", self.move.name)
            except transient as error:
                if self._stop.is_set():
                    return
                reason = _first_line(error)
                if any(marker in reason.lower() for marker in _SCHEMA_ERRORS):
                    self._fail(f"the schema changed under the move: {reason}")
                    return
                # A database restarting or a lock held too long: nothing is lost
                # (the checkpoint and the change table are where they were).
                self._retry_pause = min(MAX_RETRY_PAUSE, self._retry_pause * 2)
                logger.warning(
                    "move %s: a database is unavailable (%s); retrying in %.1fs",
                    self.move.name,
                    reason,
                    self._retry_pause,
                )
                self._stop.wait(self._retry_pause)
            except Exception as exc:
                if self._stop.is_set():
                    return
                logger.exception("move %s failed", self.move.name)
                self._fail(f"{type(exc).__name__}: {exc}")
                return

    def _fail(self, error: str) -> None:
        self.store.update(phase=phases.FAILED, error=error)
        self.store.release(self.holder)

    def _turns(self) -> bool:
        """The loop proper: changes, a chunk, a pause; verification when due.
        True when the move is no longer running (stopped or failed elsewhere)."""
        last_verified = time.time()
        schema_checked = renewed = time.monotonic()
        state: MoveState | None = None
        while not self._stop.is_set():
            renew = time.monotonic() - renewed > self.tuning.lease / 3
            if renew:
                # An idle move writes nothing that would renew it (see StateStore.fence).
                self.store.acquire(self.holder, self.tuning.lease)
                renewed = time.monotonic()
            if state is None or renew or state.phase != phases.STREAMING or not state.verdict:
                # Streaming with a verdict, the state changes only by this process
                # (its verdicts), or by another mover once it holds the lease, which
                # it cannot before this one's lapses: read as often as it is renewed,
                # not every turn (a query per poll, 6% of a streaming loop's time).
                state = self.store.load()
            if state.phase not in phases.RUNNING_PHASES:
                # Stopped by the mover that held it before us: nothing to run.
                self.store.release(self.holder)
                return True
            if state.phase == phases.STREAMING and state.verdict is None:
                self._ask_verification_once()
            if time.monotonic() - schema_checked > self.tuning.schema_check:
                schema_checked = time.monotonic()
                if not self._schema_still_matches():
                    return True
            for stream in self.streams:
                self._apply_changes(stream)
            # A full batch may have more behind it; anything less drained the
            # change table, and the next turn waits a poll like an idle one.
            # (It did not: under a steady trickle the loop spun, applying one
            # or two changes per turn, a dozen statements each, on the cores
            # the monolith's writers needed.)
            backlog = any(stream.pending >= self.tuning.apply_batch for stream in self.streams)
            self._retry_pause = self.tuning.poll  # the databases answer again
            if state.phase == phases.BACKFILL:
                started = time.monotonic()
                if self._copy_next_chunk(state):
                    self.store.update(phase=phases.STREAMING, backfilled_at=time.time())
                    logger.info("move %s: backfill complete, streaming changes", self.move.name)
                    self._ask_verification_once()
                elif self.tuning.nice:
                    self._stop.wait(self.tuning.nice * (time.monotonic() - started))
            elif not backlog:
                self._idle()
            if state.phase == phases.STREAMING:
                if time.time() - last_verified > self.tuning.verify_every:
                    self._ask_verification_once()
                if self._maybe_verify():
                    last_verified = time.time()
        return False

    def _take_lease(self) -> None:
        while not self._stop.is_set():
            try:
                self.store.acquire(self.holder, self.tuning.lease)
                self._waiting_for = None
                return
            except LeaseHeld as held:
                if self._waiting_for != held.holder:
                    logger.warning("move %s: %s; waiting for it to end", self.move.name, held)
                self._waiting_for = held.holder
                self._stop.wait(self.tuning.lease / 2)

    # --- schema ------------------------------------------------------------------

    def _check_schema(self) -> list[TableSpec]:
        try:
            return matching_tables(self.source, self.target, self.move.tables, sides=self.sides)
        except SchemaMismatch as mismatch:
            self.store.update(phase=phases.FAILED, error=str(mismatch))
            raise Refused(f"move {self.move.name} cannot run: {mismatch}") from mismatch

    def _schema_still_matches(self) -> bool:
        """A column added or dropped while the move runs would be copied by
        nobody: stop, and say which, rather than copy part of each row.

        Both schemas are compared in full only when a side's schema version
        moved: reflecting every table of both PostgreSQL databases held the
        loop up to a second every few seconds (a fifth of its time under
        load, and the lag's worst moments)."""
        with self.source_reader.connect() as source, self.readers[1].connect() as target:
            versions = (
                self.dialect.schema_version(source, self.move.tables),
                self.dialect.schema_version(target, self.move.tables),
            )
        if versions == self._schema_versions:
            return True
        try:
            specs = matching_tables(self.source, self.target, self.move.tables, sides=self.sides)
        except SchemaMismatch as mismatch:
            self._fail(f"the schema changed while the move ran: {mismatch}")
            return False
        if specs != self._specs:
            changed = next(s.name for s, old in zip(specs, self._specs, strict=True) if s != old)
            self._fail(
                f"the schema of {changed} changed while the move ran; start the move again "
                f"to copy it whole (`strangler data stop {self.move.name}`, then `start`)"
            )
            return False
        self._schema_versions = versions  # read before the comparison: never too new
        return True

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

    # --- capture -----------------------------------------------------------------

    def _apply_changes(self, stream: Stream) -> int:
        """Apply one batch of ``stream``'s changes; how many change rows it consumed."""
        limit = self.tuning.apply_batch
        read_at = time.time()
        with stream.origin_reader.connect() as origin:
            rows = origin.exec_driver_sql(
                f"SELECT seq, tbl, pk, at FROM {CHANGES_TABLE} ORDER BY seq LIMIT {limit}"
            ).all()
        stream.last_read_at = read_at
        stream.pending = len(rows)
        if not rows:
            stream.oldest_pending = None
            self._mark_drained(stream, read_at)
            return 0
        stream.oldest_pending = min(row.at for row in rows)
        latest: OrderedDict[tuple[str, Key], list[int]] = OrderedDict()
        for row in rows:  # a key changed twice is applied once, at its last place
            change = (row.tbl, tuple(json.loads(row.pk)))
            latest[change] = [*latest.pop(change, []), row.seq]
        specs = {spec.name: spec for spec in self._specs}
        owned = {
            (table, key)
            for table, keys in self._owned_by_origin(stream, specs, _by_table(latest)).items()
            for key in keys
        }
        changes = [change for change in latest if change in owned]
        try:
            self._apply(stream, specs, changes)
            failed: list[tuple[str, Key]] = []
        except IntegrityError:
            failed = self._apply_one_by_one(stream, specs, changes)
        applied_at = time.time()
        # Changes to records the origin does not own are consumed, not applied.
        done = [seq for change, seqs in latest.items() if change not in failed for seq in seqs]
        if done:
            with stream.changes.begin() as origin:
                self.dialect.forget_changes(origin, done)
        stream.consumed += len(done)
        histogram = self.metrics.apply_lag.labels(self.move.name)
        for row in rows:
            histogram.observe(max(0.0, applied_at - row.at))
        self.metrics.changes.labels(self.move.name).inc(len(done))
        if len(rows) < limit and not failed:
            self._mark_drained(stream, read_at)
        if failed and len(done) == 0:
            self._stop.wait(self.tuning.poll)  # only stuck changes left: no hot loop
        return len(done)

    def _apply(
        self, stream: Stream, specs: dict[str, TableSpec], changes: list[tuple[str, Key]]
    ) -> None:
        by_table = _by_table(changes)
        if not by_table:
            return
        if not stream.fenced:
            # The lease lives in the target's database, not in this transaction's:
            # renewed just before instead (a stalled holder is refused here).
            self.store.acquire(self.holder, self.tuning.lease)
        with stream.apply.begin() as target, stream.origin_reader.connect() as source:
            if stream.fenced:
                self.store.fence(target, self.holder, self.tuning.lease)
            self.dialect.begin_applying(target)
            for table, keys in by_table.items():
                self.dialect.apply_keys(target, source, specs[table], keys)
            self.dialect.end_applying(target)

    def _apply_one_by_one(
        self, stream: Stream, specs: dict[str, TableSpec], changes: list[tuple[str, Key]]
    ) -> list[tuple[str, Key]]:
        """Changes that only work in some order (a row freeing a unique value
        another one takes): apply each alone, and again those that failed,
        while that makes progress. What still fails stays in the change table."""
        left = changes
        while left:
            failed = []
            for change in left:
                try:
                    self._apply(stream, specs, [change])
                except IntegrityError:
                    failed.append(change)
            if len(failed) == len(left):
                logger.warning(
                    "move %s: %s change(s) conflict in the %s, kept for the next turn: %s",
                    self.move.name,
                    len(failed),
                    stream.destination,
                    failed[:3],
                )
                return failed
            left = failed
        return []

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

    def _idle(self) -> None:
        """An idle loop's pause between turns: ``poll`` seconds, or less when a
        handover is waiting for the streams. (A long poll makes bigger batches,
        fewer statements and commits beside the monolith's; the fence must
        not wait for it.)"""
        self._wake.wait(self.tuning.poll)
        self._wake.clear()

    def wait_for_capture(self, moment: float, timeout: float = 30.0) -> bool:
        """Block until every change committed before ``moment``, on either side,
        has been applied to the other."""
        deadline = time.monotonic() + timeout
        with self._drained:
            while any(stream.drained_at <= moment for stream in self.streams):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.running:
                    return False
                self._wake.set()
                self._drained.wait(min(remaining, 0.05))
        return True

    # --- backfill ----------------------------------------------------------------

    def _copy_next_chunk(self, state: MoveState) -> bool:
        """Copy one chunk; True when the whole backfill is done."""
        spec = next((s for s in self._specs if state.cursor(s.name) != DONE), None)
        if spec is None:
            return True
        started = time.monotonic()
        try:
            copied = self._copy(spec, state)
        except IntegrityError:
            # The target still holds a row whose change is waiting (a subscription
            # cancelled since it was copied, and its successor in this chunk):
            # apply the waiting changes, then copy the chunk again.
            for _ in range(DRAIN_PASSES):
                applied = self._apply_changes(self.streams[0])
                if self._stop.is_set() or applied < self.tuning.apply_batch:
                    break
            copied = self._copy(spec, state)
        elapsed = time.monotonic() - started
        if elapsed > 0:
            speed = copied / elapsed
            self._rate = 0.7 * self._rate + 0.3 * speed if self._rate else speed
        return False

    def _copy(self, spec: TableSpec, state: MoveState) -> int:
        cursors = dict(state.cursors)
        with self.target.begin() as target, self.source_reader.connect() as source:
            self.store.fence(target, self.holder, self.tuning.lease)
            self.dialect.begin_applying(target)  # the copy is not the target's own change
            copied, cursors[spec.name] = self.dialect.copy_chunk(
                target, source, spec, state.cursor(spec.name), self.tuning.chunk_rows
            )
            self.dialect.end_applying(target)
            rows_copied = state.rows_copied + copied
            # The checkpoint commits with the chunk: a kill never loses or repeats one.
            self.store.update(target, cursors=cursors, rows_copied=rows_copied)
        state.cursors, state.rows_copied = cursors, rows_copied
        return copied

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

    # --- verification ------------------------------------------------------------

    def _ask_verification_once(self) -> None:
        with self._counter_lock:
            if self._verify_asked == self._verify_done:
                self._verify_asked += 1

    def _maybe_verify(self) -> bool:
        """Start the verification asked for, unless one runs; True when one started."""
        if self._verify_asked <= self._verify_done:
            return False
        if self._verify_thread is not None and self._verify_thread.is_alive():
            return False
        number = self._verify_asked
        self._verify_thread = threading.Thread(
            target=self._verify, args=(number,), name=f"verify-{self.move.name}", daemon=True
        )
        self._verify_thread.start()
        return True

    def _verify(self, number: int) -> None:
        with self._verify_lock:
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
                self._verify_done = number
                return
            except Exception as exc:
                logger.exception("move %s: verification failed", self.move.name)
                verdict = {
                    "clean": False,
                    "at": _iso(time.time()),
                    "started_at": _iso(time.time()),
                    "error": f"{type(exc).__name__}: {exc}",
                    "rows_checked": 0,
                    "diverged_count": 0,
                    "unsettled_count": 0,
                    "diverged": [],
                    "unsettled": [],
                }
            self.store.update(verdict=verdict)
            self._verify_done = number
            self.metrics.verified_at.labels(self.move.name).set(time.time())
            logger.info(
                "move %s verified: %s, %s rows checked, %s diverged, %s unsettled",
                self.move.name,
                "clean" if verdict["clean"] else "NOT clean",
                verdict["rows_checked"],
                verdict["diverged_count"],
                verdict["unsettled_count"],
            )


def _by_table(changes: Iterable[tuple[str, Key]]) -> dict[str, list[Key]]:
    """Changed keys grouped by table, in the order they came."""
    grouped: dict[str, list[Key]] = {}
    for table, key in changes:
        grouped.setdefault(table, []).append(key)
    return grouped


def _differing(verdict: dict[str, Any]) -> int:
    return int(verdict.get("diverged_count", 0)) + int(verdict.get("unsettled_count", 0))


def _first_line(error: Exception) -> str:
    cause = getattr(error, "orig", None) or error
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat()
