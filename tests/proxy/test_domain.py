"""Unit tests of the proxy's rules: matching, paths, bucketing, comparison,
demotion and the circuit breaker."""

from __future__ import annotations

import pytest

from strangler_proxy.domain import (
    BadPath,
    Breaker,
    DemotionPolicy,
    Route,
    RouteTable,
    bucket,
    compare,
    demotion_reason,
    normalise_path,
)


def route(name: str = "r", pattern: str = "/billing/**", **kwargs) -> Route:
    fields = {"methods": frozenset({"*"}), "owner": "team", "service": "billing", **kwargs}
    return Route(name=name, pattern=pattern, **fields)


# --- matching ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/billing/**", "/billing", True),
        ("/billing/**", "/billing/invoices/1", True),
        ("/billing/**", "/billingx", False),
        ("/users/{id}", "/users/42", True),
        ("/users/{id}", "/users/42/", True),
        ("/users/{id}", "/users/42/deactivate", False),
        ("/users/{id}", "/users", False),
        ("/health", "/health", True),
        ("/health", "/healthz", False),
    ],
)
def test_patterns_match_segments(pattern, path, matches):
    assert route(pattern=pattern).matches("GET", path) is matches


def test_methods_restrict_a_route_and_the_first_match_wins():
    reads = route("reads", "/billing/**", methods=frozenset({"GET"}))
    everything = route("everything", "/billing/**")
    table = RouteTable([reads, everything], revision=1)

    assert table.match("GET", "/billing/plans").name == "reads"
    assert table.match("POST", "/billing/plans").name == "everything"
    assert table.match("GET", "/users") is None


# --- paths -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("/billing/invoices", "/billing/invoices"),
        ("//billing///invoices", "/billing/invoices"),
        ("/users/../billing/invoices", "/billing/invoices"),
        ("/users/%2e%2e/billing", "/billing"),
        ("/users/%2E%2E/billing", "/billing"),
        ("/users/./x/", "/users/x/"),
        ("/b%69lling", "/billing"),
        ("/caf%C3%A9", "/caf%C3%A9"),
    ],
)
def test_paths_are_normalised_before_matching(raw, normal):
    assert normalise_path(raw) == normal


@pytest.mark.parametrize(
    "raw",
    [
        "/",
        "/billing/invoices/",
        "/a..b/c.d/e-f_g~h/:@!$&'()*+,;=",
        "/.well-known/x",
        "/billing/./x",
        "/billing/../x",
        "/billing//x",
        "/billing/x%20y",
        "/caf\u00e9",
    ],
)
def test_the_plain_path_shortcut_agrees_with_the_full_normalisation(raw):
    # a path the shortcut returns as it is must come out of the full rules unchanged
    from strangler_proxy.domain import _PLAIN_PATH, _normalised

    if _PLAIN_PATH.fullmatch(raw):
        assert _normalised(raw) == raw
    else:
        assert normalise_path(raw) == _normalised(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "/..",
        "/%2e%2e/etc/passwd",
        "/billing%2Finvoices",
        "/billing%2finvoices",
        "/billing%5Cinvoices",
        "/a%00b",
        "/a%0d%0aX-Injected:%201",
        "/bad%zzescape",
        "/%ff%fe",
        "billing",
    ],
)
def test_hostile_paths_are_refused(raw):
    with pytest.raises(BadPath):
        normalise_path(raw)


def test_a_dotted_path_reaches_only_the_route_the_plain_path_reaches():
    table = RouteTable(
        [route("billing", "/billing/**"), route("users", "/users/**", service="users")], 1
    )
    for raw in ("/users/../billing/x", "/users/%2e%2e/billing/x", "//billing/x"):
        assert table.match("GET", normalise_path(raw)).name == "billing"


# --- canary ------------------------------------------------------------------


def test_buckets_are_stable_and_depend_on_the_route():
    assert bucket("billing", "user-1") == bucket("billing", "user-1")
    assert 0 <= bucket("billing", "user-1") < 100
    keys = [f"user-{i}" for i in range(200)]
    assert [bucket("a", k) for k in keys] != [bucket("b", k) for k in keys]


@pytest.mark.parametrize("percent", [1, 10, 25, 50, 90])
def test_the_split_over_ten_thousand_keys_is_within_two_points(percent):
    canary = route(mode="canary", percent=percent)
    to_service = sum(canary.upstream_for(f"user-{i}") == "billing" for i in range(10_000))
    assert abs(to_service / 100 - percent) <= 2


