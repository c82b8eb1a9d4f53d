"""The dashboard in a real browser: Debian's chromium, driven by Playwright,
against the proxy under gunicorn (two workers) and two real upstreams.

Sign in, move a route and see the listing and the history change, watch the
split move under traffic, meet the 403 and the 409, see a hostile mismatch
shown as text, sign out. Each step leaves a screenshot in var/screenshots/
(git-ignored; the tutorial's images are copied from there).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from demo.loadgen import Load
from servicekit.db import create_engine
from strangler_proxy.repository import RouteStore
from tests.proxy.conftest import TOKENS, Upstreams, serve_proxy, set_mode
from tests.support.databases import migrate
from tests.support.processes import ROOT, Server, poll

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-background-networking"]
SCREENSHOTS = ROOT / "var" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
#: Playwright waits (by polling) up to this long for what a step expects.
STEP_TIMEOUT_MS = 10_000


@dataclasses.dataclass
class Served:
    proxy: Server
    database_url: str

    @property
    def dashboard(self) -> str:
        return self.proxy.url + "/_strangler/"

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.proxy.url, timeout=5.0)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing: CI must run the browser tests (make browser)")
        pytest.skip(f"{CHROMIUM} is missing: `make browser` installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, upstreams: Upstreams) -> Iterator[Served]:
    log_dir = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{log_dir}/proxy.db"
    migrate("proxy", url)
    proxy = serve_proxy(log_dir, url, upstreams.monolith.url, upstreams.billing.url)
    yield Served(proxy, url)
    proxy.stop()


@pytest.fixture
def browser_page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.set_default_timeout(STEP_TIMEOUT_MS)
    yield page
    context.close()


def screenshot(page: Any, name: str, *, full_page: bool = False) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)


def sign_in(page: Any, served: Served, team: str = "billing-team") -> None:
    page.goto(served.dashboard)
    page.get_by_label("Team token").fill(TOKENS[team])
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text(f"Signed in as {team}").wait_for()
    # The text is there before the stylesheet may be: what a test measures
    # or photographs next is the styled page (an unstyled one is 432 px wide
    # at phone width).
    page.wait_for_load_state("load")


def move(page: Any, route: str, mode: str, percent: int | None, reason: str) -> None:
    card = page.locator(f"#route-{route}")
    card.locator("summary").click()
    form = card.locator("form.move")
    form.locator("select[name=mode]").select_option(mode)
    form.locator("input[name=percent]").fill("" if percent is None else str(percent))
    form.locator("input[name=reason]").fill(reason)
    form.get_by_role("button").click()


def alert(page: Any) -> str:
    return page.get_by_role("alert").inner_text()


def test_sign_in_holds_the_team_in_a_strict_http_only_cookie(browser_page, served):
    from playwright.sync_api import expect

    browser_page.goto(served.dashboard)
    screenshot(browser_page, "01-sign-in")
    browser_page.get_by_label("Team token").fill("not-a-token")
    browser_page.get_by_role("button", name="Sign in").click()
    expect(browser_page.get_by_role("alert")).to_contain_text("belongs to no team")

    sign_in(browser_page, served)

    assert "token" not in browser_page.url
    (cookie,) = [c for c in browser_page.context.cookies() if c["name"] == "strangler_dashboard"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/_strangler"
    assert TOKENS["billing-team"] not in cookie["value"]
    expect(browser_page.locator("#routes article.route")).to_have_count(5)
    screenshot(browser_page, "02-routes")


def test_moving_a_route_to_canary_changes_the_listing_and_the_history(browser_page, served):
    from playwright.sync_api import expect

    sign_in(browser_page, served)
    card = browser_page.locator("#route-billing")
    before = int(card.locator(".revision").inner_text())

    move(browser_page, "billing", "canary", 25, "first quarter of users")

    expect(browser_page.get_by_role("status")).to_contain_text("Moved billing to canary 25%")
    expect(card.locator(".mode")).to_have_text("canary 25%")
    assert int(card.locator(".revision").inner_text()) > before
    newest = browser_page.locator("#history tbody tr").first
    expect(newest).to_contain_text("billing")
    expect(newest).to_contain_text("monolith → canary 25%")
    expect(newest).to_contain_text("first quarter of users")
    screenshot(browser_page, "03-moved-to-canary")
    browser_page.locator("#history").scroll_into_view_if_needed()
    screenshot(browser_page, "04-history")


def test_the_split_moves_while_traffic_flows(browser_page, served):
    sign_in(browser_page, served)
    row = "#traffic-echo"

    def share() -> float:
        return float(browser_page.get_attribute(row, "data-service-share") or 0)

    def rate() -> float:
        return float(browser_page.get_attribute(row, "data-rate") or 0)

    with Load(served.proxy.url, ["/echo/watch"], rate=30, seconds=60, users=200):
        # the page is not reloaded: its script swaps in the live panel
        poll(lambda: rate() > 0, timeout=10, interval=0.2, message="no traffic shown")
        assert share() == 0.0  # echo is on the monolith
        move(browser_page, "echo", "canary", 50, "half of the users")
        poll(lambda: share() > 0.2, timeout=10, interval=0.2, message="the split did not move")
    words = browser_page.locator(f"{row} .split-words").inner_text()
    assert "service" in words and "service 0%" not in words
    browser_page.locator("#traffic").scroll_into_view_if_needed()
    screenshot(browser_page, "05-traffic-split")


def test_another_teams_route_shows_the_403_plainly(browser_page, served):
    sign_in(browser_page, served)

    move(browser_page, "users", "canary", 10, "not ours")

    message = alert(browser_page)
    assert "You may not move users: it belongs to users-team" in message
    assert "signed in as billing-team" in message
    screenshot(browser_page, "06-forbidden")


def test_a_stale_revision_shows_someone_moved_it_meanwhile(browser_page, served):
    from playwright.sync_api import expect

    sign_in(browser_page, served)
    with served.api() as api:  # someone else moves it while our page is open
        assert set_mode(api, "differs", "shadow", reason="elsewhere").status_code == 200
        current = api.get(
            "/_strangler/routes/differs",
            headers={"Authorization": f"Bearer {TOKENS['admin']}"},
        ).json()["revision"]

    move(browser_page, "differs", "canary", 5, "based on what I saw")

    assert "Someone moved differs meanwhile" in alert(browser_page)
    card = browser_page.locator("#route-differs")
    expect(card.locator(".revision")).to_have_text(str(current))
    expect(card.locator(".mode")).to_contain_text("shadow")
    screenshot(browser_page, "07-conflict")
    browser_page.get_by_role("link", name="Reload the page").click()
    expect(browser_page.get_by_role("alert")).to_have_count(0)


def test_a_hostile_mismatch_is_shown_as_text(browser_page, served):
    hostile = '{"note": "<script>window.pwned = true</script>", "total": 10}'
    engine = create_engine(served.database_url)
    try:
        RouteStore(engine).record_mismatch(
            route="slow",
            request_id="req-hostile",
            method="GET",
            path="/slow?q=<img src=x onerror=window.pwned=true>",
            monolith_status=200,
            service_status=200,
            monolith_body=hostile,
            service_body='{"note": "fine", "total": 11}',
            diff=["$.note: '<script>' != 'fine'", "$.total: 10 != 11"],
        )
    finally:
        engine.dispose()
    sign_in(browser_page, served)

    panel = browser_page.locator("#mismatch-slow")
    if panel.get_attribute("open") is None:
        panel.locator("summary").click()

    assert "<script>window.pwned = true</script>" in panel.locator("pre").first.inner_text()
    assert "<img src=x onerror" in panel.locator("summary").inner_text()
    assert panel.locator("script, img").count() == 0
    assert browser_page.evaluate("window.pwned === undefined")
    panel.scroll_into_view_if_needed()
    screenshot(browser_page, "08-mismatch-as-text")


def test_the_page_reads_at_phone_width(chromium, served):
    context = chromium.new_context(viewport=PHONE)
    page = context.new_page()
    page.set_default_timeout(STEP_TIMEOUT_MS)
    try:
        sign_in(page, served)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the page scrolls sideways at phone width: {width}px"
        assert page.get_by_role("button", name="Roll back to monolith").first.is_visible()
        screenshot(page, "09-phone")
    finally:
        context.close()


def test_signing_out_ends_the_session(browser_page, served):
    from playwright.sync_api import expect

    sign_in(browser_page, served)

    browser_page.get_by_role("button", name="Sign out").click()

    expect(browser_page.get_by_label("Team token")).to_be_visible()
    status = browser_page.evaluate(
        "fetch('/_strangler/dashboard/traffic', {credentials: 'same-origin'}).then(r => r.status)"
    )
    assert status == 401
    screenshot(browser_page, "10-signed-out")


def test_roll_back_to_monolith_by_keyboard_alone(browser_page, served):
    from playwright.sync_api import expect

    sign_in(browser_page, served)
    with served.api() as api:
        assert set_mode(api, "echo", "service", reason="all of it").status_code == 200
    browser_page.reload()
    card = browser_page.locator("#route-echo")

    card.locator("form.rollback input[name=reason]").focus()
    browser_page.keyboard.type("errors on the service")
    browser_page.keyboard.press("Enter")

    expect(browser_page.get_by_role("status")).to_contain_text("Moved echo to monolith")
    expect(card.locator(".mode")).to_have_text("monolith")
