"""The route table's database: routes, the table revision, the audit trail,
shadow mismatches and the traffic every worker reports."""

from __future__ import annotations

import sqlalchemy as sa

from servicekit.db import UTCDateTime, new_metadata

metadata = new_metadata()
_autoincrement_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

#: One row: the revision of the whole table, bumped by every change. Workers
#: poll it; a new value means "reload the routes".
state = sa.Table(
    "proxy_state",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("revision", sa.Integer, nullable=False),
)

routes = sa.Table(
    "proxy_routes",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("pattern", sa.String(500), nullable=False),
    sa.Column("methods", sa.String(200), nullable=False),
    sa.Column("owner", sa.String(100), nullable=False),
    sa.Column("service", sa.String(100), nullable=False),
    sa.Column("mode", sa.String(20), nullable=False),
    sa.Column("percent", sa.Integer, nullable=False),
    sa.Column("fallback", sa.Boolean, nullable=False),
    sa.Column("ignore", sa.JSON, nullable=False),
    # The data move the route's records travel with (None: no data gate).
    sa.Column("data", sa.String(100), nullable=True),
    # The share of safe requests shadowed (None: the proxy's SHADOW_SAMPLE).
    sa.Column("shadow_sample", sa.Float, nullable=True),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("updated_by", sa.String(100), nullable=False),
)

#: Data moves whose journey ended (`strangler data complete`): their routes
#: stay on the service for good — the monolith's copy of the records is archived.
completed_moves = sa.Table(
    "proxy_completed_moves",
    metadata,
    sa.Column("move", sa.String(100), primary_key=True),
    sa.Column("completed_at", UTCDateTime, nullable=False),
    sa.Column("completed_by", sa.String(100), nullable=False),
)

audit = sa.Table(
    "proxy_audit",
    metadata,
    sa.Column("id", _autoincrement_id, primary_key=True, autoincrement=True),
    sa.Column("route", sa.String(100), nullable=False, index=True),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("actor", sa.String(100), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("before", sa.JSON, nullable=True),
    sa.Column("after", sa.JSON, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
)

mismatches = sa.Table(
    "proxy_mismatches",
    metadata,
    sa.Column("id", _autoincrement_id, primary_key=True, autoincrement=True),
    sa.Column("route", sa.String(100), nullable=False, index=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("method", sa.String(10), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("monolith_status", sa.Integer, nullable=False),
    sa.Column("service_status", sa.Integer, nullable=False),
    sa.Column("monolith_body", sa.Text, nullable=False),
    sa.Column("service_body", sa.Text, nullable=False),
    sa.Column("diff", sa.JSON, nullable=False),
)

#: Per-worker counts flushed every second: the live rates in the listing and
#: the window auto-demotion looks at, shared by every worker of every proxy.
traffic = sa.Table(
    "proxy_traffic",
    metadata,
    sa.Column("id", _autoincrement_id, primary_key=True, autoincrement=True),
    sa.Column("route", sa.String(100), nullable=False),
    sa.Column("worker", sa.String(100), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False, index=True),
    sa.Column("requests", sa.Integer, nullable=False),
    sa.Column("errors", sa.Integer, nullable=False),
    sa.Column("service_requests", sa.Integer, nullable=False),
    sa.Column("service_errors", sa.Integer, nullable=False),
    sa.Column("shadows", sa.Integer, nullable=False),
    sa.Column("mismatches", sa.Integer, nullable=False),
    # Which upstream answered, and a latency histogram (traffic.LATENCY_BOUNDS_MS):
    # the dashboard's split and p50/p99. Rows written before they existed read 0 / NULL.
    sa.Column("via_monolith", sa.Integer, nullable=False, server_default="0"),
    sa.Column("via_service", sa.Integer, nullable=False, server_default="0"),
    sa.Column("latency", sa.JSON, nullable=True),
)
