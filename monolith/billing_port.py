"""Branch by abstraction: the monolith's one way to reach billing, wherever it runs.

Everything in the monolith outside billing that needs billing goes through a
:class:`BillingPort`. Today that is a single need, and it travels as an
event: when users deactivates someone, billing must cancel their
subscriptions. (Notifications needs nothing from billing but its events,
which carry all it uses.) So the port is about where billing's share of the
monolith's events goes:

- :class:`InProcessBilling` — billing is the module in this process: its
  handlers are subscribed to the monolith's event bus, as before the
  extraction, and run in billing's own transactions;
- :class:`HttpBilling` — billing is the billing service: the events it
  consumes are posted, signed, to the service's inbox (``POST
  /internal/events``), which applies each once. The monolith's billing
  handlers are not subscribed at all, so nothing is cancelled twice.

- :class:`RetiringBilling` — billing is the module in this process until its
  decommission (``strangler data complete billing``), the billing service
  from then on: each event goes to whichever billing is at the moment it is
  delivered. The in-process adapter of a monolith that knows where the
  service is gets this one, so a running monolith stops cancelling
  subscriptions in tables it no longer owns (and is about to archive) and
  posts them to the service instead, without a restart.

``MONOLITH_BILLING_ADAPTER=inprocess|http`` picks one (monolith/config.py).
Either way the events leave through the users outbox relay: delivery is at
least once, in order per user, retried with backoff while the service is down
and parked after too many attempts (``flask --app monolith events parked``).
The other direction — billing's own events back to notifications — needs no
port: the service's relay posts them to the monolith's inbox.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from monolith.billing.api import BillingFacade
from monolith.users.events import UserDeactivated
from servicekit.events import Envelope
from servicekit.httpclient import HttpClient
from servicekit.inbox import EventBus
from servicekit.internal import EventPoster

__all__ = ["ADAPTERS", "BillingPort", "HttpBilling", "InProcessBilling", "RetiringBilling"]

INPROCESS = "inprocess"
HTTP = "http"
ADAPTERS = (INPROCESS, HTTP)


class BillingPort(Protocol):
    """Where billing is, as far as the rest of the monolith is concerned."""

    def connect(self, bus: EventBus) -> None:
        """Make billing hear, from ``bus``, the monolith's events it consumes."""


class InProcessBilling:
    """Billing is the module in this process (the facade in ``billing/api.py``)."""

    def __init__(self, facade: BillingFacade) -> None:
        self._facade = facade

    def connect(self, bus: EventBus) -> None:
        self._facade.listen(bus)


class HttpBilling:
    """Billing is the billing service: a signed client of its internal inbox."""

    #: The events of the monolith the billing service consumes (its README says the same).
    CONSUMES = (UserDeactivated,)

    def __init__(self, client: HttpClient) -> None:
        self._post = EventPoster(client)

    def connect(self, bus: EventBus) -> None:
        for event_type in self.CONSUMES:
            bus.forward(event_type, self._post, name=f"{__name__}.{type(self).__name__}")


class RetiringBilling:
    """Billing in this process until ``retired()`` says it was decommissioned here,
    then the billing service (see the module's docstring)."""

    CONSUMES = HttpBilling.CONSUMES

    def __init__(
        self, facade: BillingFacade, client: HttpClient, *, retired: Callable[[], bool]
    ) -> None:
        # The in-process handlers keep their own inbox and transactions: they
        # hear the events from a bus of their own, which only this adapter feeds.
        self._in_process = EventBus()
        facade.listen(self._in_process)
        self._post = EventPoster(client)
        self._retired = retired

    def connect(self, bus: EventBus) -> None:
        handlers = self._in_process.subscriptions()
        for event_type in self.CONSUMES:
            # Named after billing's own handlers: the module map still shows
            # billing consuming the event, wherever billing runs when it comes.
            name = next(iter(handlers.get(event_type.type_name(), [])), __name__)
            bus.forward(event_type, self._deliver, name=name)

    def _deliver(self, envelope: Envelope) -> None:
        if self._retired():
            self._post(envelope)
        else:
            self._in_process.deliver(envelope)
