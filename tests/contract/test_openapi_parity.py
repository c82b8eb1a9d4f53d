"""The billing service publishes the very OpenAPI contract the monolith did."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from extracted.billing_service import create_app as create_billing_service
from monolith import create_app as create_monolith

BILLING_PREFIX = "/billing"


def openapi(app: Any) -> dict[str, Any]:
    return app.test_client().get("/api/openapi.json").get_json()


def billing_contract(spec: dict[str, Any]) -> dict[str, Any]:
    """The billing paths, and every component they reference, transitively."""
    paths = {p: ops for p, ops in spec["paths"].items() if p.startswith(BILLING_PREFIX)}
    components: dict[str, Any] = {}
    frontier: Any = paths
    while True:
        found = set(re.findall(r"#/components/(\w+)/(\w+)", json.dumps(frontier)))
        found -= set(components)
        if not found:
            break
        for kind, name in found:
            components[(kind, name)] = spec["components"][kind][name]
        frontier = [components[ref] for ref in found]
    tags = [tag for tag in spec.get("tags", []) if tag["name"] == "billing"]
    return {
        "paths": paths,
        "components": {f"{kind}/{name}": value for (kind, name), value in components.items()},
        "tags": tags,
    }


@pytest.fixture(scope="module")
def contracts(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    directory = tmp_path_factory.mktemp("openapi")
    monolith = create_monolith({"DATABASE_URL": f"sqlite:///{directory / 'm.db'}"})
    service = create_billing_service({"DATABASE_URL": f"sqlite:///{directory / 's.db'}"})
    return billing_contract(openapi(monolith)), billing_contract(openapi(service))


def test_the_billing_paths_and_schemas_are_identical(contracts):
    monolith, service = contracts

    assert len(monolith["paths"]) >= 8, "the comparison must see the billing paths"
    assert {"schemas/Plan", "schemas/Payment", "schemas/Error"} <= set(monolith["components"])
    assert len(monolith["tags"]) == 1
    assert sorted(service["paths"]) == sorted(monolith["paths"])
    for path, operations in monolith["paths"].items():
        assert service["paths"][path] == operations, f"{path} differs"
    assert service["components"] == monolith["components"]
    assert service["tags"] == monolith["tags"]


def test_a_difference_would_be_caught(contracts):
    monolith, service = contracts
    changed = json.loads(json.dumps(service))
    changed["components"]["schemas/Payment"]["properties"].pop("currency")

    assert changed != monolith


def test_internal_endpoints_stay_out_of_the_public_documents(tmp_path):
    monolith = create_monolith({"DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}"})
    service = create_billing_service({"DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}"})

    for spec in (openapi(monolith), openapi(service)):
        assert not [path for path in spec["paths"] if path.startswith("/internal")]
