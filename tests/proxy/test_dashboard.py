"""The dashboard in-process: sign-in and its cookie, CSRF, the admin API's rules
(403, 409, 422), escaping, the data panel against a fake data mover, the live
traffic figures, and how long the page takes with 50 routes and 1,000 mismatches."""

from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from strangler_proxy import panels
from strangler_proxy.bootstrap import Proxy
from strangler_proxy.traffic import LATENCY_BOUNDS_MS, Traffic
from tests.proxy.conftest import TOKENS, client_for, set_mode

DASHBOARD = "/_strangler/"
#: The page with 50 routes and 1,000 mismatches must render within this (it takes ~0.1 s).
RENDER_BUDGET_SECONDS = 2.0


class Dashboard:
    """A signed-in (or not) browser-less visitor of the dashboard."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def csrf(self) -> str:
        found = re.search(r'name="csrf_token" value="([^"]+)"', self.client.get(DASHBOARD).text)
        assert found, "no CSRF token on the page"
        return found.group(1)

    def sign_in(self, team: str = "billing-team") -> httpx.Response:
        return self.client.post(
            "/_strangler/dashboard/sign-in", data={"token": TOKENS[team], "csrf_token": self.csrf()}
        )

    def move(self, route: str, **form: Any) -> httpx.Response:
        revision = form.pop("revision", None) or self.revision(route)
        data = {"csrf_token": self.csrf(), "revision": str(revision), **form}
        return self.client.post(f"/_strangler/dashboard/routes/{route}/move", data=data)

    def revision(self, route: str) -> int:
        page = self.client.get(DASHBOARD).text
        card = page[page.index(f'id="route-{route}"') :]
        return int(re.search(r'class="revision">(\d+)<', card).group(1))  # type: ignore[union-attr]


def notice(page: str) -> str:
    found = re.search(r'class="notice[^"]*"[^>]*>\s*<p>(.*?)</p>', page, re.S)
    return found.group(1) if found else ""


@pytest.fixture
def visitor(proxy: Proxy) -> Iterator[Dashboard]:
    with client_for(proxy) as client:
        yield Dashboard(client)


@pytest.fixture
def dashboard(visitor: Dashboard) -> Dashboard:
    assert visitor.sign_in().status_code == 303
    return visitor


# --- signing in -------------------------------------------------------------------


def test_the_dashboard_asks_for_a_token_in_a_posted_form(visitor):
    page = visitor.client.get(DASHBOARD)

    assert page.status_code == 200
    assert 'method="post"' in page.text and 'type="password"' in page.text
    assert "Signed in as" not in page.text
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"


def test_signing_in_sets_an_http_only_strict_cookie_without_the_token(visitor):
    answer = visitor.sign_in()

    assert answer.status_code == 303
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/_strangler" in cookie
    assert TOKENS["billing-team"] not in cookie
    assert "Signed in as <strong>billing-team</strong>" in visitor.client.get(DASHBOARD).text


def test_an_unknown_token_is_refused(visitor):
    answer = visitor.client.post(
        "/_strangler/dashboard/sign-in", data={"token": "guess", "csrf_token": visitor.csrf()}
    )

    assert answer.status_code == 401
    assert "belongs to no team" in answer.text


def test_a_post_without_the_csrf_token_changes_nothing(dashboard, proxy):
    before = proxy.table.by_name["billing"]

    answer = dashboard.client.post(
        "/_strangler/dashboard/routes/billing/move",
        data={"mode": "service", "reason": "forged", "revision": str(before.revision)},
    )

    assert answer.status_code == 400
    assert "out of date" in notice(answer.text)
    proxy.refresh()
    assert proxy.table.by_name["billing"].mode == before.mode


def test_signing_in_without_the_csrf_token_is_refused(visitor):
    answer = visitor.client.post(
        "/_strangler/dashboard/sign-in", data={"token": TOKENS["billing-team"]}
    )

    assert answer.status_code == 400


# --- moving, with the admin API's rules --------------------------------------------------


def test_a_move_is_audited_under_the_signed_in_team(dashboard, proxy):
    answer = dashboard.move("billing", mode="canary", percent="25", reason="first quarter")

    assert answer.status_code == 303
    proxy.refresh()
    assert (proxy.table.by_name["billing"].mode, proxy.table.by_name["billing"].percent) == (
        "canary",
        25,
    )
    newest = proxy.store.history("billing", 1)[0]
    assert (newest["actor"], newest["reason"]) == ("billing-team", "first quarter")
    assert "Moved billing to canary 25%." in dashboard.client.get(DASHBOARD).text


def test_a_canary_without_a_percent_is_a_422_naming_the_field(dashboard):
    answer = dashboard.move("billing", mode="canary", percent="", reason="oops, no percent")

    assert answer.status_code == 422
    assert "percent" in notice(answer.text)
    form = answer.text[answer.text.index('action="/_strangler/dashboard/routes/billing/move"') :]
    form = form[: form.index("</form>")]
    assert '<option value="canary" selected>' in form  # what was typed comes back
    assert 'value="oops, no percent"' in form
    assert re.search(r'name="percent"[^>]*aria-invalid="true"', form)


def test_a_move_without_a_reason_is_a_422_naming_the_field(dashboard):
    answer = dashboard.move("billing", mode="service", reason="")

    assert answer.status_code == 422
    assert "reason" in notice(answer.text)


def test_another_teams_route_is_a_403(dashboard, proxy):
    answer = dashboard.move("users", mode="service", reason="not ours")

    assert answer.status_code == 403
    assert "belongs to users-team" in notice(answer.text)
    assert proxy.store.load().by_name["users"].mode == "monolith"


def test_a_stale_revision_is_a_409_that_shows_the_route_as_it_is(dashboard, proxy):
    seen = dashboard.revision("billing")
    with client_for(proxy) as api:
        assert set_mode(api, "billing", "shadow").status_code == 200

    answer = dashboard.move("billing", mode="service", reason="late", revision=seen)

    assert answer.status_code == 409
    assert "Someone moved billing meanwhile" in notice(answer.text)
    assert "Reload the page" in answer.text
    assert proxy.store.load().by_name["billing"].mode == "shadow"


def test_roll_back_is_on_every_route_even_on_the_monolith(dashboard, proxy):
    page = dashboard.client.get(DASHBOARD).text

    assert page.count("Roll back to monolith") == len(proxy.table.routes)


# --- escaping and history -------------------------------------------------------


def test_what_upstreams_and_people_sent_is_escaped(dashboard, proxy):
    proxy.store.record_mismatch(
        route="differs",
        request_id="r1",
        method="GET",
        path="/differs/<script>alert(1)</script>",
        monolith_status=200,
        service_status=500,
        monolith_body='{"x": "<script>alert(2)</script>"}',
        service_body="<img src=x onerror=alert(3)>",
        diff=["$.x: '<b>'"],
    )
    dashboard.move("differs", mode="shadow", reason="<script>alert(4)</script>")

    page = dashboard.client.get(DASHBOARD).text

    assert "<script>alert" not in page and "<img src=x" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;script&gt;alert(4)&lt;/script&gt;" in page


def test_a_routes_own_page_shows_its_latest_mismatches_side_by_side(dashboard, proxy):
    for total in (11, 12):
        proxy.store.record_mismatch(
            route="differs",
            request_id=f"r{total}",
            method="GET",
            path="/differs/really",
            monolith_status=200,
            service_status=200,
            monolith_body='{"id": 1, "total": 10}',
            service_body=f'{{"id": 2, "total": {total}}}',
            diff=[f"$.total: 10 != {total}"],
        )

    page = dashboard.client.get("/_strangler/dashboard/routes/differs/mismatches").text

    assert page.count('class="sides"') == 2
    assert '<span class="differs">  &#34;total&#34;: 12</span>' in page
    assert '<span class="ignored">  &#34;id&#34;: 1,</span>' in page


def test_auto_demotions_stand_out_in_the_history(dashboard, proxy):
    route = proxy.table.by_name["echo"]
    proxy.store.change(
        "echo",
        mode="monolith",
        percent=None,
        expected_revision=route.revision,
        actor="strangler-proxy",
        reason="auto-demotion: 5xx rate 0.92 over 25 requests",
    )

    page = dashboard.client.get(DASHBOARD).text

    row = re.search(r'<tr class="demotion">(.*?)</tr>', page, re.S)
    assert row and "5xx rate 0.92" in row.group(1) and "auto-demotion" in row.group(1)


# --- the data panel ---------------------------------------------------------------


class FakeMover:
    """Stands in for the data mover's client (strangler_proxy/datamoves.py)."""

    def __init__(self, status: dict[str, Any] | None = None, fails: bool = False) -> None:
        self._status = status
        self._fails = fails

    def status(self, move: str) -> dict[str, Any] | None:
        if self._fails:
            raise ConnectionError("the mover is down")
        return self._status if move == "billing" else None

    def close(self) -> None:
        pass


