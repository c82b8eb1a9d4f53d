"""The proxy's settings: named defaults, then ``PROXY_*`` environment variables,
then the mapping given to ``create_app`` (tests use that)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from servicekit.ports import local_url
from strangler_proxy.datagate import DEFAULT_MAX_LAG, DEFAULT_VERIFY_MAX_AGE

ENV_PREFIX = "PROXY_"
DEFAULT_DATABASE_FILE = os.path.join("var", "proxy.db")
DEFAULT_ROUTES_FILE = str(Path(__file__).with_name("routes.toml"))
DEFAULT_CONNECT_TIMEOUT = 1.0
DEFAULT_READ_TIMEOUT = 10.0
DEFAULT_SHADOW_TIMEOUT = 2.0
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
#: Shorter than the upstreams' keep-alive (servicekit's gunicorn keeps 75 s),
#: so the proxy, not the upstream, closes an idle connection: no reuse race.
DEFAULT_UPSTREAM_KEEPALIVE = 30.0
#: Idle connections kept per upstream (and worker). Fewer than a worker's
#: requests in flight, and each burst of answers closes the extra ones, to
#: open them again at once: 16 made 3% of list requests connect anew at 32
#: clients (an accept and a new connection for the upstream, too).
DEFAULT_POOL_SIZE = 64
DEFAULT_POLL_SECONDS = 0.5
DEFAULT_FLUSH_SECONDS = 1.0
DEFAULT_BREAKER_THRESHOLD = 5
DEFAULT_BREAKER_COOLDOWN = 5.0
DEFAULT_DEMOTE_ERROR_RATE = 0.5
DEFAULT_DEMOTE_MISMATCH_RATE = 0.5
DEFAULT_DEMOTE_MIN_REQUESTS = 20
DEFAULT_DEMOTE_WINDOW = 30.0
DEFAULT_CANARY_HEADER = "X-User-ID"
DEFAULT_CANARY_COOKIE = "user_id"
DEFAULT_SHADOW_IN_FLIGHT = 32
#: The share of a shadowed route's safe requests that get a shadow copy.
DEFAULT_SHADOW_SAMPLE = 1.0
#: A request body must arrive within this many seconds (else 408).
DEFAULT_BODY_TIMEOUT = 10.0
#: nginx's default header buffers hold 4 x 8 KiB; past that it refuses too (431).
DEFAULT_MAX_HEADER_BYTES = 32 * 1024
#: The header block must arrive within this many seconds (else 408 and close);
#: nginx's client_header_timeout is 60 s, a proxy on a LAN can ask for less.
DEFAULT_HEADER_TIMEOUT = 10.0
#: A client that reads none of its answer for this many seconds is cut off
#: (nginx's send_timeout, 60 s): it would hold an upstream connection forever.
DEFAULT_SEND_TIMEOUT = 30.0
#: An idle client connection is closed after this many seconds (nginx's
#: keepalive_timeout, 75 s).
DEFAULT_CLIENT_KEEPALIVE = 75.0
#: How long a request for records being handed over is held (the new owner
#: asked again and again) before its 503 is passed on: a handover holds writes
#: for tens of milliseconds; a mover restarting mid-handover, for its lease.
DEFAULT_FENCE_HOLD = 2.0


def defaults() -> dict[str, Any]:
    return {
        "DATABASE_URL": "sqlite:///" + os.path.abspath(DEFAULT_DATABASE_FILE),
        "ROUTES_FILE": DEFAULT_ROUTES_FILE,
        "MONOLITH_URL": local_url("monolith"),
        "BILLING_URL": local_url("billing"),
        # The data mover (datamover/): the state of each move gates leaving the monolith.
        "MOVER_URL": local_url("mover"),
        # Signs the commands sent to the data mover; empty: the development key.
        "INTERNAL_KEYS": "",
        "DATA_MAX_LAG": DEFAULT_MAX_LAG,
        "DATA_VERIFY_MAX_AGE": DEFAULT_VERIFY_MAX_AGE,
        # "billing-team:secret1,admin:secret2"; the team named "admin" may change every route.
        "TOKENS": "",
        "CONNECT_TIMEOUT": DEFAULT_CONNECT_TIMEOUT,
        "READ_TIMEOUT": DEFAULT_READ_TIMEOUT,
        "SHADOW_TIMEOUT": DEFAULT_SHADOW_TIMEOUT,
        "MAX_BODY_BYTES": DEFAULT_MAX_BODY_BYTES,
        "UPSTREAM_KEEPALIVE": DEFAULT_UPSTREAM_KEEPALIVE,
        "POOL_SIZE": DEFAULT_POOL_SIZE,
        "POLL_SECONDS": DEFAULT_POLL_SECONDS,
        "FLUSH_SECONDS": DEFAULT_FLUSH_SECONDS,
        "BREAKER_THRESHOLD": DEFAULT_BREAKER_THRESHOLD,
        "BREAKER_COOLDOWN": DEFAULT_BREAKER_COOLDOWN,
        "DEMOTE_ERROR_RATE": DEFAULT_DEMOTE_ERROR_RATE,
        "DEMOTE_MISMATCH_RATE": DEFAULT_DEMOTE_MISMATCH_RATE,
        "DEMOTE_MIN_REQUESTS": DEFAULT_DEMOTE_MIN_REQUESTS,
        "DEMOTE_WINDOW": DEFAULT_DEMOTE_WINDOW,
        "CANARY_HEADER": DEFAULT_CANARY_HEADER,
        "CANARY_COOKIE": DEFAULT_CANARY_COOKIE,
        # Peers whose X-Forwarded-* headers are believed (e.g. the load balancer).
        "TRUSTED_PEERS": "",
        "SHADOW_IN_FLIGHT": DEFAULT_SHADOW_IN_FLIGHT,
        "SHADOW_SAMPLE": DEFAULT_SHADOW_SAMPLE,
        "BODY_TIMEOUT": DEFAULT_BODY_TIMEOUT,
        "MAX_HEADER_BYTES": DEFAULT_MAX_HEADER_BYTES,
        "HEADER_TIMEOUT": DEFAULT_HEADER_TIMEOUT,
        "SEND_TIMEOUT": DEFAULT_SEND_TIMEOUT,
        "CLIENT_KEEPALIVE": DEFAULT_CLIENT_KEEPALIVE,
        "FENCE_HOLD": DEFAULT_FENCE_HOLD,
        "ACCESS_LOG": True,
        # A busy worker does not preempt its neighbours on wake-up: scheduling.py.
        "YIELD_UNDER_LOAD": True,
    }


def load(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    settings = defaults()
    for name, default in list(settings.items()):
        raw = os.environ.get(ENV_PREFIX + name)
        if raw is not None:
            settings[name] = _parse(raw, default)
    settings.update(config or {})
    return settings


def _parse(raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        return raw.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw


def upstreams(settings: Mapping[str, Any]) -> dict[str, str]:
    """Upstream name → base URL: ``monolith``, ``billing`` and any ``*_URL`` given."""
    return {
        name[: -len("_URL")].lower(): str(url)
        for name, url in settings.items()
        if name.endswith("_URL") and name not in _NOT_UPSTREAMS
    }


#: URLs in the settings that traffic is never forwarded to.
_NOT_UPSTREAMS = frozenset({"DATABASE_URL", "MOVER_URL"})


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_hashes(spec: str) -> dict[str, str]:
    """``"team:token,team:token"`` → {sha256(token): team}; only hashes are kept."""
    hashes: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        team, _, token = item.partition(":")
        if not team or not token:
            raise ValueError("PROXY_TOKENS entries look like team:token")
        hashes[hash_token(token)] = team
    return hashes
