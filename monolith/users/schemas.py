"""Request and response shapes of the users API."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import validate

NAME = validate.Length(min=1, max=200)


class UserCreateSchema(ma.Schema):
    email = ma.fields.Email(required=True, validate=validate.Length(max=320))
    name = ma.fields.String(required=True, validate=NAME)


class UserUpdateSchema(ma.Schema):
    email = ma.fields.Email(validate=validate.Length(max=320))
    name = ma.fields.String(validate=NAME)

    @ma.validates_schema
    def _something_to_change(self, data: dict[str, object], **_: object) -> None:
        if not data:
            raise ma.ValidationError("give at least one of: email, name")


class UserListQuerySchema(ma.Schema):
    active = ma.fields.Boolean()


class UserSchema(ma.Schema):
    id = ma.fields.String(dump_only=True)
    email = ma.fields.String()
    name = ma.fields.String()
    active = ma.fields.Boolean()
    created_at = ma.fields.AwareDateTime()
    updated_at = ma.fields.AwareDateTime()
    deactivated_at = ma.fields.AwareDateTime(allow_none=True)