def moving(proxy: Proxy, route: str, move: str) -> None:
    # Routes gain a ``data`` attribute with the data mover; until then, give one by hand.
    object.__setattr__(proxy.table.by_name[route], "data", move)


def test_without_a_mover_the_data_panel_says_so(dashboard):
    page = dashboard.client.get(DASHBOARD).text

    assert "The data mover is not running." in page
    assert "unknown: the route names no data move" in page


def test_the_data_panel_shows_the_backfill_and_a_dirty_verdict(dashboard, proxy):
    proxy.data = FakeMover(  # type: ignore[attr-defined]
        {
            "move": "billing",
            "phase": "streaming",
            "rows_copied": 1500,
            "rows_total": 2000,
            "lag_seconds": 0.4,
            "verdict": {
                "clean": False,
                "at": "2026-11-29T00:00:00Z",
                "rows_checked": 2000,
                "diverged": [
                    {
                        "table": "billing_invoices",
                        "key": "inv-7",
                        "side": "service",
                        "monolith": {"total": 10},
                        "service": {"total": "<b>11</b>"},
                    }
                ],
            },
        }
    )
    moving(proxy, "billing", "billing")

    page = dashboard.client.get(DASHBOARD).text

    assert '<progress max="2000" value="1500">' in page
    assert "1,500 of 2,000 rows" in page and "0.4 s" in page
    assert "1 rows differ" in page and "inv-7" in page
    assert "{&#34;total&#34;: &#34;&lt;b&gt;11&lt;/b&gt;&#34;}" in page  # readable, and inert
    assert "yes: streaming, 0.4 s behind" in page
    assert "no: 1 of 2,000 rows differ" in page


