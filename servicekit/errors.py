"""Domain error categories, free of HTTP.

Modules raise subclasses of these from their domain and services; the web
layer (:mod:`servicekit.web`) maps each category to one status code and the
one error envelope, so handlers need no ``try`` blocks and a rule is never
re-typed as an HTTP detail.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Conflict",
    "DependencyUnavailable",
    "DomainError",
    "Gone",
    "NotFound",
    "RuleViolated",
]


class DomainError(Exception):
    """Base of every expected failure. ``code`` is the machine-readable name."""

    code = "domain_error"
    #: False for a refusal that changed nothing and may succeed elsewhere or
    #: later (a write sent to the side that does not own the records): it is
    #: never stored as an idempotency key's reply.
    remembered = True

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(DomainError):
    code = "not_found"


class Gone(DomainError):
    """What was asked for existed here and never will again (a decommissioned module)."""

    code = "gone"


class Conflict(DomainError):
    """The request is valid but clashes with the current state."""

    code = "conflict"


class RuleViolated(DomainError):
    """The request breaks a business rule (e.g. paying more than is owed)."""

    code = "rule_violated"


class DependencyUnavailable(DomainError):
    """Something this operation needs cannot be reached; nothing was written."""

    code = "dependency_unavailable"
