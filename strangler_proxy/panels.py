"""What the dashboard shows, computed from plain data: no Flask, no SQL.

Each function takes what the route store or the data mover returned and gives
the templates values ready to print, so unit tests check the arithmetic and
the words without a browser.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from strangler_proxy.datagate import DEFAULT_MAX_LAG
from strangler_proxy.traffic import LATENCY_BOUNDS_MS

__all__ = [
    "CHART_SECONDS",
    "DataMover",
    "Gate",
    "Line",
    "RouteTraffic",
    "describe_state",
    "history_panel",
    "mover_statuses",
    "percentile",
    "route_gates",
    "side_by_side",
    "traffic_panel",
]

#: The chart covers this much history, in steps of this many seconds.
CHART_SECONDS = 180
CHART_STEP_SECONDS = 5
#: The figures beside the chart are over this many seconds (as the admin API's rates).
RECENT_SECONDS = 10
#: How ``domain.demotion_reason`` starts every reason it gives.
AUTO_DEMOTION_PREFIX = "auto-demotion"
SPARK_WIDTH, SPARK_HEIGHT = 120, 32


class DataMover(Protocol):
    """What the proxy's ``data`` attribute offers once the data mover runs."""

    def status(self, move: str) -> dict[str, Any] | None: ...


# --- live traffic ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RouteTraffic:
    """One route's traffic: the recent figures and the chart's series (req/s per step)."""

    route: str
    rate: float
    monolith_rate: float
    service_rate: float
    shadow_rate: float
    error_rate: float
    p50_ms: float | None
    p99_ms: float | None
    total: tuple[float, ...]
    service: tuple[float, ...]
    errors: tuple[float, ...]

    @property
    def service_share(self) -> float:
        """The service's share of the answers whose upstream is known (0..1)."""
        known = self.monolith_rate + self.service_rate
        return self.service_rate / known if known else 0.0

    @property
    def peak(self) -> float:
        return max((*self.total, *self.service, *self.errors, 0.0))

    def points(self, series: str) -> str:
        """An SVG polyline's ``points`` for ``series``, scaled to this route's peak."""
        values: Sequence[float] = getattr(self, series)
        peak = self.peak or 1.0
        step = SPARK_WIDTH / max(1, len(values) - 1)
        return " ".join(
            f"{index * step:.1f},{SPARK_HEIGHT - 1 - value / peak * (SPARK_HEIGHT - 2):.1f}"
            for index, value in enumerate(values)
        )


def traffic_panel(
    series: Iterable[Mapping[str, Any]],
    latencies: Iterable[tuple[str, Sequence[int]]],
    routes: Sequence[str],
) -> list[RouteTraffic]:
    """Per route: the chart from ``series`` (counts per step of
    ``CHART_STEP_SECONDS`` over ``CHART_SECONDS``, as the store sums them), the
    recent rates from its last steps, p50/p99 from the recent ``latencies``."""
    steps = CHART_SECONDS // CHART_STEP_SECONDS
    recent_from = steps - RECENT_SECONDS // CHART_STEP_SECONDS
    counts = {name: {key: [0] * steps for key in _COUNTED} for name in routes}
    for row in series:
        chart = counts.get(row["route"])
        if chart is None or row["step"] < 0:
            continue
        index = min(steps - 1, row["step"])  # flushed a moment after "now" was taken
        for key in _COUNTED:
            chart[key][index] += row.get(key) or 0
    latency = {name: [0] * (len(LATENCY_BOUNDS_MS) + 1) for name in routes}
    for name, buckets in latencies:
        if name in latency:
            for slot, count in enumerate(buckets[: len(latency[name])]):
                latency[name][slot] += count
    panel = []
    for name in routes:
        chart = counts[name]
        recent = {key: sum(chart[key][recent_from:]) for key in _COUNTED}
        requests = recent["requests"]
        panel.append(
            RouteTraffic(
                route=name,
                rate=requests / RECENT_SECONDS,
                monolith_rate=recent["via_monolith"] / RECENT_SECONDS,
                service_rate=recent["via_service"] / RECENT_SECONDS,
                shadow_rate=recent["shadows"] / RECENT_SECONDS,
                error_rate=recent["errors"] / requests if requests else 0.0,
                p50_ms=percentile(latency[name], 0.50),
                p99_ms=percentile(latency[name], 0.99),
                total=tuple(n / CHART_STEP_SECONDS for n in chart["requests"]),
                service=tuple(n / CHART_STEP_SECONDS for n in chart["via_service"]),
                errors=tuple(n / CHART_STEP_SECONDS for n in chart["errors"]),
            )
        )
    return panel


