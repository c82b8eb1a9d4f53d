"""The integration events of other deployables that the billing service consumes.

The consumer's own reading of the publisher's contract (the envelope JSON):
only the fields billing uses. The class name is the event type on the wire.
The publisher may add fields; :class:`~servicekit.events.EventRegistry`
ignores the ones declared nowhere here.
"""

from __future__ import annotations

import dataclasses

from servicekit.events import IntegrationEvent


@dataclasses.dataclass(frozen=True, kw_only=True)
class UserDeactivated(IntegrationEvent):
    """Published by the monolith's users module; billing cancels the user's subscriptions."""

    aggregate_field = "user_id"
    user_id: str


CONSUMED = (UserDeactivated,)
