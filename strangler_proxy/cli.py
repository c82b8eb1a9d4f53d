"""``strangler``: move routes between the monolith and a service from a shell.

It talks to the proxy's admin API (``STRANGLER_URL``, default the proxy on
this machine at ``PROXY_PORT``, 8000) with the bearer token in ``STRANGLER_TOKEN``. Every
refusal (401, 403, 409, 422, ...) prints the proxy's message and exits 1.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from typing import Any

import click
import httpx

from servicekit.ports import local_url

__all__ = ["main"]

DEFAULT_TIMEOUT = 5.0
#: How often a waiting command asks the proxy again.
POLL_SECONDS = 0.5
API = "/_strangler"


class Refused(click.ClickException):
    exit_code = 1

    def __init__(self, message: str, status: int | None = None, fields: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.fields = fields or {}


class Admin:
    def __init__(self, url: str, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=url + API, headers=headers, timeout=DEFAULT_TIMEOUT)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise Refused(f"cannot reach the proxy at {self.client.base_url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                body = response.json()
                message = body.get("message", response.text)
                fields = body.get("fields")
            except ValueError:
                message, fields = response.text, None
            detail = _field_lines(message, fields)
            raise Refused(
                f"refused ({response.status_code}): {message}{detail}",
                response.status_code,
                fields if isinstance(fields, dict) else None,
            )
        return response.json()


def _field_lines(message: str, fields: Any, prefix: str = "") -> str:
    """What a refusal says per field, one line each (``json.percent: ...``) —
    except what the message already says (the data gate's reasons are in both)."""
    if not isinstance(fields, dict):
        return f" {fields}" if fields else ""
    lines = []
    for name, said in fields.items():
        if isinstance(said, dict):
            lines.append(_field_lines(message, said, f"{prefix}{name}."))
            continue
        values = said if isinstance(said, list) else [said]
        if not all(str(value) in message for value in values):
            lines.append(f"\n  {prefix}{name}: {'; '.join(str(value) for value in values)}")
    return "".join(lines)


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


@click.group()
@click.option(
    "--url",
    envvar="STRANGLER_URL",
    default=lambda: local_url("proxy"),
    show_default="the proxy at PROXY_PORT",
    help="The proxy (env STRANGLER_URL).",
)
@click.option("--token", envvar="STRANGLER_TOKEN", help="Bearer token (env STRANGLER_TOKEN).")
@click.pass_context
def cli(context: click.Context, url: str, token: str | None) -> None:
    """Move routes between the monolith and a service, a route at a time."""
    context.obj = Admin(url.rstrip("/"), token)


@cli.command("routes")
@click.pass_obj
def routes(admin: Admin) -> None:
    """List routes: mode, percent, live request rate and error rate."""
    listing = admin.call("GET", "/routes")
    rows = [
        [
            r["name"],
            r["mode"],
            _share(r),
            r["pattern"],
            r["owner"],
            f"{r['rate']:.1f}/s",
            f"{r['error_rate'] * 100:.1f}%",
            _data_column(r),
            r["revision"],
        ]
        for r in listing["routes"]
    ]
    click.echo(
        table(rows, ["ROUTE", "MODE", "PERCENT", "PATTERN", "OWNER", "RATE", "5XX", "DATA", "REV"])
    )
    gated = {r["name"]: r["gate"] for r in listing["routes"] if r.get("gate")}
    for name, reasons in gated.items():
        click.echo(f"\n{name} may not go to canary or service yet:")
        for reason in reasons:
            click.echo(f"  - {reason}")
    click.echo(f"\ntable revision {listing['revision']}")


@cli.command("set")
@click.argument("route")
@click.argument("mode", type=click.Choice(["monolith", "shadow", "canary", "service"]))
@click.argument("percent", type=int, required=False)
@click.option("--reason", "-r", required=True, help="Why (kept in the history).")
@click.option("--revision", type=int, help="The route revision you looked at (default: now).")
@click.option(
    "--shadow-sample",
    type=click.FloatRange(0.0, 1.0),
    help="Shadow this share of the route's safe requests (default: the proxy's SHADOW_SAMPLE).",
)
@click.option(
    "--wait",
    "wait_seconds",
    type=float,
    default=0.0,
    help="While the data gate refuses (copy lagging, say), ask again for up to this many seconds.",
)
@click.pass_obj
def set_mode(
    admin: Admin,
    route: str,
    mode: str,
    percent: int | None,
    reason: str,
    revision: int | None,
    shadow_sample: float | None,
    wait_seconds: float,
) -> None:
    """Set ROUTE to MODE (canary takes a PERCENT)."""
    # Without --revision, "the route as it is now": a change that lands between
    # our read and our write (an auto-demotion, say) is named, and moved from.
    looked = revision is not None
    if revision is None:
        revision = admin.call("GET", f"/routes/{route}")["revision"]
    body: dict[str, Any] = {"mode": mode, "reason": reason, "revision": revision}
    if percent is not None:
        body["percent"] = percent
    if shadow_sample is not None:
        body["shadow_sample"] = shadow_sample
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            changed = admin.call("PATCH", f"/routes/{route}", json=body)
            break
        except Refused as refusal:
            moved_meanwhile = refusal.fields.get("current_revision")
            if moved_meanwhile is not None and not looked and moved_meanwhile != body["revision"]:
                click.echo(f"the route changed meanwhile (revision {moved_meanwhile})", err=True)
                body["revision"] = moved_meanwhile
                continue
            # Only the data gate's refusals can clear by themselves (a lag
            # falls, a backfill ends); every other refusal is final.
            if "gate" not in refusal.fields or time.monotonic() >= deadline:
                raise
            click.echo(f"waiting: {'; '.join(refusal.fields['gate'])}", err=True)
            time.sleep(POLL_SECONDS)
    shown = f"canary {changed['percent']}%" if changed["mode"] == "canary" else changed["mode"]
    click.echo(f"{route}: {shown} (revision {changed['revision']})")


@cli.command("history")
@click.argument("route")
@click.option("--limit", default=20, show_default=True)
@click.pass_obj
def history(admin: Admin, route: str, limit: int) -> None:
    """Who moved ROUTE, when, from what to what, and why."""
    entries = admin.call("GET", f"/routes/{route}/history", params={"limit": limit})
    rows = [
        [
            e["revision"],
            e["at"][:19].replace("T", " "),
            e["actor"],
            _mode(e["before"]),
            _mode(e["after"]),
            e["reason"],
        ]
        for e in entries
    ]
    click.echo(table(rows, ["REV", "AT (UTC)", "WHO", "BEFORE", "AFTER", "REASON"]))


@cli.command("mismatches")
@click.argument("route")
@click.option("--limit", default=10, show_default=True)
@click.pass_obj
def mismatches(admin: Admin, route: str, limit: int) -> None:
    """Shadow mismatches of ROUTE, with their diffs."""
    found = admin.call("GET", f"/routes/{route}/mismatches", params={"limit": limit})
    if not found:
        click.echo(f"no shadow mismatches for {route}")
    for m in found:
        click.echo(
            f"{m['at'][:19]} {m['method']} {m['path']} rid={m['request_id']} "
            f"monolith={m['monolith_status']} service={m['service_status']}"
        )
        for line in m["diff"]:
            click.echo(f"    {line}")


# --- data: the records a route serves ---------------------------------------------

#: How long `strangler data verify` waits for a verdict before giving up.
DEFAULT_VERIFY_WAIT = 600.0
BAR_WIDTH = 30


@cli.group("data")
def data() -> None:
    """Copy a route's data to the service, keep it current, and prove it."""


@data.command("start")
@click.argument("move")
@click.option(
    "--replace", is_flag=True, help="Replace rows the service holds that it did not copy."
)
@click.option("--wait", is_flag=True, help="Follow the backfill until it is complete.")
@click.pass_obj
def data_start(admin: Admin, move: str, replace: bool, wait: bool) -> None:
    """Begin copying MOVE's tables and capturing every change (resumes if begun)."""
    status = admin.call("POST", f"/data/{move}/start", json={"replace": replace})
    click.echo(f"{move}: {status['phase']}, capture installed")
    while wait and status["phase"] == "backfill":
        click.echo("\r" + _progress(status), nl=False)
        time.sleep(POLL_SECONDS)
        status = admin.call("GET", f"/data/{move}")
    if wait:
        click.echo("\r" + _progress(status))


@data.command("stop")
@click.argument("move")
@click.pass_obj
def data_stop(admin: Admin, move: str) -> None:
    """Stop capturing MOVE's changes: the copy no longer follows the monolith."""
    status = admin.call("POST", f"/data/{move}/stop")
    click.echo(f"{move}: {status['phase']}, capture removed")


@data.command("complete")
@click.argument("move")
@click.pass_obj
def data_complete(admin: Admin, move: str) -> None:
    """End MOVE's journey: the service owns its records for good, the sync stops and
    the monolith's tables are archived. Refused, with what to do, until it is safe."""
    status = admin.call("POST", f"/data/{move}/complete")
    click.echo(_describe(status))
    archive_error = (status.get("completed") or {}).get("archive_error")
    if archive_error:
        raise Refused(
            f"{move} is completed but the monolith's tables are not archived: {archive_error}; "
            f"run `strangler data complete {move}` again once that is fixed"
        )


@data.command("status")
@click.argument("move", required=False)
@click.pass_obj
def data_status(admin: Admin, move: str | None) -> None:
    """Phase, copy progress, lag and the last verification of each move."""
    moves = [admin.call("GET", f"/data/{move}")] if move else admin.call("GET", "/data")
    for status in moves:
        click.echo(_describe(status))


@data.command("verify")
@click.argument("move")
@click.option("--timeout", default=DEFAULT_VERIFY_WAIT, show_default=True, help="Seconds to wait.")
@click.pass_obj
def data_verify(admin: Admin, move: str, timeout: float) -> None:
    """Compare both databases row for row; exit 1 and print the rows if they differ."""
    requested = admin.call("POST", f"/data/{move}/verify")["requested_at"]
    deadline = time.monotonic() + timeout
    while True:
        status = admin.call("GET", f"/data/{move}")
        verdict = status.get("verdict")
        if verdict and not status["verifying"] and _epoch(verdict["at"]) >= requested:
            break
        if time.monotonic() > deadline:
            raise Refused(f"no verdict for {move} within {timeout:g} s")
        time.sleep(POLL_SECONDS)
    tables = ", ".join(f"{name} {rows:,}" for name, rows in verdict.get("tables", {}).items())
    click.echo(
        f"{move}: {verdict['rows_checked']:,} rows compared "
        f"in {verdict.get('seconds', 0)} s ({tables})"
    )
    if verdict.get("error"):
        raise Refused(f"verification failed: {verdict['error']}")
    listed = verdict["diverged"] + verdict["unsettled"]
    for row in listed:
        sides = [key for key in row if key not in ("table", "key", "side")]
        click.echo(f"  DIVERGED {row['table']} {row['key']}: {row['side']}")
        for side in sides:
            click.echo(f"    {side}: {json.dumps(row[side], sort_keys=True)}")
    if not verdict["clean"]:
        count = verdict["diverged_count"] + verdict["unsettled_count"]
        if count > len(listed):
            click.echo(f"  ... and {count - len(listed)} more")
        raise Refused(f"{move}: NOT clean, {count} rows differ")
    click.echo(f"{move}: clean")


def _epoch(moment: str) -> float:
    return dt.datetime.fromisoformat(moment).timestamp()


def _progress(status: dict[str, Any]) -> str:
    total, copied = status.get("rows_total") or 0, status.get("rows_copied") or 0
    share = min(1.0, copied / total) if total else (1.0 if status["phase"] != "backfill" else 0.0)
    filled = int(share * BAR_WIDTH)
    eta = status.get("eta_seconds")
    tail = f", about {eta:.0f} s left" if eta is not None and status["phase"] == "backfill" else ""
    return (
        f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {share:4.0%} {copied:,}/{total:,} rows{tail}"
    )


def _describe(status: dict[str, Any]) -> str:
    lines = [f"{status['move']}: {status['phase']}"]
    if status["phase"] == "unknown":
        lines.append("  the data mover cannot be reached")
        return "\n".join(lines)
    if status.get("error"):
        lines.append(f"  error: {status['error']}")
    completed = status.get("completed")
    if status["phase"] == "completed" and completed:
        archived = (
            f"the monolith's tables archived {completed['archived_at'][:19].replace('T', ' ')} UTC"
            if completed.get("archived_at")
            else f"the monolith's tables NOT archived: {completed.get('archive_error')}"
        )
        lines.append(
            f"  completed {completed['at'][:19].replace('T', ' ')} UTC: the service owns every "
            f"record for good, no sync; {archived}"
        )
        return "\n".join(lines)
    copying = status["phase"] in ("backfill", "streaming")
    lines.append(f"  copy  {_progress(status) if copying else 'not running'}")
    lag = status.get("lag_seconds")
    lines.append(f"  lag   {'-' if lag is None else f'{lag:.3f} s'}")
    verdict = status.get("verdict")
    if verdict is None:
        shown = "none yet"
    else:
        age = time.time() - _epoch(verdict["at"])
        result = "clean" if verdict["clean"] else "NOT clean"
        count = verdict["diverged_count"] + verdict["unsettled_count"]
        shown = f"{result}, {verdict['rows_checked']:,} rows, {count} differ, {age:.0f} s ago"
    if status.get("verifying"):
        shown += " (verifying now)"
    lines.append(f"  last verification  {shown}")
    owners = status.get("ownership") or {}
    if "service_buckets" in owners:
        handover = owners.get("last_handover") or {}
        held = f", last handover held writes {handover['hold_seconds']:.2f} s" if handover else ""
        moving = f", moving {len(owners['moving'])} bucket(s)" if owners.get("moving") else ""
        lines.append(
            f"  owners  service {owners['service_buckets']}/100 buckets "
            f"(asked {owners.get('desired') if owners.get('desired') is not None else 0}), "
            f"plans on the {owners.get('plans')}{moving}{held}"
        )
        streams = status.get("streams") or {}
        for name, figures in streams.items():
            lag = figures.get("lag_seconds")
            lines.append(f"  stream {name}: lag {'-' if lag is None else f'{lag:.3f} s'}")
    if status.get("waiting_for_lease"):
        lines.append(f"  waiting for the lease held by {status['waiting_for_lease']}")
    return "\n".join(lines)


def _share(route: dict[str, Any]) -> str:
    """A canary's percent, or the share of a shadowed route's reads copied."""
    if route["mode"] == "canary":
        return f"{route['percent']}%"
    if route["mode"] == "shadow" and route.get("shadow_sample") is not None:
        return f"{route['shadow_sample'] * 100:g}% shadowed"
    return "-"


def _data_column(route: dict[str, Any]) -> str:
    if not route.get("data"):
        return "-"
    state = route.get("data_state")
    if state is None:
        return f"{route['data']}: mover unreachable"
    lag = "-" if state["lag_seconds"] is None else f"{state['lag_seconds']:.2f}s"
    verdict = state["verdict"] or "unverified"
    return f"{route['data']}: {state['phase']}, lag {lag}, {verdict}"


def _mode(state: dict[str, Any] | None) -> str:
    if not state:
        return "-"
    return f"canary {state['percent']}%" if state["mode"] == "canary" else state["mode"]


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="strangler", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