_COUNTED = ("requests", "errors", "via_monolith", "via_service", "shadows")


def percentile(buckets: Sequence[int], q: float) -> float | None:
    """The upper bound (ms) of the latency bucket holding quantile ``q``; None
    without requests, infinity when it lies past the last bound."""
    total = sum(buckets)
    if not total:
        return None
    seen = 0
    for bound, count in zip((*LATENCY_BOUNDS_MS, math.inf), buckets, strict=False):
        seen += count
        if seen >= q * total:
            return float(bound)
    return math.inf


# --- the data mover and the gates ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class Gate:
    """One question a route must answer before it moves, in plain words."""

    question: str
    answer: str
    state: str  # "yes", "no" or "unknown"


def mover_statuses(mover: DataMover | None, moves: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Each move's status; a move whose status fails or is None is left out
    (the mover is not running for it)."""
    statuses: dict[str, dict[str, Any]] = {}
    if mover is None:
        return statuses
    for move in moves:
        try:
            status = mover.status(move)
        except Exception:  # the mover is someone else's process: any failure means "not running"
            continue
        if status is not None:
            statuses[move] = status
    return statuses


def route_gates(
    move: str | None,
    statuses: Mapping[str, Mapping[str, Any]],
    mover_running: bool,
    max_lag: float = DEFAULT_MAX_LAG,
) -> list[Gate]:
    """Data in sync? Verify clean? Reverse stream running? — for a route whose data is ``move``."""
    status = statuses.get(move) if move else None
    if status is None:
        why = (
            "unknown: the route names no data move"
            if move is None
            else f"unknown: the data mover is not running for {move}"
            if mover_running
            else "unknown: the data mover is not running"
        )
        return [Gate(question, why, "unknown") for question in _GATE_QUESTIONS]
    completed = status.get("completed")
    if status.get("phase") == "completed" and completed:
        # The journey ended: no copy to keep in sync, the service is the only home.
        at = str(completed.get("at") or "")[:19].replace("T", " ")
        answer = f"completed {at} UTC: the service owns {move} for good, no sync"
        return [Gate(question, answer, "yes") for question in _GATE_QUESTIONS]
    return [_in_sync(status, max_lag), _verified(status), _reverse(status)]


_GATE_QUESTIONS = ("data in sync?", "verify clean?", "reverse stream running?")


def _in_sync(status: Mapping[str, Any], max_lag: float) -> Gate:
    # The same threshold as the gate that refuses a move (strangler_proxy/datagate.py).
    question, phase, lag = _GATE_QUESTIONS[0], status.get("phase"), status.get("lag_seconds")
    if phase == "backfill":
        copied, total = status.get("rows_copied", 0), status.get("rows_total", 0)
        return Gate(question, f"no: still copying ({copied:,} of {total:,} rows)", "no")
    if phase == "stopped":
        return Gate(question, "no: the copy is stopped", "no")
    if phase == "streaming":
        if lag is None:
            return Gate(question, "unknown: streaming, lag not measured yet", "unknown")
        if lag < max_lag:
            return Gate(question, f"yes: streaming, {lag:.1f} s behind", "yes")
        return Gate(question, f"no: streaming but {lag:.1f} s behind", "no")
    return Gate(question, "unknown", "unknown")


def _verified(status: Mapping[str, Any]) -> Gate:
    question, verdict = _GATE_QUESTIONS[1], status.get("verdict")
    if not verdict:
        return Gate(question, "unknown: not verified yet", "unknown")
    checked = verdict.get("rows_checked", 0)
    if verdict.get("clean"):
        return Gate(question, f"yes: {checked:,} rows checked at {verdict.get('at')}", "yes")
    diverged = verdict.get("diverged_count", len(verdict.get("diverged") or ()))
    return Gate(question, f"no: {diverged} of {checked:,} rows differ", "no")


def _reverse(status: Mapping[str, Any]) -> Gate:
    # The mover's status does not promise this key yet: "unknown" until it does.
    question, reverse = _GATE_QUESTIONS[2], status.get("reverse")
    if reverse is True:
        return Gate(question, "yes", "yes")
    if reverse is False:
        return Gate(question, "no", "no")
    return Gate(question, "unknown", "unknown")


# --- shadow mismatches ----------------------------------------------------------


class Line(NamedTuple):
    text: str
    state: str  # "same", "differs" or "ignored"


_KEY = re.compile(r'^\s*"((?:[^"\\]|\\.)*)":')


def side_by_side(
    monolith_body: str, service_body: str, ignore: Sequence[str]
) -> tuple[list[Line], list[Line]]:
    """Both bodies pretty-printed, in runs of lines that are the same on both
    sides, different, or fields the comparison ignores."""
    left, right = _pretty(monolith_body), _pretty(service_body)
    differs_left: set[int] = set()
    differs_right: set[int] = set()
    matcher = difflib.SequenceMatcher(None, left, right, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "equal":
            differs_left.update(range(i1, i2))
            differs_right.update(range(j1, j2))
    return (
        _runs(_marked(left, differs_left, ignore)),
        _runs(_marked(right, differs_right, ignore)),
    )


def _runs(lines: list[Line]) -> list[Line]:
    """Consecutive lines in the same state joined: a template escapes a few
    runs instead of every line (1,000 mismatches' worth of lines add up)."""
    runs: list[Line] = []
    for state, group in itertools.groupby(lines, key=lambda line: line.state):
        runs.append(Line("\n".join(line.text for line in group), state))
    return runs


def _pretty(body: str) -> list[str]:
    try:
        return json.dumps(json.loads(body), indent=2, sort_keys=True).splitlines()
    except ValueError:  # a truncated sample or not JSON: show it as it came
        return body.splitlines()


def _marked(lines: list[str], differs: set[int], ignore: Sequence[str]) -> list[Line]:
    ignored = _ignored(tuple(ignore))
    marked = []
    for index, text in enumerate(lines):
        key = _KEY.match(text)
        if key and ignored.fullmatch(key.group(1)):
            marked.append(Line(text, "ignored"))
        else:
            marked.append(Line(text, "differs" if index in differs else "same"))
    return marked


@functools.lru_cache(maxsize=64)
def _ignored(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """The ignore globs as one regex (what ``fnmatch.fnmatchcase`` does, once)."""
    if not patterns:
        return re.compile(r"(?!)")
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


# --- history ------------------------------------------------------------------------


def describe_state(state: Mapping[str, Any] | None) -> str:
    """``canary 25%``, ``service``, ... from an audit entry's before/after."""
    if not state:
        return "(new)"
    if state.get("mode") == "canary":
        return f"canary {state.get('percent')}%"
    return str(state.get("mode"))


def history_panel(entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Audit entries in words (``monolith → canary 25%``), auto-demotions marked."""
    return [
        {
            **entry,
            "before_words": describe_state(entry.get("before")),
            "after_words": describe_state(entry.get("after")),
            "demotion": str(entry.get("reason", "")).startswith(AUTO_DEMOTION_PREFIX),
        }
        for entry in entries
    ]
