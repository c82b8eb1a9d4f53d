"""The users HTTP API: parse, call a service, let errors map themselves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask.views import MethodView

from monolith.users import services
from monolith.users.domain import User
from monolith.users.repository import UsersUnitOfWork
from monolith.users.schemas import (
    UserCreateSchema,
    UserListQuerySchema,
    UserSchema,
    UserUpdateSchema,
)
from servicekit.web import ServiceBlueprint as Blueprint


def create_blueprint(uow: Callable[[], UsersUnitOfWork]) -> Blueprint:
    blp = Blueprint("users", __name__, url_prefix="/users", description="Users")

    @blp.route("")
    class Users(MethodView):
        @blp.arguments(UserListQuerySchema, location="query")
        @blp.response(200, UserSchema(many=True))
        @blp.paginate()
        def get(self, query: dict[str, Any], pagination_parameters: Any) -> list[User]:
            """List users, oldest first"""
            users, total = services.list_users(
                uow(),
                offset=pagination_parameters.first_item,
                limit=pagination_parameters.page_size,
                active=query.get("active"),
            )
            pagination_parameters.item_count = total
            return users

        @blp.arguments(UserCreateSchema)
        @blp.response(201, UserSchema)
        @blp.alt_response(409, description="The email is taken")
        def post(self, data: dict[str, Any]) -> User:
            """Register a user"""
            return services.register(uow(), email=data["email"], name=data["name"])

    @blp.route("/<uuid:user_id>")
    class UserById(MethodView):
        @blp.response(200, UserSchema)
        @blp.alt_response(404, description="No such user")
        def get(self, user_id: Any) -> User:
            """Get a user"""
            return services.get(uow(), str(user_id))

        @blp.arguments(UserUpdateSchema)
        @blp.response(200, UserSchema)
        @blp.alt_response(404, description="No such user")
        @blp.alt_response(409, description="The email is taken, or the user is deactivated")
        def patch(self, data: dict[str, Any], user_id: Any) -> User:
            """Change a user's name or email"""
            return services.update(uow(), str(user_id), **data)

    @blp.route("/<uuid:user_id>/deactivate")
    class UserDeactivation(MethodView):
        @blp.response(200, UserSchema)
        @blp.alt_response(404, description="No such user")
        @blp.alt_response(409, description="Already deactivated")
        def post(self, user_id: Any) -> User:
            """Deactivate a user; billing cancels their subscriptions"""
            return services.deactivate(uow(), str(user_id))

    return blp