def test_a_failing_mover_counts_as_not_running(dashboard, proxy):
    proxy.data = FakeMover(fails=True)  # type: ignore[attr-defined]
    moving(proxy, "billing", "billing")

    page = dashboard.client.get(DASHBOARD).text

    assert "The data mover is not running." in page
    assert "unknown: the data mover is not running" in page


def test_gates_in_plain_words():
    backfill = {"phase": "backfill", "rows_copied": 10, "rows_total": 40, "verdict": None}
    clean = {
        "phase": "streaming",
        "lag_seconds": 30.0,
        "verdict": {"clean": True, "at": "t", "rows_checked": 40, "diverged": []},
    }

    assert [g.answer for g in panels.route_gates("m", {"m": backfill}, True)] == [
        "no: still copying (10 of 40 rows)",
        "unknown: not verified yet",
        "unknown",
    ]
    assert [g.state for g in panels.route_gates("m", {"m": clean}, True)] == [
        "no",
        "yes",
        "unknown",
    ]


# --- live traffic ------------------------------------------------------------------


def test_traffic_counts_the_upstream_and_the_latency():
    traffic = Traffic()
    traffic.request("r", error=False, upstream="monolith", seconds=0.003)
    traffic.request("r", error=True, upstream="billing", seconds=0.3)
    traffic.request("r", error=False)  # the old call still works

    counts = traffic.take()["r"]

    assert (counts["requests"], counts["errors"]) == (3, 1)
    assert (counts["via_monolith"], counts["via_service"]) == (1, 1)
    assert counts["latency"][LATENCY_BOUNDS_MS.index(5)] == 1
    assert counts["latency"][LATENCY_BOUNDS_MS.index(500)] == 1


