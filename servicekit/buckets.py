"""A user's bucket: the one formula both the proxy's canary and the apps'
write ownership use, so that a user is sent to — and owned by — the same side.

Pure (hashlib only): the proxy's domain rules, which may import neither Flask
nor SQLAlchemy, use it too.
"""

from __future__ import annotations

import hashlib

__all__ = ["USER_BUCKETS", "bucket"]

#: Buckets 0..99: a percent of users is a number of buckets.
USER_BUCKETS = 100


def bucket(group: str, key: str) -> int:
    """A stable bucket 0..99 for ``key`` in ``group``.

    sha256, not ``hash()``: the bucket must be the same in every process and
    after every restart. A user goes to the service when its bucket is below
    the percent, so raising the percent only ever moves users towards it.
    """
    digest = hashlib.sha256(f"{group}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % USER_BUCKETS
