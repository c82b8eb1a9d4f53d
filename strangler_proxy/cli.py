"""``strangler``: move routes between the monolith and a service from a shell.

It talks to the proxy's admin API (``STRANGLER_URL``, default
http://127.0.0.1:8000) with the bearer token in ``STRANGLER_TOKEN``. Every
refusal (401, 403, 409, 422, ...) prints the proxy's message and exits 1.
"""

from __future__ import annotations

import sys
from typing import Any

import click
import httpx

__all__ = ["main"]

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 5.0
API = "/_strangler"


class Refused(click.ClickException):
    exit_code = 1


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
            detail = f" {fields}" if fields else ""
            raise Refused(f"refused ({response.status_code}): {message}{detail}")
        return response.json()


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
    default=DEFAULT_URL,
    show_default=True,
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
            f"{r['percent']}%" if r["mode"] == "canary" else "-",
            r["pattern"],
            r["owner"],
            f"{r['rate']:.1f}/s",
            f"{r['error_rate'] * 100:.1f}%",
            r["revision"],
        ]
        for r in listing["routes"]
    ]
    click.echo(table(rows, ["ROUTE", "MODE", "PERCENT", "PATTERN", "OWNER", "RATE", "5XX", "REV"]))
    click.echo(f"\ntable revision {listing['revision']}")


@cli.command("set")
@click.argument("route")
@click.argument("mode", type=click.Choice(["monolith", "shadow", "canary", "service"]))
@click.argument("percent", type=int, required=False)
@click.option("--reason", "-r", required=True, help="Why (kept in the history).")
@click.option("--revision", type=int, help="The route revision you looked at (default: now).")
@click.pass_obj
def set_mode(
    admin: Admin, route: str, mode: str, percent: int | None, reason: str, revision: int | None
) -> None:
    """Set ROUTE to MODE (canary takes a PERCENT)."""
    if revision is None:
        revision = admin.call("GET", f"/routes/{route}")["revision"]
    body: dict[str, Any] = {"mode": mode, "reason": reason, "revision": revision}
    if percent is not None:
        body["percent"] = percent
    changed = admin.call("PATCH", f"/routes/{route}", json=body)
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
