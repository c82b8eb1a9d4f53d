"""Property-based: whatever schemathesis derives from the monolith's own
OpenAPI document — valid input and invalid — the answer is never a 5xx."""

from __future__ import annotations

import itertools
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from monolith import create_app
from tests.support.databases import migrate

#: `make test` walks every operation with a fixed, derandomized set of inputs,
#: so CI is repeatable; `make fuzz` explores with fresh random ones.
EXAMPLES_PER_OPERATION = int(os.environ.get("FUZZ_EXAMPLES", "15"))
EXPLORE = os.environ.get("FUZZ_RANDOM") == "1"


@pytest.fixture(scope="module")
def schema(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'monolith.db'}"
    migrate("monolith", url)
    return schemathesis.openapi.from_wsgi("/api/openapi.json", create_app({"DATABASE_URL": url}))


def test_no_input_makes_the_api_fail(schema):
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15

    for operation, mode in itertools.product(operations, GenerationMode):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=not EXPLORE,
            suppress_health_check=list(HealthCheck),
        )
        def never_a_server_error(case):
            case.call_and_validate(checks=[not_a_server_error])

        never_a_server_error()
