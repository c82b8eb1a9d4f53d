"""Integration events and the one envelope they travel in.

A module's integration events are small frozen dataclasses deriving from
:class:`IntegrationEvent`. Whatever carries them — an in-process bus today, an
HTTP relay between deployables tomorrow — carries an :class:`Envelope`, whose
JSON form is the contract between publisher and consumer.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, TypeVar

from servicekit.db import utcnow
from servicekit.ids import new_id

__all__ = ["Envelope", "EventRegistry", "IntegrationEvent", "UnknownEventType"]

E = TypeVar("E", bound="IntegrationEvent")


@dataclasses.dataclass(frozen=True, kw_only=True)
class IntegrationEvent:
    """Base of every integration event.

    Subclasses set ``aggregate_field``: the field naming the aggregate the
    event is about. Events of one aggregate are delivered in the order they
    were published; events of different aggregates may overtake each other.
    Payload fields hold JSON values only (str, int, bool, None).
    """

    aggregate_field: ClassVar[str]

    event_id: str = dataclasses.field(default_factory=new_id)
    occurred_at: dt.datetime = dataclasses.field(default_factory=utcnow)

    @classmethod
    def type_name(cls) -> str:
        return cls.__name__

    @property
    def aggregate_id(self) -> str:
        return str(getattr(self, self.aggregate_field))

    def payload(self) -> dict[str, Any]:
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name not in ("event_id", "occurred_at")
        }


@dataclasses.dataclass(frozen=True)
class Envelope:
    """An event on the wire: what an outbox stores and a relay delivers."""

    event_id: str
    event_type: str
    source: str
    aggregate_id: str
    occurred_at: dt.datetime
    payload: Mapping[str, Any]

    @classmethod
    def wrap(cls, event: IntegrationEvent, *, source: str) -> Envelope:
        return cls(
            event_id=event.event_id,
            event_type=event.type_name(),
            source=source,
            aggregate_id=event.aggregate_id,
            occurred_at=event.occurred_at,
            payload=event.payload(),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "source": self.source,
            "aggregate_id": self.aggregate_id,
            "occurred_at": self.occurred_at.isoformat(),
            "payload": dict(self.payload),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Envelope:
        """Parse an envelope; raises ``ValueError`` saying what is wrong."""
        try:
            occurred_at = dt.datetime.fromisoformat(str(data["occurred_at"]))
            payload = data["payload"]
            envelope = cls(
                event_id=str(data["event_id"]),
                event_type=str(data["event_type"]),
                source=str(data["source"]),
                aggregate_id=str(data["aggregate_id"]),
                occurred_at=occurred_at,
                payload=payload,
            )
        except KeyError as missing:
            raise ValueError(f"envelope field {missing} is missing") from None
        if not isinstance(payload, Mapping):
            raise ValueError("envelope field 'payload' must be an object")
        if occurred_at.tzinfo is None:
            raise ValueError("envelope field 'occurred_at' must carry a UTC offset")
        return envelope


class UnknownEventType(LookupError):
    pass


class EventRegistry:
    """Maps event type names back to their classes, to decode envelopes."""

    def __init__(self, event_types: Iterable[type[IntegrationEvent]] = ()) -> None:
        self._types: dict[str, type[IntegrationEvent]] = {}
        for event_type in event_types:
            self.register(event_type)

    def register(self, event_type: type[IntegrationEvent]) -> None:
        self._types[event_type.type_name()] = event_type

    def __contains__(self, type_name: str) -> bool:
        return type_name in self._types

    def decode(self, envelope: Envelope) -> IntegrationEvent:
        try:
            event_type = self._types[envelope.event_type]
        except KeyError:
            raise UnknownEventType(envelope.event_type) from None
        known = {field.name for field in dataclasses.fields(event_type)}
        # Fields a newer publisher added are ignored: consumers must tolerate them.
        fields = {key: value for key, value in envelope.payload.items() if key in known}
        return event_type(event_id=envelope.event_id, occurred_at=envelope.occurred_at, **fields)
