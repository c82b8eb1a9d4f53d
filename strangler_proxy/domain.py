"""The proxy's own rules, free of HTTP servers, clients and databases.

Routes and how a request path matches one; which side of a canary a caller
lands on; how two responses are compared in shadow mode; when a route is
demoted; and the per-upstream circuit breaker. Everything here is pure and
takes the clock as an argument, so unit tests drive it directly.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fnmatch
import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from servicekit import buckets
from servicekit.buckets import USER_BUCKETS
from servicekit.errors import RuleViolated

__all__ = [
    "MODES",
    "SAFE_METHODS",
    "BadPath",
    "Breaker",
    "Comparison",
    "Route",
    "RouteTable",
    "bucket",
    "compare",
    "demotion_reason",
    "may_change",
    "normalise_path",
    "validate_change",
    "validate_sample",
]

MODES = ("monolith", "shadow", "canary", "service")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Methods a shadow copy may be sent for: never a write.
SHADOWED_METHODS = frozenset({"GET", "HEAD"})
MONOLITH = "monolith"
DEFAULT_IGNORE = ("id", "*_id", "*_at", "request_id")
#: The team that may change every route.
ADMIN_TEAM = "admin"


class BadPath(ValueError):
    """The request target cannot be normalised safely: answer 400."""


@dataclasses.dataclass(frozen=True)
class Route:
    """A named slice of the API that moves from the monolith to a service."""

    name: str
    pattern: str
    methods: frozenset[str]
    owner: str
    service: str
    mode: str = MONOLITH
    percent: int = 0
    fallback: bool = True
    ignore: tuple[str, ...] = DEFAULT_IGNORE
    #: The data move whose records this route serves; it gates leaving the monolith.
    data: str | None = None
    #: The share of its safe requests shadowed (None: the proxy's SHADOW_SAMPLE).
    shadow_sample: float | None = None
    revision: int = 0
    changed_at: dt.datetime | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", compile_pattern(self.pattern))

    def matches(self, method: str, path: str) -> bool:
        if self.methods and "*" not in self.methods and method not in self.methods:
            return False
        return self._regex.match(path) is not None  # type: ignore[attr-defined]

    def may_fall_back(self, method: str) -> bool:
        """Answer from the monolith when the service cannot be reached? Only
        safe methods, and never a data route: the service owns its records,
        and the monolith refuses what it does not own (409 not_owner) — a
        client must hear "try again" (the failure), not "wrong side"."""
        return self.fallback and method in SAFE_METHODS and self.data is None

    def upstream_for(self, key: str) -> str:
        """The upstream a request with canary ``key`` goes to (the primary one)."""
        if self.mode == "service":
            return self.service
        if self.mode == "canary" and bucket(self.name, key) < self.percent:
            return self.service
        return MONOLITH


def validate_sample(sample: float | None) -> float | None:
    """A route's shadow sample: a share from 0 to 1, or None for the default."""
    if sample is not None and not 0.0 <= sample <= 1.0:
        raise RuleViolated("a shadow sample is a share from 0 to 1", shadow_sample=[sample])
    return sample


def validate_change(mode: str, percent: int | None) -> int:
    """The percent a change will store; refuses a bad mode or percent."""
    if mode not in MODES:
        raise RuleViolated(f"mode must be one of {', '.join(MODES)}", mode=[mode])
    if mode == "canary":
        if percent is None or not 0 <= percent <= 100:
            raise RuleViolated("a canary needs a percent from 0 to 100", percent=[percent])
        return percent
    if percent not in (None, 0, 100):
        raise RuleViolated(f"a percent is only given for a canary, not {mode}")
    return 100 if mode == "service" else 0


def may_change(team: str, route: Route) -> bool:
    """A team moves only the routes it owns; the admin team moves all."""
    return team in (route.owner, ADMIN_TEAM)


#: The slot of records that belong to no user (billing's plans): one owner for
#: the whole table (the apps place them the same way, servicekit.ownership).
TABLE_SLOT = USER_BUCKETS


