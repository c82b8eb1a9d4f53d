"""The access log of a flush: one log record for all of its requests, read as
one line per request, each with its own request id."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest

from servicekit.logs import LOG_FORMAT, RequestIdFilter
from strangler_proxy.metrics import Metrics
from strangler_proxy.recording import Record, Recorder, access_logger
from strangler_proxy.traffic import Traffic


@pytest.fixture
def written() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    access_logger.addHandler(handler)
    access_logger.setLevel(logging.INFO)
    yield stream
    access_logger.removeHandler(handler)


def test_each_request_reads_as_a_line_of_its_own(written: io.StringIO) -> None:
    recorder = Recorder(Metrics(), Traffic(), access_log=True)
    for number, (route, note) in enumerate([(None, ""), ("billing", ""), ("billing", "x")]):
        recorder.add(
            Record(
                route,
                "canary",
                "billing",
                "GET",
                f"/p/{number}",
                200,
                0.002,
                f"r{number}",
                None,
                note,
            )
        )
    assert recorder.flush() == 3
    lines = written.getvalue().splitlines()
    assert len(lines) == 3
    line = re.compile(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO \[(r\d)\] strangler_proxy\.access: "
        r"rid=(r\d) method=GET path=/p/\d status=200 route=(\S+) mode=canary upstream=billing "
        r"ms=2\.00( note=x)?$"
    )
    matched = [line.match(text) for text in lines]
    assert all(matched), lines
    assert [(m[1], m[2], m[3]) for m in matched if m] == [
        ("r0", "r0", "-"),
        ("r1", "r1", "billing"),
        ("r2", "r2", "billing"),
    ]
    assert lines[2].endswith(" note=x")


def test_an_empty_flush_logs_nothing(written: io.StringIO) -> None:
    assert Recorder(Metrics(), Traffic(), access_log=True).flush() == 0
    assert written.getvalue() == ""
