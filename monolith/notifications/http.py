"""The notifications HTTP API (read-only: messages are made by events)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask.views import MethodView

from monolith.notifications import services
from monolith.notifications.domain import Notification
from monolith.notifications.repository import NotificationsUnitOfWork
from monolith.notifications.schemas import NotificationQuerySchema, NotificationSchema
from servicekit.web import ServiceBlueprint as Blueprint


def create_blueprint(uow: Callable[[], NotificationsUnitOfWork]) -> Blueprint:
    blp = Blueprint(
        "notifications", __name__, url_prefix="/notifications", description="Notifications"
    )

    @blp.route("")
    class Notifications(MethodView):
        @blp.arguments(NotificationQuerySchema, location="query")
        @blp.response(200, NotificationSchema(many=True))
        @blp.paginate()
        def get(self, query: dict[str, Any], pagination_parameters: Any) -> list[Notification]:
            """List the messages sent to a user, oldest first"""
            found, pagination_parameters.item_count = services.list_for_user(
                uow(),
                str(query["user_id"]),
                offset=pagination_parameters.first_item,
                limit=pagination_parameters.page_size,
            )
            return found

    return blp
