"""servicekit's one HTTP client: timeouts, retried reads, a circuit breaker, signing."""

from __future__ import annotations

import httpx
import pytest

from servicekit.httpclient import HttpClient, Unavailable
from servicekit.signing import Keyring
from tests.support.processes import poll


class Upstream:
    """A scripted dependency: answers the statuses (or raises the errors) in turn."""

    def __init__(self, *answers: int | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer, json={"answer": answer})


def client(upstream: Upstream, **options) -> HttpClient:
    options = {"backoff": 0.0, **options}
    return HttpClient(
        "http://users.test", name="users", transport=httpx.MockTransport(upstream), **options
    )


def test_a_read_is_retried_until_it_is_answered():
    upstream = Upstream(httpx.ConnectError("refused"), 503, 200)

    response = client(upstream, read_retries=2).get("/users/1")

    assert response.status_code == 200
    assert len(upstream.requests) == 3


def test_a_read_that_keeps_failing_is_unavailable_with_a_clear_message():
    upstream = Upstream(httpx.ReadTimeout("slow"))

    with pytest.raises(Unavailable, match="users could not be reached: ReadTimeout"):
        client(upstream, read_retries=2).get("/users/1")
    assert len(upstream.requests) == 3


def test_an_answer_below_500_is_an_answer_not_a_failure():
    upstream = Upstream(404)
    users = client(upstream, breaker_failures=1)

    assert users.get("/users/1").status_code == 404
    assert users.get("/users/1").status_code == 404
    assert len(upstream.requests) == 2


def test_a_write_is_tried_once():
    upstream = Upstream(503)

    with pytest.raises(Unavailable):
        client(upstream).post("/internal/events", json_body={"a": 1})
    assert len(upstream.requests) == 1


def test_the_breaker_opens_after_repeated_failures_and_stops_calling():
    upstream = Upstream(httpx.ConnectError("refused"))
    users = client(upstream, read_retries=0, breaker_failures=3, breaker_reset=60)

    for _ in range(3):
        with pytest.raises(Unavailable, match="could not be reached"):
            users.get("/users/1")
    with pytest.raises(Unavailable, match="circuit open"):
        users.get("/users/1")

    assert len(upstream.requests) == 3


def test_the_breaker_closes_again_after_its_reset_time():
    upstream = Upstream(httpx.ConnectError("refused"), 200)
    users = client(upstream, read_retries=0, breaker_failures=1, breaker_reset=0.05)
    with pytest.raises(Unavailable):
        users.get("/users/1")
    with pytest.raises(Unavailable, match="circuit open"):
        users.get("/users/1")

    def answered() -> bool:
        try:
            return users.get("/users/1").status_code == 200
        except Unavailable:
            return False

    poll(answered, timeout=2, message="the breaker never let a call through again")
    assert len(upstream.requests) == 2


def test_requests_are_signed_when_a_keyring_is_given():
    upstream = Upstream(200)
    keyring = Keyring.parse("k1:secret")

    client(upstream, keyring=keyring).post("/internal/events", json_body={"a": 1})
    [request] = upstream.requests

    assert keyring.verify("POST", "/internal/events", request.content, request.headers) == "k1"
    assert request.headers["Content-Type"] == "application/json"
