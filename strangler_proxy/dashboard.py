"""The dashboard at ``/_strangler/``: watch routes, traffic and data move, and
move a route — with the admin API's own rules, through the same store call.

Sign-in takes a team token in a form (never in the URL) and keeps only an
opaque key for the team in a signed, ``HttpOnly``, ``SameSite=Strict``
cookie. Every POST carries the session's CSRF token. Pages are rendered on
the server with Jinja's autoescaping on; the one script only re-fetches the
traffic panel (server-rendered HTML) every ``LIVE_REFRESH_MS``.

CSRF is checked here by hand rather than with Flask-WTF: the dashboard has
four forms, its session already holds the token, and an app-wide CSRF
extension would have to be taught to leave the bearer-token API alone.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import math
import secrets
from typing import TYPE_CHECKING, Any, cast

import marshmallow as ma
from flask import (
    Blueprint,
    Flask,
    Response,
    flash,
    get_flashed_messages,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from servicekit.db import utcnow
from servicekit.errors import Conflict, NotFound, RuleViolated
from strangler_proxy import panels
from strangler_proxy.admin import PREFIX, ChangeSchema, team_for
from strangler_proxy.config import hash_token
from strangler_proxy.domain import MODES, may_change
from strangler_proxy.traffic import LATENCY_BOUNDS_MS

if TYPE_CHECKING:
    from strangler_proxy.bootstrap import Proxy

__all__ = ["init_dashboard"]

logger = logging.getLogger(__name__)

SESSION_COOKIE = "strangler_dashboard"
SESSION_LIFETIME = dt.timedelta(hours=8)
LIVE_REFRESH_MS = 1500
HISTORY_SHOWN = 40
#: The newest mismatches shown side by side on the page; each route's own
#: page shows its latest ``MISMATCHES_PER_ROUTE_PAGE`` so. (Pretty-printing
#: and diffing 50 bodies was most of the page's render time.)
SIDE_BY_SIDE_ON_PAGE = 10
MISMATCHES_PER_ROUTE_PAGE = 5
#: Response headers of every dashboard page: no framing, no inline script,
#: nothing cached (it shows who is signed in).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_MODE_WORDS = {
    "monolith": "monolith",
    "shadow": "shadow (monolith answers, service compared)",
    "canary": "canary",
    "service": "service",
}


def init_dashboard(app: Flask, proxy: Proxy) -> None:
    """Register the dashboard on the admin app and configure its session cookie."""
    if not app.secret_key:
        app.secret_key = _session_secret(proxy.tokens)
    app.config.update(
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_PATH=PREFIX,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
        # the live panel polls every 1.5 s: don't re-send the cookie each time
        SESSION_REFRESH_EACH_REQUEST=False,
    )
    app.register_blueprint(_blueprint(proxy, app.secret_key))


def _session_secret(token_hashes: dict[str, str]) -> str:
    """The same in every worker without another setting: derived from the
    tokens' hashes (secret as the tokens are), so changing a token also ends
    every session."""
    if not token_hashes:
        return secrets.token_hex(32)  # nobody can sign in anyway
    material = "\x00".join(sorted(token_hashes)).encode()
    return hashlib.sha256(b"strangler-dashboard-session\x00" + material).hexdigest()


def _blueprint(proxy: Proxy, secret: str | bytes) -> Blueprint:
    bp = Blueprint(
        "dashboard",
        __name__,
        url_prefix=PREFIX,
        template_folder="templates",
        static_folder="static",
        static_url_path="/dashboard/static",
    )
    key_material = secret.encode() if isinstance(secret, str) else secret

    def key_of(token_hash: str) -> str:
        # The cookie names the token by an opaque key: neither the token nor its hash.
        return hmac.new(key_material, token_hash.encode(), hashlib.sha256).hexdigest()

    team_by_key = {key_of(digest): team for digest, team in proxy.tokens.items()}

    def signed_in_team() -> str | None:
        key = session.get("who")
        return team_by_key.get(key) if isinstance(key, str) else None

    def csrf_token() -> str:
        token = session.get("csrf")
        if not isinstance(token, str) or not token:
            token = secrets.token_urlsafe(32)
            session["csrf"] = token
        return token

    @bp.app_context_processor
    def _template_helpers() -> dict[str, Any]:
        return {"csrf_token": csrf_token}

    bp.add_app_template_filter(_latency, "latency")
    bp.add_app_template_filter(_as_json, "as_json")

    @bp.before_request
    def _check_csrf() -> Response | None:
        if request.method != "POST":
            return None
        sent, expected = request.form.get("csrf_token", ""), session.get("csrf")
        if isinstance(expected, str) and expected and hmac.compare_digest(sent, expected):
            return None
        logger.warning("dashboard: a POST to %s without a valid CSRF token", request.path)
        message = "This form is out of date (or was not sent by this page): reload and try again."
        if signed_in_team() is None:
            return _signin(message, 400)
        return page(signed_in_team() or "", _notice("error", 400, message, reload=True), 400)

    @bp.after_request
    def _headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    def _signin(error: str | None = None, status: int = 200) -> Response:
        return Response(render_template("dashboard/signin.html", error=error), status)

    def page(
        team: str,
        notice: dict[str, Any] | None = None,
        status: int = 200,
        attempt: dict[str, Any] | None = None,
    ) -> Response:
        """The whole dashboard; ``attempt`` is a refused change, shown again in its form."""
        proxy.refresh()
        table = proxy.table
        routes = table.routes
        mover = proxy.data
        moves = sorted({r.data for r in routes if r.data})
        statuses = panels.mover_statuses(mover, moves)
        mismatches: list[dict[str, Any]] = []
        for row in proxy.store.latest_mismatches():
            route = table.by_name.get(row["route"])
            if route is not None:  # else a route since removed from the table
                full = len(mismatches) < SIDE_BY_SIDE_ON_PAGE
                mismatches.append(_mismatch(route, row, side_by_side=full))
        history = panels.history_panel(proxy.store.recent_history(HISTORY_SHOWN))
        notices = [notice] if notice else []
        notices += [
            {"kind": kind, "text": text}
            for kind, text in cast("list[tuple[str, str]]", get_flashed_messages(True))
        ]
        body = render_template(
            "dashboard/index.html",
            team=team,
            table=table,
            routes=[
                {
                    "route": route,
                    "mode_words": _mode_words(route),
                    "gates": panels.route_gates(
                        route.data, statuses, bool(statuses), proxy.data_policy.max_lag
                    ),
                    "may_change": may_change(team, route),
                }
                for route in routes
            ],
            modes=MODES,
            **traffic(),
            refresh_ms=LIVE_REFRESH_MS,
            mismatches=mismatches,
            side_by_side_shown=SIDE_BY_SIDE_ON_PAGE,
            data=[{"move": move, "status": statuses.get(move)} for move in moves],
            # The mover answers from its own process: running means it answered.
            mover_running=bool(statuses),
            history=history,
            notices=notices,
            attempt=attempt or {},
        )
        return Response(body, status)

    def traffic() -> dict[str, Any]:
        """What the traffic panel shows (on the page and in its live refresh)."""
        now = utcnow()
        series = proxy.store.traffic_series(
            now - dt.timedelta(seconds=panels.CHART_SECONDS), panels.CHART_STEP_SECONDS
        )
        latencies = proxy.store.latency_since(now - dt.timedelta(seconds=panels.RECENT_SECONDS))
        routes = proxy.table.routes
        return {
            "traffic": panels.traffic_panel(series, latencies, [r.name for r in routes]),
            "mode_of": {r.name: _mode_words(r, short=True) for r in routes},
            "chart_minutes": panels.CHART_SECONDS // 60,
        }

    @bp.get("/")
    def index() -> Response:
        """The dashboard, or the sign-in form."""
        team = signed_in_team()
        if team is None:
            return _signin()
        return page(team)

    @bp.post("/dashboard/sign-in")
    def sign_in() -> Any:
        team = team_for(proxy.tokens, request.form.get("token", ""))
        if team is None:
            return _signin("That token belongs to no team. Check it and try again.", 401)
        session.clear()
        session.permanent = True
        session["who"] = key_of(hash_token(request.form.get("token", "")))
        session["csrf"] = secrets.token_urlsafe(32)  # a new one: never reuse a pre-sign-in token
        return redirect(url_for("dashboard.index"), 303)

    @bp.post("/dashboard/sign-out")
    def sign_out() -> Any:
        session.clear()
        return redirect(url_for("dashboard.index"), 303)

    @bp.get("/dashboard/traffic")
    def live_traffic() -> Response:
        """The traffic panel alone: the page's script swaps it in every 1.5 s."""
        if signed_in_team() is None:
            return Response("sign in again", 401, mimetype="text/plain")
        return Response(render_template("dashboard/_traffic.html", **traffic()))

    @bp.get("/dashboard/routes/<name>/mismatches")
    def route_mismatches(name: str) -> Response:
        """One route's latest mismatches, each side by side."""
        team = signed_in_team()
        if team is None:
            return _signin()
        proxy.refresh()
        route = proxy.table.by_name.get(name)
        if route is None:
            return page(team, _notice("error", 404, f"There is no route named {name}."), 404)
        rows = proxy.store.mismatches(name, MISMATCHES_PER_ROUTE_PAGE)
        return Response(
            render_template(
                "dashboard/mismatches.html",
                route=route,
                mismatches=[_mismatch(route, row, side_by_side=True) for row in rows],
            )
        )

    @bp.post("/dashboard/routes/<name>/move")
    def move(name: str) -> Any:
        return change(name, dict(request.form), "move")

    @bp.post("/dashboard/routes/<name>/roll-back")
    def roll_back(name: str) -> Any:
        return change(name, {**request.form, "mode": "monolith", "percent": ""}, "rollback")

    def change(name: str, form: dict[str, str], form_name: str) -> Any:
        team = signed_in_team()
        if team is None:
            return _signin("Your session ended: sign in again.", 401)
        form.pop("csrf_token", None)
        tried = {"route": name, "form": form_name, "fields": [], **form}

        def refused(notice: dict[str, Any]) -> Response:
            tried["fields"] = notice.get("fields", [])
            return page(team, notice, notice["status"], attempt=tried)

        if not form.get("percent"):  # an empty field is no percent (the store says if one is due)
            form.pop("percent", None)
        try:
            wanted = ChangeSchema().load(form, unknown=ma.EXCLUDE)
        except ma.ValidationError as invalid:
            return refused(_invalid(name, invalid.normalized_messages()))
        route = proxy.table.by_name.get(name)
        if route is None:
            return refused(_notice("error", 404, f"There is no route named {name}."))
        if not may_change(team, route):
            text = (
                f"You may not move {name}: it belongs to {route.owner}, "
                f"and you are signed in as {team}."
            )
            return refused(_notice("error", 403, text))
        try:
            changed = proxy.store.change(
                name,
                mode=wanted["mode"],
                percent=wanted.get("percent"),
                expected_revision=wanted["revision"],
                actor=team,
                reason=wanted["reason"],
            )
        except Conflict as conflict:  # the revision looked at is not the route's any more
            logger.info("dashboard: %s", conflict.message)
            text = (
                f"Someone moved {name} meanwhile: nothing was changed. The page now shows "
                "the route as it is; look again, then decide."
            )
            return refused(_notice("error", 409, text, reload=True))
        except RuleViolated as violated:
            return refused(_invalid(name, violated.details, violated.message))
        except NotFound:
            return refused(_notice("error", 404, f"There is no route named {name}."))
        proxy.refresh()
        flash(f"Moved {name} to {panels.describe_state(_state(changed))}.", "ok")
        # to the top: the notice says what moved, and the live split is right below it
        return redirect(url_for("dashboard.index"), 303)

    return bp


