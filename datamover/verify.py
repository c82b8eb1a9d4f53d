"""Prove that the target holds the source's rows, while both keep changing.

Per table: the source's rows are cut into key ranges; each range's row count
and an order-independent digest of its values are computed *inside* each
database; a range whose figures differ is halved, and halved again, until it
is small enough to compare row by row. Only those rows ever leave the
databases.

A row can differ only because its change is still on its way. So, as
Ghostferry's inline verifier does, every row found different is checked again
once capture has applied everything committed before it was found; a row is
reported only when it still differs, with the same values on both sides, two
rounds in a row. A row that keeps changing through every round is reported
as unsettled, and the verdict is not clean.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.engine import Engine

from datamover.dialects import Dialect, Key
from datamover.schema import TableSpec

__all__ = ["DEFAULT_LEAF_ROWS", "DEFAULT_RANGE_ROWS", "VerificationCancelled", "Verifier"]

DEFAULT_RANGE_ROWS = 10_000
#: A differing range this small is compared row by row.
DEFAULT_LEAF_ROWS = 64
DEFAULT_ROUNDS = 6
#: Diverging rows a verdict lists (it counts them all): a verdict is stored and
#: read on every status, so it must stay small whatever went wrong.
REPORTED_ROWS = 100
#: Rows found different that are checked again; past this many, the copy is
#: plainly broken and the rest are only counted (as unsettled).
SETTLE_LIMIT = 1_000


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return value


class VerificationCancelled(Exception):
    """The move stopped while it was being verified: no verdict."""


@dataclasses.dataclass
class _Candidate:
    spec: TableSpec
    key: Key
    seen: tuple[Any, Any] | None = None
    stable_rounds: int = 0


class Verifier:
    def __init__(
        self,
        dialect: Dialect,
        source: Engine,
        target: Engine,
        specs: Sequence[TableSpec],
        *,
        sides: tuple[str, str],
        wait_for_capture: Callable[[float], bool],
        cancelled: Callable[[], bool] = lambda: False,
        range_rows: int = DEFAULT_RANGE_ROWS,
        leaf_rows: int = DEFAULT_LEAF_ROWS,
        rounds: int = DEFAULT_ROUNDS,
    ) -> None:
        """``wait_for_capture(t)`` returns once every change committed before
        ``t`` has been applied (False if that did not happen in time)."""
        self._dialect = dialect
        self._source = source
        self._target = target
        self._specs = specs
        self._sides = sides
        self._wait_for_capture = wait_for_capture
        self._cancelled = cancelled
        self._range_rows = range_rows
        self._leaf_rows = max(2, leaf_rows)
        self._rounds = rounds

    def run(self) -> dict[str, Any]:
        started = time.time()
        candidates: list[_Candidate] = []
        checked = 0
        tables = {}
        for spec in self._specs:
            rows, found = self._scan(spec)
            checked += rows
            tables[spec.name] = rows
            candidates.extend(_Candidate(spec, key) for key in found)
        candidate_count = len(candidates)
        diverged, unsettled = self._settle(candidates[:SETTLE_LIMIT])
        not_rechecked = max(0, candidate_count - SETTLE_LIMIT)
        return {
            "clean": not diverged and not unsettled and not not_rechecked,
            "at": dt.datetime.fromtimestamp(time.time(), dt.UTC).isoformat(),
            "started_at": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(),
            "seconds": round(time.time() - started, 3),
            "rows_checked": checked,
            "tables": tables,
            "rechecked": candidate_count,
            "diverged_count": len(diverged),
            "unsettled_count": len(unsettled) + not_rechecked,
            "diverged": diverged[:REPORTED_ROWS],
            "unsettled": unsettled[:REPORTED_ROWS],
        }

    # --- the scan ---------------------------------------------------------------

    def _scan(self, spec: TableSpec) -> tuple[int, list[Key]]:
        found: list[Key] = []
        rows = 0
        lo: Key | None = None
        while True:
            if self._cancelled():
                raise VerificationCancelled(f"verification of {spec.name} was cancelled")
            # A short transaction per range: a verifier must never hold a lock
            # that a migration (or the mover's own stop) would queue behind.
            with self._source.connect() as source:
                hi = self._dialect.key_after(source, spec, lo, self._range_rows)
            rows += self._compare(spec, lo, hi, found)
            if hi is None:
                return rows, found
            lo = hi

    def _compare(self, spec: TableSpec, lo: Key | None, hi: Key | None, found: list[Key]) -> int:
        if self._cancelled():
            raise VerificationCancelled(f"verification of {spec.name} was cancelled")
        with self._source.connect() as source, self._target.connect() as target:
            left = self._dialect.checksum(source, spec, lo, hi)
            right = self._dialect.checksum(target, spec, lo, hi)
            if left == right:
                return left[0]
            biggest = max(left[0], right[0])
            side = source if left[0] >= right[0] else target
            # PostgreSQL reads each statement at its own snapshot: rows deleted
            # since the count can leave no middle. Then compare the range row by row.
            middle = (
                self._dialect.key_position(side, spec, lo, hi, biggest // 2 - 1)
                if biggest > self._leaf_rows
                else None
            )
            if middle is None:
                a = self._dialect.rows(source, spec, lo, hi)
                b = self._dialect.rows(target, spec, lo, hi)
                found.extend(sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k)))
                return left[0]
        self._compare(spec, lo, middle, found)
        self._compare(spec, middle, hi, found)
        return left[0]

    # --- settling what differed ------------------------------------------------

    def _settle(
        self, candidates: list[_Candidate]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        diverged = []
        for _ in range(self._rounds):
            if not candidates:
                break
            # A row counts as "the same twice" only across a round in which
            # capture did catch up: a stalled capture proves nothing.
            caught_up = self._wait_for_capture(time.time())
            still = []
            for candidate in candidates:
                if self._cancelled():
                    raise VerificationCancelled("verification was cancelled")
                now = self._both(candidate.spec, candidate.key)
                if now[0] == now[1]:
                    continue
                same = now == candidate.seen and caught_up
                candidate.stable_rounds = candidate.stable_rounds + 1 if same else 0
                candidate.seen = now
                if candidate.stable_rounds >= 1:
                    diverged.append(self._report(candidate))
                else:
                    still.append(candidate)
            candidates = still
        return diverged, [self._report(c) for c in candidates]

    def _both(self, spec: TableSpec, key: Key) -> tuple[Any, Any]:
        with self._source.connect() as source, self._target.connect() as target:
            return (
                self._dialect.rows_by_key(source, spec, [key]).get(key),
                self._dialect.rows_by_key(target, spec, [key]).get(key),
            )

    def _report(self, candidate: _Candidate) -> dict[str, Any]:
        spec = candidate.spec
        left, right = candidate.seen or self._both(spec, candidate.key)
        if right is None:
            side = f"only in the {self._sides[0]}"
        elif left is None:
            side = f"only in the {self._sides[1]}"
        else:
            side = "different values"

        def named(row: Any) -> dict[str, Any] | None:
            return (
                None
                if row is None
                else {c: _plain(v) for c, v in zip(spec.columns, row, strict=True)}
            )

        return {
            "table": spec.name,
            "key": "/".join(str(part) for part in candidate.key),
            "side": side,
            self._sides[0]: named(left),
            self._sides[1]: named(right),
        }
