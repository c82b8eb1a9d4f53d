"""`make bench`: the monolith directly, through the strangler proxy, through
nginx and through a Python byte relay, under wrk, on a trivial endpoint and
on the paginated invoice list.

Everything runs on 127.0.0.1 on this machine: a seeded monolith (gunicorn,
servicekit's settings), the proxy (gunicorn, its own settings), nginx as a
reverse proxy with upstream keep-alive, and under load the floor of any
Python proxy (``bench/relay.py``: bytes relayed on uvloop, nothing parsed).
It prints throughput and p50/p99, each target's ratio to direct and the
proxy's to nginx, then the latency each proxy adds
with one connection, and what shadow mode adds to the primary's p99 — with
the shadow sent to a cheap fixed-response upstream (what the proxy's own
shadowing costs) and to the same backend (what a second backend on the same
cores costs). Last, the issue's table with each bar, met or not.

The machine is shared and noisy, so each figure is the median of interleaved
rounds (A B C, then C B A, ...) and each ratio the median of the rounds' own
ratios (a round's targets run back to back). Each proxy's CPU per request,
read from /proc for its processes, is printed too: unlike throughput, it
barely moves with what else the machine is doing.

    .venv/bin/python bench/run.py [--duration 10] [--connections 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from servicekit.gunicorn_conf import workers as proxy_workers

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SEEDED_DATABASE = ROOT / "var" / "bench-monolith.db"
DEFAULT_USERS = 1000
DEFAULT_INVOICES = 100_000
TRIVIAL = "/health"
LIST = "/billing/invoices?page=1&page_size=20"
BENCH_TOKEN = "bench-admin-token"

NGINX_CONF = """
worker_processes 2;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream monolith {{ server 127.0.0.1:{upstream}; keepalive 64; keepalive_timeout 30s; }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{
            proxy_pass http://monolith;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
    server {{
        listen 127.0.0.1:{cheap} reuseport;
        default_type application/json;
        location / {{ root {dir}; try_files /list.json =404; }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Service:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log = (log_dir / f"{name}.log").open("wb")
        self.popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait(self, url: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see its log in {self.log.name}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} did not come up")

    def cpu_seconds(self) -> float:
        """User and system CPU of the service's processes (its session) so far."""
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == self.popen.pid:  # the session id
                    total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.log.close()


def run(argv: list[str], env: dict[str, str] | None = None) -> None:
    subprocess.run(argv, cwd=ROOT, env={**os.environ, **(env or {})}, check=True)


def seeded_database() -> str:
    """The monolith's database with 100k invoices, built once and kept in var/."""
    url = f"sqlite:///{SEEDED_DATABASE}"
    if not SEEDED_DATABASE.exists():
        SEEDED_DATABASE.parent.mkdir(exist_ok=True)
        partial = SEEDED_DATABASE.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        partial_url = f"sqlite:///{partial}"
        print(f"seeding {SEEDED_DATABASE} (once)...", flush=True)
        run(
            [str(BIN / "alembic"), "-n", "monolith", "-x", f"url={partial_url}", "upgrade", "heads"]
        )
        run(
            [
                str(BIN / "flask"),
                "--app",
                "monolith",
                "seed",
                "--users",
                str(DEFAULT_USERS),
                "--invoices",
                str(DEFAULT_INVOICES),
            ],
            {"MONOLITH_DATABASE_URL": partial_url},
        )
        partial.rename(SEEDED_DATABASE)
    return url


def gunicorn(conf: str, port: int, app: str) -> list[str]:
    return [str(BIN / "gunicorn"), "--config", f"python:{conf}", "--bind", f"127.0.0.1:{port}", app]


_WRK_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_PERCENTILE = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url: str, connections: int, duration: int, threads: int = 2) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            f"-t{min(threads, connections)}",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "10s",
            "--latency",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors or "Socket errors" in out:
        print(f"  warning, {url}: {out.strip().splitlines()[-3:]}")
    rps = float(_WRK_RPS.search(out).group(1))  # type: ignore[union-attr]
    percentiles = {p: float(v) * _UNIT[u] for p, v, u in _WRK_PERCENTILE.findall(out)}
    return {"rps": rps, "p50": percentiles["50"], "p99": percentiles["99"]}


ROUNDS = 5
SHADOW_CONNECTIONS = (1, 8)
#: The primary's p99 with and without shadowing: a p99 needs a long run.
SHADOW_SECONDS = 10
SAME_BACKEND_SECONDS = 5


def interleaved(rounds: int, names: list[str]) -> Iterator[list[str]]:
    """The order of each round: A B C, then C B A, ...; no target always
    runs first, or always right after another one."""
    for number in range(rounds):
        yield names if number % 2 == 0 else names[::-1]


def medians(rounds: int, urls: dict[str, str], measure: Any) -> dict[str, dict[str, float]]:
    """Each target measured ``rounds`` times, interleaved, and the median of
    each figure kept: one noisy run neither helps nor hurts. ``ratio`` is the
    median of each round's throughput over the same round's direct one: a
    round's targets ran minutes apart at most, so a drift of the machine
    between rounds cancels out."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
    for order in interleaved(rounds, list(urls)):
        for name in order:
            runs[name].append(measure(name, urls[name]))
    result = {
        name: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for name, results in runs.items()
    }
    for name, results in runs.items():
        paired = [r["rps"] / d["rps"] for r, d in zip(results, runs["direct"], strict=True)]
        result[name]["ratio"] = statistics.median(paired)
    return result


def set_route(proxy: str, route: str, mode: str) -> None:
    auth = {"Authorization": f"Bearer {BENCH_TOKEN}"}
    revision = httpx.get(f"{proxy}/_strangler/routes/{route}", headers=auth).json()["revision"]
    response = httpx.patch(
        f"{proxy}/_strangler/routes/{route}",
        headers=auth,
        json={"mode": mode, "reason": "bench", "revision": revision},
    )
    response.raise_for_status()
    wanted = httpx.get(f"{proxy}/_strangler/routes", headers=auth).json()["revision"]
    # every worker polls the table; the gauge is the lowest revision a live worker serves
    deadline = time.monotonic() + 10
    while served_revision(proxy) < wanted:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the proxy's workers did not reach revision {wanted}")
        time.sleep(0.05)


def served_revision(proxy: str) -> float:
    metrics = httpx.get(f"{proxy}/_strangler/metrics").text
    found = re.search(r"^strangler_route_revision (\S+)$", metrics, re.M)
    return float(found.group(1)) if found else -1.0


def shadow_cost(proxy: str, connections: int, rounds: int, seconds: int) -> dict[str, float]:
    """The primary's p99 on the list in monolith mode and in shadow mode,
    interleaved; ``change`` is the median of each round's change."""
    p99: dict[str, list[float]] = {"monolith": [], "shadow": []}
    for order in interleaved(rounds, ["monolith", "shadow"]):
        for mode in order:
            set_route(proxy, "billing-invoices", mode)
            p99[mode].append(wrk(proxy + LIST, connections, seconds, threads=1)["p99"])
    set_route(proxy, "billing-invoices", "monolith")
    changes = [100 * (s / m - 1) for m, s in zip(p99["monolith"], p99["shadow"], strict=True)]
    return {
        "monolith": statistics.median(p99["monolith"]),
        "shadow": statistics.median(p99["shadow"]),
        "change": statistics.median(changes),
    }


def start_proxy(name: str, log_dir: Path, port: int, monolith: str, billing: str) -> Service:
    database = f"sqlite:///{log_dir}/{name}.db"
    run([str(BIN / "alembic"), "-n", "proxy", "-x", f"url={database}", "upgrade", "heads"])
    proxy = Service(
        name,
        gunicorn("strangler_proxy.gunicorn_conf", port, "strangler_proxy.main:app"),
        {
            "PROXY_DATABASE_URL": database,
            "PROXY_MONOLITH_URL": monolith,
            "PROXY_BILLING_URL": billing,
            "PROXY_TOKENS": f"admin:{BENCH_TOKEN}",
            "PROXY_ACCESS_LOG": os.environ.get("PROXY_ACCESS_LOG", "1"),
            # the bench measures the data plane: a cheap shadow target answers
            # other bytes than the monolith, which must not demote the route
            "PROXY_DEMOTE_MIN_REQUESTS": str(10**9),
            "LOG_LEVEL": "INFO",
        },
        log_dir,
    )
    proxy.wait(f"http://127.0.0.1:{port}/_strangler/health")
    return proxy


@contextlib.contextmanager
def system(log_dir: Path) -> Iterator[tuple[dict[str, str], dict[str, Service]]]:
    """The monolith (direct), the proxy, nginx in front of the monolith, and a
    cheap fixed-response upstream (nginx serving the list page from a file):
    their URLs, and the services by name."""
    ports = {name: free_port() for name in ("direct", "proxy", "nginx", "cheap", "relay")}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    services: list[Service] = []
    try:
        monolith = Service(
            "monolith",
            gunicorn("servicekit.gunicorn_conf", ports["direct"], "monolith.wsgi:app"),
            {"MONOLITH_DATABASE_URL": seeded_database(), "LOG_LEVEL": "WARNING"},
            log_dir,
        )
        services.append(monolith)
        monolith.wait(urls["direct"] + TRIVIAL)
        # the cheap shadow target answers the same bytes the monolith does
        (log_dir / "list.json").write_bytes(httpx.get(urls["direct"] + LIST).content)
        log_dir.chmod(0o755)  # nginx's workers run as another user: let them read it

        (log_dir / "nginx.conf").write_text(
            NGINX_CONF.format(
                dir=log_dir, upstream=ports["direct"], port=ports["nginx"], cheap=ports["cheap"]
            )
        )
        nginx = Service(
            "nginx", ["nginx", "-c", str(log_dir / "nginx.conf"), "-p", str(log_dir)], {}, log_dir
        )
        services.append(nginx)
        nginx.wait(urls["nginx"] + TRIVIAL)
        nginx.wait(urls["cheap"] + LIST)

        relay = Service(
            "relay",
            [
                sys.executable,
                str(ROOT / "bench" / "relay.py"),
                str(ports["relay"]),
                str(ports["direct"]),
                str(proxy_workers),  # as many processes as the proxy has workers
            ],
            {},
            log_dir,
        )
        services.append(relay)
        relay.wait(urls["relay"] + TRIVIAL)

        proxy = start_proxy("proxy", log_dir, ports["proxy"], urls["direct"], urls["cheap"])
        services.append(proxy)
        yield urls, {"direct": monolith, "proxy": proxy, "nginx": nginx, "relay": relay}
    finally:
        for service in reversed(services):
            service.stop()


BARS = {
    "added_p50": 0.5,
    "added_p99": 1.0,
    "trivial": 0.5,
    "list": 0.9,
    "shadow": 10.0,
}


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per saturated run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved rounds")
    args = parser.parse_args()
    if not shutil.which("wrk") or not shutil.which("nginx"):
        print("bench needs wrk and nginx: `make bench` installs them", file=sys.stderr)
        return 2

    with (
        tempfile.TemporaryDirectory(prefix="strangler-bench-") as tmp,
        system(Path(tmp)) as (every, services),
    ):
        urls = {name: every[name] for name in ("direct", "proxy", "nginx")}
        loaded = {**urls, "relay": every["relay"]}
        for url in loaded.values():  # warm every path once (pools, caches)
            wrk(url + LIST, 4, 2)
        rounds = args.rounds
        print(
            f"\n{os.cpu_count()} cores shared by everything; each figure is the median of "
            f"{rounds} interleaved rounds (A B C, then C B A, ...);\n"
            "a ratio is the median of each round's ratio\n"
        )
        saturated = {}
        header = f"{'endpoint':<10} {'target':<7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
        print(f"saturated: wrk, {args.connections} connections, {args.duration}s per run")
        print(header + f" {'CPU/req':>8} {'/direct':>8} {'proxy/nginx':>12}")

        def saturate(name: str, url: str, path: str) -> dict[str, float]:
            before = services[name].cpu_seconds()
            result = wrk(url + path, args.connections, args.duration)
            spent = services[name].cpu_seconds() - before
            result["cpu_us"] = 1e6 * spent / (result["rps"] * args.duration)
            return result

        for label, path in (("trivial", TRIVIAL), ("list", LIST)):
            results = medians(
                rounds, loaded, lambda name, url, path=path: saturate(name, url, path)
            )
            saturated[label] = results
            for name, r in results.items():
                ratios = f" {r['ratio']:>7.3f}x" if name != "direct" else ""
                if name == "proxy":
                    ratios += f" {r['ratio'] / results['nginx']['ratio']:>11.3f}x"
                print(
                    f"{label:<10} {name:<7} {r['rps']:>9.0f} {r['p50']:>8.2f} "
                    f"{r['p99']:>8.2f} {r['cpu_us']:>6.0f}us{ratios}"
                )
        print(
            "  (CPU/req: of the target's own processes; for direct, the monolith's;\n"
            "   relay: bytes relayed in Python, nothing parsed — the floor of any Python proxy)"
        )

        print("\nunsaturated: 1 connection, trivial endpoint, 5s per run")
        single = medians(rounds, urls, lambda _, url: wrk(url + TRIVIAL, 1, 5, threads=1))
        for name in ("direct", "proxy", "nginx"):
            r = single[name]
            print(f"  {name:<6} p50 {r['p50']:.3f} ms  p99 {r['p99']:.3f} ms")

        print("\nshadow mode: the primary's p99 on the list, monolith mode vs shadow mode")
        cheap = {
            c: shadow_cost(every["proxy"], c, rounds, SHADOW_SECONDS) for c in SHADOW_CONNECTIONS
        }
        for c, r in cheap.items():
            print(
                f"  cheap target, {c} conn: {r['monolith']:.2f} -> {r['shadow']:.2f} ms "
                f"({r['change']:+.1f}%)"
            )
        same_port = free_port()
        same_url = f"http://127.0.0.1:{same_port}"
        same_proxy = start_proxy(
            "proxy-same", Path(tmp), same_port, every["direct"], every["direct"]
        )
        try:
            same = {
                c: shadow_cost(same_url, c, rounds, SAME_BACKEND_SECONDS)
                for c in SHADOW_CONNECTIONS
            }
        finally:
            same_proxy.stop()
        for c, r in same.items():
            print(
                f"  same backend, {c} conn: {r['monolith']:.2f} -> {r['shadow']:.2f} ms "
                f"({r['change']:+.1f}%)"
            )

        added = {
            name: (
                single[name]["p50"] - single["direct"]["p50"],
                single[name]["p99"] - single["direct"]["p99"],
            )
            for name in ("proxy", "nginx")
        }
        trivial, listing = saturated["trivial"], saturated["list"]

        def ratio(results: dict[str, dict[str, float]], name: str) -> float:
            return results[name]["ratio"]

        proxy_added = added["proxy"]
        rows = [
            (
                "latency added at 1 connection, /health, p50 / p99",
                "—",
                f"{added['nginx'][0]:+.2f} / {added['nginx'][1]:+.2f} ms",
                f"{proxy_added[0]:+.2f} / {proxy_added[1]:+.2f} ms",
                "≤ +0.5 / ≤ +1.0 ms",
                met(proxy_added[0] <= BARS["added_p50"] and proxy_added[1] <= BARS["added_p99"]),
            ),
            (
                f"/health throughput, {args.connections} connections",
                f"{trivial['direct']['rps']:,.0f} req/s",
                f"{ratio(trivial, 'nginx'):.3f}x",
                f"{ratio(trivial, 'proxy'):.3f}x",
                "≥ 0.5x direct",
                met(ratio(trivial, "proxy") >= BARS["trivial"]),
            ),
            (
                "invoice list throughput (100k invoices)",
                f"{listing['direct']['rps']:,.0f} req/s",
                f"{ratio(listing, 'nginx'):.3f}x",
                f"{ratio(listing, 'proxy'):.3f}x",
                "≥ 0.9x direct",
                met(ratio(listing, "proxy") >= BARS["list"]),
            ),
            (
                "primary's p99, shadow vs monolith mode (cheap target)",
                "—",
                "—",
                " / ".join(f"{r['change']:+.1f}% at {c}" for c, r in cheap.items()),
                "≤ +10%",
                met(all(r["change"] <= BARS["shadow"] for r in cheap.values())),
            ),
            (
                "the same, shadow to the same backend",
                "—",
                "—",
                " / ".join(f"{r['change']:+.1f}% at {c}" for c, r in same.items()),
                "(reported)",
                "",
            ),
            (
                "CPU per list request (the monolith's; each proxy's own)",
                f"{listing['direct']['cpu_us']:,.0f} µs",
                f"{listing['nginx']['cpu_us']:,.0f} µs",
                f"{listing['proxy']['cpu_us']:,.0f} µs",
                "(reported)",
                "",
            ),
            (
                "the floor: a Python byte relay (bench/relay.py), list throughput; its CPU",
                "—",
                "—",
                f"{ratio(listing, 'relay'):.3f}x; {listing['relay']['cpu_us']:,.0f} µs",
                "(reported)",
                "",
            ),
        ]
        print("\n| figure | direct | nginx | our proxy | bar | |")
        print("|---|---|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