@dataclasses.dataclass(frozen=True)
class Ownership:
    """Who owns a data move's records now, as the data mover reports it
    (its status's ``ownership``): the buckets below ``service_buckets``, and
    the records of no user when ``plans_on_service``, are the service's.
    ``heading`` is where the mover is taking them (its goal), when it has one."""

    service_buckets: int = 0
    plans_on_service: bool = False
    moving: frozenset[int] = frozenset()
    heading: Ownership | None = None

    @classmethod
    def from_status(cls, status: dict[str, Any] | None) -> Ownership | None:
        """None when the mover cannot say (down, or not handing anything over)."""
        reported = (status or {}).get("ownership") or {}
        if "service_buckets" not in reported:
            return None
        heading = None
        if reported.get("desired") is not None:
            heading = cls(
                service_buckets=int(reported["desired"]),
                plans_on_service=reported.get("desired_plans") == "service",
            )
        return cls(
            service_buckets=int(reported["service_buckets"]),
            plans_on_service=reported.get("plans") == "service",
            moving=frozenset(int(slot) for slot in reported.get("moving") or ()),
            heading=heading,
        )

    def on_service(self, slot: int) -> bool:
        """Whether the service owns ``slot`` — for a slot being handed over,
        once the handover is done."""
        if slot in self.moving and self.heading is not None:
            return self.heading.on_service(slot)
        return self.plans_on_service if slot == TABLE_SLOT else slot < self.service_buckets


def owner_of(route: Route, key: str | None, ownership: Ownership | None) -> str:
    """The upstream that owns the records a request to a data route acts on:
    a user's by their bucket (the key), the others' by the table's owner.

    Records being handed over go to their new owner: it answers 503
    ``ownership_moving`` until the handover is done, and the data plane holds
    the request meanwhile. Without a word from the mover, the route's mode
    and percent decide. Either way the apps have the last word: one that
    does not own the records refuses them (409 ``not_owner``).
    """
    assert route.data is not None
    slot = bucket(route.data, key) if key else TABLE_SLOT
    if ownership is None:
        on_service = route.mode == "service" or (
            route.mode == "canary" and slot != TABLE_SLOT and slot < route.percent
        )
    else:
        on_service = ownership.on_service(slot)
    return route.service if on_service else MONOLITH


def desired_ownership(route: Route) -> tuple[int, str]:
    """What a data route's mode asks of its move: (service buckets, owner of the rest)."""
    if route.mode == "service":
        return USER_BUCKETS, "service"
    return (route.percent if route.mode == "canary" else 0), MONOLITH


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """``/billing/invoices/{id}`` matches one segment per ``{...}``; a trailing
    ``/**`` matches the path itself and anything below it."""
    if not pattern.startswith("/"):
        raise ValueError(f"a route pattern starts with '/': {pattern!r}")
    tail = ""
    if pattern.endswith("/**"):
        pattern, tail = pattern[:-3], "(?:/.*)?"
    parts = re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\})", pattern)
    body = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(f"^{body}{tail}/?$")


class RouteTable:
    """An immutable snapshot of the routes at one revision; first match wins."""

    def __init__(self, routes: Iterable[Route], revision: int) -> None:
        self.routes = tuple(routes)
        self.revision = revision
        self.by_name = {route.name: route for route in self.routes}

    def match(self, method: str, path: str) -> Route | None:
        for route in self.routes:
            if route.matches(method, path):
                return route
        return None


# --- paths -----------------------------------------------------------------

_FORBIDDEN_DECODED = re.compile(rb"[\x00-\x1f\x7f\\]")
_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Characters kept literal when the normalised path is re-encoded for upstreams.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
#: A path already in normal form: segments of those characters only, none
#: empty, none starting with a dot (so no "." or ".."), no escapes.
_PLAIN_PATH = re.compile(r"(?:/[A-Za-z0-9:@!$&'()*+,;=_~-][A-Za-z0-9:@!$&'()*+,;=_~.-]*)*/?")


def normalise_path(raw: str) -> str:
    """The path a route is matched on and the upstream is sent, from the raw one.

    Percent-escapes are decoded once, dot segments removed and repeated slashes
    collapsed, so ``/users/../billing``, ``/%2e%2e/billing`` and ``//billing``
    all become ``/billing`` (or are refused): a route can only be reached by a
    path that, written plainly, would reach it too. An encoded slash or
    backslash is refused because upstreams disagree on what it means.
    """
    if _PLAIN_PATH.fullmatch(raw):
        return raw  # nearly every request: nothing to decode, remove or collapse
    return _normalised(raw)


def _normalised(raw: str) -> str:
    if not raw.startswith("/"):
        raise BadPath("the path must start with '/'")
    if _PERCENT.search(raw):
        raise BadPath("malformed percent-encoding")
    lowered = raw.lower()
    if "%2f" in lowered or "%5c" in lowered:
        raise BadPath("encoded slashes are not accepted")
    decoded = unquote_to_bytes(raw)
    if _FORBIDDEN_DECODED.search(decoded):
        raise BadPath("control characters or backslashes in the path")
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadPath("the path is not UTF-8") from exc
    segments: list[str] = []
    for segment in text.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not segments:
                raise BadPath("the path climbs above the root")
            segments.pop()
            continue
        segments.append(segment)
    trailing = "/" if text.endswith("/") and segments else ""
    return quote("/" + "/".join(segments) + trailing, safe=_PATH_SAFE)


