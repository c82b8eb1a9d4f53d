"""Unique values for tests, so that tests never collide on shared data."""

from __future__ import annotations

import uuid


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def unique_email() -> str:
    return f"{unique('user')}@example.com"
