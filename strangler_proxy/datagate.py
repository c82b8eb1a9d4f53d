"""When a route may leave the monolith, given the state of the data it serves.

Pure: takes the route, the mode asked for, the data mover's status of the
route's move (None when the mover cannot be asked) and the clock. A route
that moves without its data is the failure this project exists to prevent —
existing records 404 on the new side, writes lost on the way back — so
``canary`` and ``service`` are refused, with every reason and the command
that fixes it, until the copy is complete, current and proved; and, for a
route that writes, until the mover can hand write ownership over and its
reverse stream (service to monolith) is running and current.

:func:`reasons_to_complete` is the same kind of answer for the journey's
end (`strangler data complete`): the proxy's half of the checks — every
route of the move on ``service`` — before the mover checks its own.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from strangler_proxy.domain import SAFE_METHODS, Route

__all__ = [
    "COMPLETED",
    "DEFAULT_MAX_LAG",
    "DEFAULT_VERIFY_MAX_AGE",
    "LEAVING_MODES",
    "DataPolicy",
    "reasons_to_complete",
    "reasons_to_stay",
]

#: Modes in which the service answers some of the route's requests.
LEAVING_MODES = frozenset({"canary", "service"})
#: Changes must reach the service within this many seconds.
DEFAULT_MAX_LAG = 1.0
#: A clean verification older than this proves too little.
DEFAULT_VERIFY_MAX_AGE = 900.0
_RUNNING = ("backfill", "streaming")
#: The phase of a move whose journey ended (`strangler data complete`).
COMPLETED = "completed"


@dataclasses.dataclass(frozen=True)
class DataPolicy:
    max_lag: float = DEFAULT_MAX_LAG
    verify_max_age: float = DEFAULT_VERIFY_MAX_AGE


def reasons_to_stay(
    route: Route,
    mode: str,
    status: dict[str, Any] | None,
    policy: DataPolicy,
    now: dt.datetime,
) -> list[str]:
    """Why ``route`` may not be set to ``mode`` now; empty when it may."""
    if route.data is None or mode not in LEAVING_MODES:
        return []
    move = route.data
    if status is not None and status.get("phase") == COMPLETED:
        # The journey ended: the service is the only home the records have.
        if mode == "service":
            return []
        return [f"{move}'s move was completed: its routes stay on the service"]
    fix_start = f"run `strangler data start {move}`"
    fix_verify = f"run `strangler data verify {move}`"
    if status is None:
        reasons = [
            f"the data mover cannot be reached, so {move}'s data is unproven: start it "
            f"(`make run` does) and {fix_start}"
        ]
    else:
        reasons = _data_reasons(move, status, policy, now, fix_start, fix_verify)
    if status is not None and ("*" in route.methods or route.methods - SAFE_METHODS):
        reasons.extend(_write_reasons(move, status, policy))
    return reasons


def _write_reasons(move: str, status: dict[str, Any], policy: DataPolicy) -> list[str]:
    """A route that writes hands write ownership over, user by user: the
    changes made on the service must flow back (prove the reverse stream
    before switching, as Vitess learned), and the fence must be working."""
    ownership = status.get("ownership") or {}
    if "service_buckets" not in ownership:
        return [
            f"this data mover cannot hand write ownership of {move}'s records over "
            "(its status has no ownership): upgrade it"
        ]
    sides = status.get("sides") or ["monolith", "service"]
    back = f"{sides[1]}_to_{sides[0]}"
    lag = ((status.get("streams") or {}).get(back) or {}).get("lag_seconds")
    reasons = []
    if lag is None:
        reasons.append(f"the reverse stream ({sides[1]} to {sides[0]}) is not running")
    elif lag >= policy.max_lag:
        reasons.append(
            f"the reverse stream ({sides[1]} to {sides[0]}) is {lag:.2f} s late "
            f"(at most {policy.max_lag:g} s)"
        )
    if ownership.get("error"):
        reasons.append(f"the last handover of {move}'s records failed: {ownership['error']}")
    return reasons


def _data_reasons(
    move: str,
    status: dict[str, Any],
    policy: DataPolicy,
    now: dt.datetime,
    fix_start: str,
    fix_verify: str,
) -> list[str]:
    reasons = []
    phase = status.get("phase")
    if phase not in _RUNNING:
        error = f" ({status['error']})" if status.get("error") else ""
        return [f"{move}'s data is not being copied: the move is {phase}{error}; {fix_start}"]
    if phase == "backfill":
        copied, total = status.get("rows_copied", 0), status.get("rows_total", 0)
        share = 100 * copied // total if total else 0
        reasons.append(
            f"the copy of {move}'s data is {share}% done ({copied:,} of {total:,} rows): "
            f"wait for it (`strangler data status`)"
        )
    lag = status.get("lag_seconds")
    if lag is None:
        reasons.append(f"nobody is applying {move}'s changes (the mover is not running it)")
    elif lag >= policy.max_lag:
        reasons.append(
            f"changes reach the service {lag:.2f} s late (at most {policy.max_lag:g} s): "
            "wait, or look at the mover's log"
        )
    verdict = status.get("verdict")
    if verdict is None:
        reasons.append(f"the copy has not been verified yet: {fix_verify}")
    elif not verdict.get("clean"):
        count = verdict.get("diverged_count", 0) + verdict.get("unsettled_count", 0)
        reasons.append(
            f"the last verification found {count} diverging rows: {fix_verify} to see them"
        )
    elif _before(verdict.get("started_at"), status.get("backfilled_at")):
        reasons.append(f"the last clean verification is older than the current copy: {fix_verify}")
    else:
        age = (now - dt.datetime.fromisoformat(verdict["at"])).total_seconds()
        if age > policy.verify_max_age:
            reasons.append(
                f"the last clean verification is {age / 60:.0f} min old (at most "
                f"{policy.verify_max_age / 60:g} min): {fix_verify}"
            )
    return reasons


def _before(moment: str | None, other: str | None) -> bool:
    """Whether ISO time ``moment`` is earlier than ``other`` (False if either is unknown)."""
    if not moment or not other:
        return False
    return dt.datetime.fromisoformat(moment) < dt.datetime.fromisoformat(other)


def reasons_to_complete(move: str, routes: list[Route]) -> list[str]:
    """Why ``move`` may not be completed yet, as far as its routes are concerned."""
    elsewhere = [r for r in routes if r.mode != "service"]
    if not elsewhere:
        return []
    shown = ", ".join(
        f"{r.name} on {'canary ' + str(r.percent) + '%' if r.mode == 'canary' else r.mode}"
        for r in elsewhere
    )
    return [
        f"{move}'s routes must be on the service first ({shown}): "
        f"`strangler set {elsewhere[0].name} service --wait 60`"
    ]