def test_raising_the_percent_never_moves_a_user_back_to_the_monolith():
    keys = [f"user-{i}" for i in range(2_000)]
    previous: set[str] = set()
    for percent in (0, 5, 25, 50, 75, 100):
        canary = route(mode="canary", percent=percent)
        on_service = {k for k in keys if canary.upstream_for(k) == "billing"}
        assert previous <= on_service
        previous = on_service
    assert previous == set(keys)


def test_modes_pick_the_upstream():
    assert route(mode="monolith").upstream_for("k") == "monolith"
    assert route(mode="shadow").upstream_for("k") == "monolith"
    assert route(mode="service").upstream_for("k") == "billing"
    assert route(mode="canary", percent=0).upstream_for("k") == "monolith"


# --- comparison --------------------------------------------------------------


def test_volatile_fields_are_ignored_at_any_depth():
    left = b'{"id": "1", "total": 5, "items": [{"id": 1, "created_at": "x", "q": 1}]}'
    right = b'{"id": "2", "total": 5, "items": [{"id": 2, "created_at": "y", "q": 1}]}'
    assert compare(200, left, 200, right).equal


def test_differences_are_listed_with_their_path():
    result = compare(200, b'{"a": {"b": 1}, "c": [1, 2]}', 201, b'{"a": {"b": 2}, "c": [1]}')

    assert not result.equal
    assert "status: 200 != 201" in result.diff
    assert "$.a.b: 1 != 2" in result.diff
    assert "$.c: 2 items != 1 items" in result.diff


def test_ignore_rules_are_configurable_and_non_json_bodies_compare_as_bytes():
    assert compare(200, b'{"v": 1}', 200, b'{"v": 2}', ignore=["v"]).equal
    assert not compare(200, b"<html>a", 200, b"<html>b").equal


# --- demotion ----------------------------------------------------------------

POLICY = DemotionPolicy(error_rate=0.5, mismatch_rate=0.2, min_requests=10)


def test_a_canary_failing_above_the_threshold_is_demoted_with_a_reason():
    reason = demotion_reason(
        route(mode="canary", percent=25),
        service_requests=20,
        service_errors=12,
        shadows=0,
        mismatches=0,
        policy=POLICY,
    )
    assert reason == "auto-demotion: 5xx rate 0.60 over 20 requests"


@pytest.mark.parametrize(
    ("mode", "requests", "errors"),
    [("canary", 9, 9), ("service", 20, 9), ("monolith", 100, 100)],
)
def test_no_demotion_below_the_minimum_or_the_threshold_or_on_the_monolith(mode, requests, errors):
    assert (
        demotion_reason(
            route(mode=mode),
            service_requests=requests,
            service_errors=errors,
            shadows=0,
            mismatches=0,
            policy=POLICY,
        )
        is None
    )


def test_a_shadow_with_too_many_mismatches_is_demoted():
    reason = demotion_reason(
        route(mode="shadow"),
        service_requests=0,
        service_errors=0,
        shadows=10,
        mismatches=3,
        policy=POLICY,
    )
    assert reason == "auto-demotion: shadow mismatch rate 0.30 over 10 requests"


# --- breaker -----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_opens_after_failures_in_a_row_and_half_opens_after_the_cooldown():
    clock = Clock()
    breaker = Breaker(threshold=3, cooldown=5, clock=clock)
    for _ in range(3):
        assert breaker.allow()
        breaker.failed()

    assert breaker.state == "open"
    assert not breaker.allow()
    assert breaker.retry_after() == 5

    clock.now += 5
    assert breaker.state == "half_open"
    assert breaker.allow()  # one trial request...
    assert not breaker.allow()  # ...and only one
    breaker.failed()
    assert breaker.state == "open"

    clock.now += 5
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state == "closed"
    assert breaker.allow()


def test_a_success_resets_the_count_of_failures():
    breaker = Breaker(threshold=2, cooldown=5, clock=Clock())
    breaker.failed()
    breaker.succeeded()
    breaker.failed()
    assert breaker.state == "closed"


def test_only_safe_reads_of_routes_without_data_fall_back_to_the_monolith() -> None:
    assert route("plain", "/p/**").may_fall_back("GET")
    assert not route("plain", "/p/**").may_fall_back("POST")
    assert not route("plain", "/p/**", fallback=False).may_fall_back("GET")
    # the service owns a data route's records: the monolith would refuse them
    assert not route("ledger", "/l/**", data="billing").may_fall_back("GET")
