"""The tables the users module owns. No other module reads or writes them."""

from __future__ import annotations

import sqlalchemy as sa

from servicekit.db import UTCDateTime, new_metadata
from servicekit.outbox import outbox_table

metadata = new_metadata()

accounts = sa.Table(
    "users_accounts",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("email", sa.String(320), nullable=False, unique=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("active", sa.Boolean(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("deactivated_at", UTCDateTime(), nullable=True),
    sa.Index("ix_users_accounts_created_at", "created_at", "id"),
)

outbox = outbox_table(metadata, "users")