def test_percentiles_are_bucket_bounds():
    buckets = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    buckets[2], buckets[6], buckets[-1] = 98, 1, 1

    assert panels.percentile(buckets, 0.5) == 5
    assert panels.percentile(buckets, 0.99) == 100
    assert panels.percentile(buckets, 1.0) == math.inf
    assert panels.percentile([0] * len(buckets), 0.5) is None


def test_the_split_is_over_the_last_ten_seconds():
    last = panels.CHART_SECONDS // panels.CHART_STEP_SECONDS - 1

    def step(index: int, monolith: int, service: int) -> dict[str, Any]:
        return {
            "route": "r",
            "step": index,
            "requests": monolith + service,
            "errors": 0,
            "via_monolith": monolith,
            "via_service": service,
            "shadows": 0,
        }

    (shown,) = panels.traffic_panel([step(0, 50, 0), step(last, 30, 10)], [], ["r"])

    assert shown.rate == 4.0 and shown.service_share == 0.25
    assert max(shown.total) == 50 / panels.CHART_STEP_SECONDS


def test_the_live_panel_shows_requests_through_the_proxy(dashboard, proxy):
    with client_for(proxy) as client:
        set_mode(client, "echo", "canary", 50)
        for n in range(40):
            assert client.get("/echo/x", headers={"X-User-ID": f"u{n}"}).status_code == 200
    proxy.control.flush()

    panel = dashboard.client.get("/_strangler/dashboard/traffic")

    row = re.search(
        r'<tr id="traffic-echo" data-service-share="([\d.]+)" data-rate="([\d.]+)"', panel.text
    )
    assert row, panel.text[:500]
    assert float(row.group(2)) == 4.0  # 40 requests over 10 s
    assert 0.2 < float(row.group(1)) < 0.8
    assert "≤" in panel.text  # a p50 was measured


def test_the_live_panel_needs_a_session(visitor):
    assert visitor.client.get("/_strangler/dashboard/traffic").status_code == 401


# --- how long the page takes ---------------------------------------------------------


def test_the_page_renders_50_routes_and_1000_mismatches_in_time(make_proxy, tmp_path: Path):
    routes = tmp_path / "routes.toml"
    routes.write_text(
        "".join(
            f'[[route]]\nname = "r{n:02d}"\npattern = "/r{n:02d}/**"\n'
            f'owner = "billing-team"\nservice = "billing"\nmode = "shadow"\n\n'
            for n in range(50)
        )
    )
    proxy = make_proxy(ROUTES_FILE=str(routes))
    body = '{"items": [' + ",".join(f'{{"n": {n}, "total": 10}}' for n in range(40)) + "]}"
    for n in range(1000):
        proxy.store.record_mismatch(
            route=f"r{n % 50:02d}",
            request_id=f"req-{n}",
            method="GET",
            path=f"/r{n % 50:02d}/{n}",
            monolith_status=200,
            service_status=200,
            monolith_body=body,
            service_body=body.replace('"total": 10', '"total": 11', 3),
            diff=["$.items[0].total: 10 != 11"],
        )
    with client_for(proxy) as client:
        visitor = Dashboard(client)
        visitor.sign_in()
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            page = client.get(DASHBOARD)
            timings.append(time.perf_counter() - started)
            assert page.status_code == 200

    median = statistics.median(timings)
    print(f"\ndashboard page, 50 routes and 1,000 mismatches: median {median * 1000:.0f} ms")
    assert page.text.count('class="route ') == 50
    assert page.text.count('class="mismatch"') == 50
    assert page.text.count('class="sides"') == 10  # the rest: on each route's own page
    assert median < RENDER_BUDGET_SECONDS


def test_a_completed_moves_gates_say_so() -> None:
    completed = {"phase": "completed", "completed": {"at": "2026-11-29T03:41:07+00:00"}}

    gates = panels.route_gates("billing", {"billing": completed}, True)

    assert {g.state for g in gates} == {"yes"}
    assert gates[0].answer == (
        "completed 2026-11-29 03:41:07 UTC: the service owns billing for good, no sync"
    )
