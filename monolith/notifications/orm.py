"""The tables the notifications module owns."""

from __future__ import annotations

import sqlalchemy as sa

from servicekit.db import UTCDateTime, new_metadata
from servicekit.inbox import inbox_table

metadata = new_metadata()

messages = sa.Table(
    "notifications_messages",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("user_id", sa.String(36), nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("recipient", sa.String(320), nullable=False),
    sa.Column("subject", sa.String(200), nullable=False),
    sa.Column("body", sa.Text(), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("event_id", sa.String(36), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Index("ix_notifications_messages_user", "user_id", "created_at"),
)

processed_events = inbox_table(metadata, "notifications")
