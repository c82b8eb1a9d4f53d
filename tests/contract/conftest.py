"""One billing contract, two implementations: the monolith's billing module and
the billing service, both served by gunicorn as `make run` serves them.

``billing`` is parametrised: every contract test runs against each side.
Users are always registered on the monolith; the service asks the
monolith's users API about them, as it does in production.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.extracted.deployment import Deployment, deployed

SIDES = ["monolith", "service"]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployed(
        tmp_path_factory.mktemp("contract"),
        billing_adapter="inprocess",
        with_service=True,
        relays=False,  # the contract is the API's; events are tested elsewhere
    ) as running:
        yield running


@pytest.fixture(scope="module", params=SIDES)
def billing(request: pytest.FixtureRequest, deployment: Deployment) -> Iterator[httpx.Client]:
    """A client of the billing API, on the monolith or on the billing service."""
    url = deployment.monolith_url if request.param == "monolith" else deployment.service_url
    with httpx.Client(base_url=url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def users(deployment: Deployment) -> Iterator[httpx.Client]:
    """The monolith's users API: where users live, whichever side serves billing."""
    with httpx.Client(base_url=deployment.monolith_url, timeout=10) as client:
        yield client
