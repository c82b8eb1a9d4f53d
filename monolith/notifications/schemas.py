"""Shapes of the notifications API."""

from __future__ import annotations

import marshmallow as ma

from monolith.notifications.domain import DeliveryStatus, Kind


class NotificationQuerySchema(ma.Schema):
    user_id = ma.fields.UUID(required=True)


class NotificationSchema(ma.Schema):
    id = ma.fields.String()
    user_id = ma.fields.String()
    kind = ma.fields.Enum(Kind, by_value=True)
    recipient = ma.fields.String()
    subject = ma.fields.String()
    body = ma.fields.String()
    status = ma.fields.Enum(DeliveryStatus, by_value=True)
    event_id = ma.fields.String()
    created_at = ma.fields.AwareDateTime()
