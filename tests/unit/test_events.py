"""The event envelope: what travels between publisher and consumer."""

from __future__ import annotations

import datetime as dt

import pytest

from monolith.billing.events import InvoicePaid
from monolith.users.events import UserDeactivated, UserRegistered
from servicekit.events import Envelope, EventRegistry, UnknownEventType


def test_an_event_round_trips_through_its_json_envelope():
    event = UserRegistered(user_id="u1", email="a@example.com", name="Ada")

    envelope = Envelope.from_json(Envelope.wrap(event, source="users").to_json())
    decoded = EventRegistry([UserRegistered]).decode(envelope)

    assert decoded == event
    assert envelope.aggregate_id == "u1"
    assert envelope.occurred_at.tzinfo is not None


def test_consumers_tolerate_fields_a_newer_publisher_added():
    envelope = Envelope.wrap(UserDeactivated(user_id="u1"), source="users")
    newer = Envelope.from_json(
        {**envelope.to_json(), "payload": {"user_id": "u1", "reason": "fraud"}}
    )

    assert EventRegistry([UserDeactivated]).decode(newer) == UserDeactivated(
        user_id="u1", event_id=envelope.event_id, occurred_at=envelope.occurred_at
    )


def test_an_unknown_event_type_is_named():
    envelope = Envelope.wrap(UserDeactivated(user_id="u1"), source="users")

    with pytest.raises(UnknownEventType, match="UserDeactivated"):
        EventRegistry().decode(envelope)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"payload": None}, "envelope field 'payload' is missing"),
        ({"occurred_at": "2026-01-01T00:00:00"}, "must carry a UTC offset"),
        ({"payload": [1, 2]}, "'payload' must be an object"),
    ],
)
def test_a_malformed_envelope_says_what_is_wrong(change, message):
    data = Envelope.wrap(
        InvoicePaid(
            invoice_id="i",
            user_id="u",
            amount_minor=1,
            currency="EUR",
            paid_at=dt.datetime.now(dt.UTC).isoformat(),
        ),
        source="billing",
    ).to_json()
    data.update(change)
    if change.get("payload", "x") is None:
        del data["payload"]

    with pytest.raises(ValueError, match=message):
        Envelope.from_json(data)