def _latency(ms: float | None) -> str:
    """A percentile as the bound of its bucket: ``≤ 20 ms``, ``≤ 2 s``, ``> 10 s``."""
    if ms is None:
        return "—"
    if math.isinf(ms):
        return f"> {LATENCY_BOUNDS_MS[-1] // 1000} s"
    return f"≤ {ms / 1000:g} s" if ms >= 1000 else f"≤ {ms:g} ms"


def _as_json(value: Any) -> str:
    """JSON as plain text for autoescaping to make safe (``tojson`` would print
    ``<`` as ``\\u003c``, safe for a script but unreadable on a page)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _mode_words(route: Any, *, short: bool = False) -> str:
    words = route.mode if short else _MODE_WORDS.get(route.mode, route.mode)
    return f"{words} {route.percent}%" if route.mode == "canary" else words


def _mismatch(route: Any, row: dict[str, Any], *, side_by_side: bool) -> dict[str, Any]:
    left: list[panels.Line] | None = None
    right: list[panels.Line] | None = None
    if side_by_side:
        left, right = panels.side_by_side(row["monolith_body"], row["service_body"], route.ignore)
    return {"route": route, "row": row, "left": left, "right": right}


def _state(route: Any) -> dict[str, Any]:
    return {"mode": route.mode, "percent": route.percent}


def _notice(kind: str, status: int, text: str, *, reload: bool = False) -> dict[str, Any]:
    return {"kind": kind, "status": status, "text": text, "reload": reload}


def _invalid(name: str, fields: Any, message: str | None = None) -> dict[str, Any]:
    parts = []
    for field, problems in (fields or {}).items():
        words = "; ".join(str(p) for p in problems) if isinstance(problems, list) else problems
        parts.append(f"{field}: {words}")
    text = f"{name} was not moved. " + (
        "; ".join(parts) if parts else (message or "The change is not valid.")
    )
    return {**_notice("error", 422, text), "fields": sorted((fields or {}).keys())}