# --- canary ----------------------------------------------------------------


def bucket(route_name: str, key: str) -> int:
    """A stable bucket 0..99 for ``key`` on this route.

    sha256, not ``hash()``: the bucket must be the same in every worker and
    after every restart. A caller goes to the service when its bucket is below
    the percent, so raising the percent only ever moves callers towards it.
    """
    # One formula with the apps' ownership check: a user's requests go where
    # that user's records are owned.
    return buckets.bucket(route_name, key)


# --- shadow comparison -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Comparison:
    equal: bool
    diff: list[str]


def compare(
    primary_status: int,
    primary_body: bytes,
    shadow_status: int,
    shadow_body: bytes,
    ignore: Iterable[str] = DEFAULT_IGNORE,
) -> Comparison:
    """Compare two responses: the status, then the JSON bodies without the
    volatile fields named by ``ignore`` (key-name globs, at any depth)."""
    if primary_status == shadow_status and primary_body == shadow_body:
        return Comparison(equal=True, diff=[])  # the same bytes: nothing to parse
    diff: list[str] = []
    if primary_status != shadow_status:
        diff.append(f"status: {primary_status} != {shadow_status}")
    patterns = tuple(ignore)
    left, right = _json_or_bytes(primary_body), _json_or_bytes(shadow_body)
    _diff(left, right, "$", patterns, diff)
    return Comparison(equal=not diff, diff=diff)


def _json_or_bytes(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body


_MAX_DIFF_LINES = 50


def _diff(left: Any, right: Any, at: str, ignore: tuple[str, ...], out: list[str]) -> None:
    if len(out) >= _MAX_DIFF_LINES:
        return
    if isinstance(left, dict) and isinstance(right, dict):
        for key in sorted(set(left) | set(right)):
            if any(fnmatch.fnmatchcase(key, pattern) for pattern in ignore):
                continue
            if key not in right:
                out.append(f"{at}.{key}: only in monolith")
            elif key not in left:
                out.append(f"{at}.{key}: only in service")
            else:
                _diff(left[key], right[key], f"{at}.{key}", ignore, out)
    elif isinstance(left, list) and isinstance(right, list):
        if len(left) != len(right):
            out.append(f"{at}: {len(left)} items != {len(right)} items")
        for index, (a, b) in enumerate(zip(left, right, strict=False)):
            _diff(a, b, f"{at}[{index}]", ignore, out)
    elif left != right:
        out.append(f"{at}: {_short(left)} != {_short(right)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- auto-demotion ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DemotionPolicy:
    error_rate: float = 0.5
    mismatch_rate: float = 0.5
    min_requests: int = 20
    window_seconds: float = 30.0


def demotion_reason(
    route: Route,
    *,
    service_requests: int,
    service_errors: int,
    shadows: int,
    mismatches: int,
    policy: DemotionPolicy,
) -> str | None:
    """Why ``route`` must go back to the monolith given its window, or None."""
    if route.mode in ("canary", "service") and service_requests >= policy.min_requests:
        rate = service_errors / service_requests
        if rate >= policy.error_rate:
            return f"auto-demotion: 5xx rate {rate:.2f} over {service_requests} requests"
    if route.mode == "shadow" and shadows >= policy.min_requests:
        rate = mismatches / shadows
        if rate >= policy.mismatch_rate:
            return f"auto-demotion: shadow mismatch rate {rate:.2f} over {shadows} requests"
    return None


# --- circuit breaker -------------------------------------------------------

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class Breaker:
    """Per upstream: opens after ``threshold`` failures in a row, lets one
    trial request through after ``cooldown`` seconds (half-open), and closes
    again when that trial succeeds."""

    def __init__(
        self,
        threshold: int = 5,
        cooldown: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return CLOSED
        if self._clock() - self._opened_at >= self.cooldown:
            return HALF_OPEN
        return OPEN

    def allow(self) -> bool:
        """May a request go to the upstream now?"""
        with self._lock:
            state = self.state
            if state == CLOSED:
                return True
            if state == HALF_OPEN and not self._trial_running:
                self._trial_running = True
                return True
            return False

    def retry_after(self) -> int:
        if self._opened_at is None:
            return 0
        return max(1, round(self.cooldown - (self._clock() - self._opened_at)))

    def succeeded(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._trial_running = False

    def failed(self) -> None:
        with self._lock:
            self._failures += 1
            if self._trial_running or self._failures >= self.threshold:
                self._opened_at = self._clock()
            self._trial_running = False
