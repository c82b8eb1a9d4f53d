"""servicekit's public surface, pinned: both deployables build on it, so a
change to it is a change to both and should be made on purpose."""

from __future__ import annotations

import importlib

import pytest

SURFACE = {
    "servicekit.errors": {
        "Conflict",
        "DependencyUnavailable",
        "DomainError",
        "Gone",
        "NotFound",
        "RuleViolated",
    },
    "servicekit.events": {"Envelope", "EventRegistry", "IntegrationEvent", "UnknownEventType"},
    "servicekit.inbox": {"EventBus", "HandlerFailed", "inbox_table"},
    "servicekit.outbox": {
        "DEFAULT_BACKOFF_BASE",
        "DEFAULT_BACKOFF_MAX",
        "DEFAULT_MAX_ATTEMPTS",
        "OutboxRelay",
        "RelayReport",
        "PromptDelivery",
        "outbox_table",
        "write_to_outbox",
    },
    "servicekit.uow": {"AfterCommit", "OnBegin", "UnitOfWork"},
    "servicekit.ownership": {
        "ACTING_USER_HEADER",
        "MONOLITH",
        "MOVING",
        "OWNED",
        "SERVICE",
        "SLOTS",
        "TABLE_SLOT",
        "USER_BUCKETS",
        "ActingUserRequired",
        "NotOwner",
        "OwnershipGuard",
        "OwnershipMoving",
        "RETIRED",
        "Retired",
        "acting_scope",
        "bucket",
        "ownership_table",
    },
    "servicekit.migrations": {"database_url", "run_migrations"},
    "servicekit.cli": {"events_group"},
    "servicekit.requestids": {
        "MAX_REQUEST_ID_LENGTH",
        "NO_REQUEST_ID",
        "REQUEST_ID_HEADER",
        "accept_request_id",
        "bound_request_id",
        "current_request_id",
        "is_acceptable_request_id",
        "new_request_id",
    },
    "servicekit.logs": {"LOG_FORMAT", "RequestIdFilter", "configure_logging", "current_request_id"},
    "servicekit.idempotency": {
        "DEFAULT_LOCK_TIMEOUT",
        "IDEMPOTENCY_KEY_HEADER",
        "IdempotencyKeys",
        "KeyInFlight",
        "KeyReused",
        "Reply",
        "fingerprint",
        "idempotency_table",
    },
}


@pytest.mark.parametrize("module", sorted(SURFACE))
def test_the_public_surface_is_what_it_was(module):
    imported = importlib.import_module(module)

    assert set(imported.__all__) == SURFACE[module]
    assert all(hasattr(imported, name) for name in imported.__all__)
