"""EventBus.forward: a subscription whose consumer is another deployable."""

from __future__ import annotations

import shutil

import pytest

from monolith.users.events import UserDeactivated, UserRegistered
from servicekit.events import Envelope
from servicekit.inbox import EventBus, HandlerFailed
from tests.architecture.test_import_contracts import DEPLOYABLE_RULE, add_line, lint_imports
from tests.support.processes import ROOT


def deactivation() -> Envelope:
    return Envelope.wrap(UserDeactivated(user_id="u1"), source="users")


def test_a_forwarded_event_is_handed_over_as_it_is():
    bus = EventBus()
    received = []
    bus.forward(UserDeactivated, received.append, name="tests.billing_service")

    envelope = deactivation()
    bus.deliver(envelope)
    bus.deliver(Envelope.wrap(UserRegistered(user_id="u1", email="a@b.c", name="A"), source="u"))

    assert received == [envelope]
    assert bus.subscriptions() == {"UserDeactivated": ["tests.billing_service"]}


def test_a_failed_forward_fails_the_delivery_so_that_the_relay_retries():
    bus = EventBus()

    def unreachable(envelope: Envelope) -> None:
        raise ConnectionError("billing service down")

    bus.forward(UserDeactivated, unreachable, name="tests.billing_service")

    with pytest.raises(HandlerFailed, match="billing service down"):
        bus.deliver(deactivation())


def test_the_service_may_never_import_the_monolith(tmp_path):
    for package in ("servicekit", "monolith", "extracted", "strangler_proxy"):
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    add_line(
        tmp_path / "extracted/billing_service/billing/services.py",
        "from monolith.users.api import UserSummary",
    )

    result = lint_imports(tmp_path)

    assert result.returncode != 0
    assert f"{DEPLOYABLE_RULE} BROKEN" in result.stdout, result.stdout
