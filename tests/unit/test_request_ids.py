"""The one rule for request ids (servicekit.requestids), and the log filter
that stamps them, inside Flask and outside it."""

from __future__ import annotations

import logging

import pytest
from flask import Flask, g

from servicekit.logs import RequestIdFilter
from servicekit.requestids import (
    MAX_REQUEST_ID_LENGTH,
    accept_request_id,
    bound_request_id,
    current_request_id,
)


@pytest.mark.parametrize("given", ["abc-123", "req.42:x_y", "A" * MAX_REQUEST_ID_LENGTH])
def test_a_harmless_request_id_is_kept(given):
    assert accept_request_id(given) == given


@pytest.mark.parametrize(
    "given",
    [
        None,
        "",
        "has spaces",
        "<script>",
        "line\nbreak",
        "trailing-newline\n",
        "A" * (MAX_REQUEST_ID_LENGTH + 1),
    ],
)
def test_anything_else_gets_a_new_one(given):
    made = accept_request_id(given)

    assert made != given
    assert len(made) == 32 and accept_request_id(made) == made


def stamped() -> str:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "msg", None, None)
    RequestIdFilter().filter(record)
    return record.request_id  # type: ignore[attr-defined]


def test_outside_any_request_log_lines_say_dash():
    assert current_request_id() == "-"
    assert stamped() == "-"


def test_a_bound_id_is_current_inside_the_block_only():
    with bound_request_id("outer"):
        with bound_request_id("inner"):
            assert stamped() == "inner"
        assert stamped() == "outer"

    assert stamped() == "-"


def test_inside_a_flask_request_the_requests_id_is_current():
    app = Flask("ids")
    with app.test_request_context():
        g.request_id = "flask-id"

        assert stamped() == "flask-id"
        with bound_request_id("bound-id"):
            # A forwarder serving the request outside Flask names its own.
            assert stamped() == "bound-id"
