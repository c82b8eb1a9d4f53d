"""The list cursor: opaque, checked, bound to its query — and read the same by
both billing deployables, since the proxy may send the next page to either."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import uuid

import pytest

from extracted.billing_service.billing import pagination as service_pagination
from monolith.billing import pagination
from monolith.billing.domain import Position
from monolith.billing.pagination import InvalidCursor, decode_cursor, encode_cursor

POSITION = Position(
    dt.datetime(2026, 11, 29, 0, 15, 21, 123456, tzinfo=dt.UTC), str(uuid.UUID(int=42))
)
SCOPE = "invoices?status=paid"


def raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def token(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_cursor_names_its_position_for_its_query():
    cursor = encode_cursor(POSITION, SCOPE)

    assert decode_cursor(cursor, SCOPE) == POSITION
    assert cursor.isascii() and "=" not in cursor and len(cursor) <= pagination.MAX_CURSOR_LENGTH
    assert str(POSITION.id) not in cursor and "paid" not in cursor


def test_every_changed_byte_is_noticed():
    data = raw(encode_cursor(POSITION, SCOPE))

    for index in range(len(data)):
        changed = bytearray(data)
        changed[index] ^= 0x01
        with pytest.raises(InvalidCursor):
            decode_cursor(token(bytes(changed)), SCOPE)


def test_another_query_does_not_accept_it():
    cursor = encode_cursor(POSITION, SCOPE)

    with pytest.raises(InvalidCursor, match="another list or other filters"):
        decode_cursor(cursor, "invoices?status=open")


@pytest.mark.parametrize(
    "payload",
    [
        b"[]",
        b'{"a": 1, "b": 2, "c": 3, "d": 4}',
        b'[2, "x", "2026-01-01T00:00:00+00:00", "00000000-0000-0000-0000-000000000001"]',
        b'[1, "x", "2026-01-01T00:00:00", "00000000-0000-0000-0000-000000000001"]',
        b'[1, "x", 17, "00000000-0000-0000-0000-000000000001"]',
        b'[1, "x", "9999-12-31T23:59:59-14:00", "00000000-0000-0000-0000-000000000001"]',
        b'[1, "x", "2026-01-01T00:00:00+00:00", 12]',
        b'[1, "x", "2026-01-01T00:00:00+00:00", "not-an-id"]',
        b"\xff\xfe",
    ],
)
def test_a_checked_payload_of_the_wrong_shape_is_still_refused(payload):
    """Even a payload with a valid check value (a forger who read this code)
    is refused cleanly rather than breaking the query."""
    forged = token(payload + pagination._check(payload))

    with pytest.raises(InvalidCursor):
        decode_cursor(forged, SCOPE)


def test_both_deployables_write_and_read_the_same_cursors():
    from_monolith = encode_cursor(POSITION, SCOPE)
    from_service = service_pagination.encode_cursor(
        service_pagination.Position(POSITION.created_at, POSITION.id), SCOPE
    )

    assert from_monolith == from_service
    read_by_service = service_pagination.decode_cursor(from_monolith, SCOPE)
    assert dataclasses.astuple(read_by_service) == dataclasses.astuple(POSITION)
    assert decode_cursor(from_service, SCOPE) == POSITION


def test_a_difference_between_the_copies_would_be_caught(monkeypatch):
    monkeypatch.setattr(service_pagination, "_CHECK_KEY", b"another key")

    with pytest.raises(InvalidCursor):
        decode_cursor(
            service_pagination.encode_cursor(
                service_pagination.Position(POSITION.created_at, POSITION.id), SCOPE
            ),
            SCOPE,
        )
