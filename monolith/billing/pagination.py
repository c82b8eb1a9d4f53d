"""How billing's lists are paged over HTTP: by an opaque cursor, or by page number.

A list answers a page of items (the body, a JSON array as it always was) and
an ``X-Pagination`` header::

    {"page_size": 20, "has_more": true, "next_cursor": "WzEsImM...",
     "page": 1, "first_page": 1, "next_page": 2}

``next_cursor`` is where the next page starts: send it back as ``cursor``. A
cursor page is found through the index from the position it names, so page
5,000 costs what page 1 costs, and rows inserted while a client pages never
make it skip or repeat one (the order is ``(created_at, id)``, which no write
changes). ``page`` numbers still work for the clients that use them, but skip
rows one by one (their cost grows with the page number) and shift under
inserts. Nothing is counted unless ``include_total=true`` asks for ``total``,
``total_pages`` and ``last_page``: the count reads every matching row, and
was most of what page 1 used to cost.

A cursor is a position and the query it belongs to, with a check value. It
is opaque to clients and refused (422) when malformed, altered, or sent with
other filters or to another list. It is not a secret and not signed: it only
says where to continue a query whose answer the client could read anyway, so
the check catches damage and tinkering, not a determined forger (who gains
nothing). Both billing deployables read each other's cursors: the proxy may
send the next page of a list to the other side.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping
from typing import Any

import marshmallow as ma

from monolith.billing.domain import Page, PageRequest, Position

__all__ = [
    "CURSOR_VERSION",
    "DEFAULT_PAGE_SIZE",
    "MAX_CURSOR_LENGTH",
    "MAX_PAGE",
    "MAX_PAGE_SIZE",
    "PAGINATION_HEADER",
    "InvalidCursor",
    "ListQuery",
    "decode_cursor",
    "encode_cursor",
]

DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100
#: Pages past this are refused: a huge page number would overflow the SQL offset.
MAX_PAGE = 1_000_000
#: A cursor this codec writes is about 110 characters; anything much longer is not one.
MAX_CURSOR_LENGTH = 256
CURSOR_VERSION = 1
PAGINATION_HEADER = "X-Pagination"

# Not a secret (see the module docstring): it only makes the check value this
# codec's own, so that a cursor is not accepted by accident from elsewhere.
_CHECK_KEY = b"strangler.billing.cursor"
_CHECK_BYTES = 8
_SCOPE_BYTES = 8


class InvalidCursor(ValueError):
    """The cursor is not one this API wrote for this query."""


def encode_cursor(position: Position, scope: str) -> str:
    """An opaque token for ``position`` in the list query ``scope``."""
    payload = json.dumps(
        [CURSOR_VERSION, _digest(scope), position.created_at.isoformat(), position.id],
        separators=(",", ":"),
    ).encode()
    token = base64.urlsafe_b64encode(payload + _check(payload))
    return token.rstrip(b"=").decode()


def decode_cursor(token: str, scope: str) -> Position:
    """The position ``token`` names; :class:`InvalidCursor` unless this codec
    wrote it, unaltered, for the same list query ``scope``."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidCursor("Not a valid cursor.") from exc
    payload, check = raw[:-_CHECK_BYTES], raw[-_CHECK_BYTES:]
    if not payload or not hmac.compare_digest(check, _check(payload)):
        raise InvalidCursor("Not a valid cursor.")
    try:
        version, scope_digest, created_at, item_id = json.loads(payload)
        when = dt.datetime.fromisoformat(created_at)
        if version != CURSOR_VERSION or when.tzinfo is None:
            raise InvalidCursor("Not a valid cursor.")
        position = Position(when.astimezone(dt.UTC), str(uuid.UUID(item_id)))
    except (AttributeError, OverflowError, TypeError, ValueError) as exc:
        # A payload of the wrong shape, date or id; json's errors are ValueErrors.
        raise InvalidCursor("Not a valid cursor.") from exc
    if scope_digest != _digest(scope):
        raise InvalidCursor(
            "The cursor belongs to another list or other filters; start again without it."
        )
    return position


def _check(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, key=_CHECK_KEY, digest_size=_CHECK_BYTES).digest()


def _digest(scope: str) -> str:
    return hashlib.blake2b(scope.encode(), digest_size=_SCOPE_BYTES).hexdigest()


@dataclasses.dataclass(frozen=True)
class ListQuery:
    """A parsed list request: its filters, the page asked for, and how to say
    where the next one is."""

    scope: str
    filters: dict[str, str]
    page: PageRequest
    number: int | None = None  # the page number, when the client pages by number

    @classmethod
    def parse(cls, list_name: str, data: Mapping[str, Any]) -> ListQuery:
        """From the query arguments loaded by a list's query schema."""
        paging = {"page", "page_size", "cursor", "include_total"}
        filters = {
            name: str(getattr(value, "value", value))  # UUIDs and enums arrive parsed
            for name, value in data.items()
            if name not in paging
        }
        scope = list_name + "?" + "&".join(f"{k}={v}" for k, v in sorted(filters.items()))
        size, count = data["page_size"], data["include_total"]
        if "cursor" in data:
            try:
                after = decode_cursor(data["cursor"], scope)
            except InvalidCursor as exc:
                raise ma.ValidationError(str(exc), field_name="cursor") from exc
            return cls(scope, filters, PageRequest(size, after=after, count=count))
        number = data.get("page", 1)
        return cls(
            scope, filters, PageRequest(size, offset=(number - 1) * size, count=count), number
        )

    def headers(self, page: Page[Any]) -> dict[str, str]:
        """The ``X-Pagination`` header that answers this query with ``page``."""
        meta: dict[str, Any] = {"page_size": self.page.size, "has_more": page.has_more}
        if page.last is not None:
            meta["next_cursor"] = encode_cursor(page.last, self.scope)
        if self.number is not None:
            meta.update(page=self.number, first_page=1)
            if self.number > 1:
                meta["previous_page"] = self.number - 1
            if page.has_more:
                meta["next_page"] = self.number + 1
        if page.total is not None:
            pages = -(-page.total // self.page.size)
            meta.update(total=page.total, total_pages=pages)
            if pages:
                meta["last_page"] = pages
        return {PAGINATION_HEADER: json.dumps(meta)}
