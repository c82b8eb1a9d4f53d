"""The billing service publishes the very OpenAPI contract the monolith did.

:func:`contract_differences` is the comparison; the parity test asserts it
finds nothing between the two real apps, and the planted tests change one
side's real schema (the class its blueprint is built with) and see the
comparison name what changed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import marshmallow as ma
import pytest
from flask import Flask
from marshmallow import validate

from extracted.billing_service import create_app as create_billing_service
from monolith import create_app as create_monolith

BILLING_PREFIX = "/billing"

#: Where each side's billing blueprint finds its schemas when it is built.
HTTP_MODULES = {
    "monolith": "monolith.billing.http",
    "service": "extracted.billing_service.billing.http",
}


def openapi(app: Flask) -> dict[str, Any]:
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


def contract_differences(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Every place where ``actual``'s billing contract departs from ``expected``'s,
    one line each, named by its path in the document (``[]``: identical)."""
    return list(_differences(billing_contract(expected), billing_contract(actual), ""))


def _differences(expected: Any, actual: Any, where: str) -> Any:
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(expected.keys() | actual.keys()):
            inner = f"{where}/{key}" if where else key
            if key not in actual:
                yield f"{inner}: missing"
            elif key not in expected:
                yield f"{inner}: unexpected"
            else:
                yield from _differences(expected[key], actual[key], inner)
    elif isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        for index, (mine, theirs) in enumerate(zip(expected, actual, strict=True)):
            yield from _differences(mine, theirs, f"{where}[{index}]")
    elif expected != actual:
        yield f"{where}: {expected!r} != {actual!r}"


def build(side: str, directory: Any) -> Flask:
    """The real app of ``side``, on a database file in ``directory``."""
    create = create_monolith if side == "monolith" else create_billing_service
    return create({"DATABASE_URL": f"sqlite:///{directory / (side + '.db')}"})


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Both sides' OpenAPI documents, unchanged."""
    directory = tmp_path_factory.mktemp("openapi")
    return {side: openapi(build(side, directory)) for side in HTTP_MODULES}


def test_the_billing_paths_and_schemas_are_identical(specs):
    monolith = billing_contract(specs["monolith"])

    assert len(monolith["paths"]) >= 8, "the comparison must see the billing paths"
    assert {"schemas/Plan", "schemas/Payment", "schemas/Error"} <= set(monolith["components"])
    assert len(monolith["tags"]) == 1
    assert contract_differences(specs["monolith"], specs["service"]) == []


# --- a planted difference is caught ------------------------------------------


def planted(
    monkeypatch: pytest.MonkeyPatch,
    side: str,
    schema: str,
    change: Callable[[type[ma.Schema]], dict[str, Any]],
) -> None:
    """Make ``side``'s blueprint use a ``schema`` changed by ``change`` (the
    class attributes of a same-named subclass), as an edit to its schemas.py would."""
    module = __import__(HTTP_MODULES[side], fromlist=[schema])
    original = getattr(module, schema)
    monkeypatch.setattr(module, schema, type(schema, (original,), change(original)))


def test_a_field_whose_type_changed_is_named(specs, monkeypatch, tmp_path):
    planted(monkeypatch, "service", "PaymentSchema", lambda _: {"currency": ma.fields.Integer()})

    found = contract_differences(specs["monolith"], openapi(build("service", tmp_path)))

    assert found == ["components/schemas/Payment/properties/currency/type: 'string' != 'integer'"]


def test_a_field_removed_on_one_side_is_named(specs, monkeypatch, tmp_path):
    planted(
        monkeypatch,
        "monolith",
        "InvoiceSchema",
        lambda _: {"Meta": type("Meta", (), {"exclude": ("outstanding_minor",)})},
    )

    found = contract_differences(openapi(build("monolith", tmp_path)), specs["service"])

    assert found == ["components/schemas/Invoice/properties/outstanding_minor: unexpected"]


def test_a_changed_validation_rule_is_named(specs, monkeypatch, tmp_path):
    planted(
        monkeypatch,
        "service",
        "PlanCreateSchema",
        lambda _: {
            "code": ma.fields.String(required=True, validate=validate.Regexp(r"^[a-z]{1,64}$"))
        },
    )

    found = contract_differences(specs["monolith"], openapi(build("service", tmp_path)))

    assert [line.split(":")[0] for line in found] == [
        "components/schemas/PlanCreate/properties/code/pattern"
    ]


def test_internal_endpoints_stay_out_of_the_public_documents(specs):
    for spec in specs.values():
        assert not [path for path in spec["paths"] if path.startswith("/internal")]
