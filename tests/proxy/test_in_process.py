"""The proxy app in-process (httpx's WSGI transport) in front of real upstreams:
forwarding, modes, shadow comparison and the admin API."""

from __future__ import annotations

import time

import pytest

from tests.proxy.conftest import TOKENS, client_for, set_mode, start_upstream
from tests.proxy.raw import flaky_upstream, raw_upstream
from tests.support.processes import free_port, poll

ADMIN = {"Authorization": f"Bearer {TOKENS['admin']}"}


def served_by(response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["upstream"]


# --- forwarding --------------------------------------------------------------


def test_unmatched_paths_and_monolith_routes_go_to_the_monolith(proxy_client):
    assert served_by(proxy_client.get("/anything/else")) == "monolith"
    assert served_by(proxy_client.get("/billing/plans")) == "monolith"


def test_request_headers_are_cleaned_and_forwarding_headers_set(proxy_client):
    echoed = proxy_client.get(
        "/echo/headers",
        headers={
            "Connection": "keep-alive, X-Drop-Me",
            "X-Drop-Me": "secret",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "X-Forwarded-For": "6.6.6.6",
            "X-Forwarded-Host": "evil.example",
            "X-Strangler-Shadow": "1",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        },
    ).json()
    headers = echoed["headers"]

    for dropped in ("x-drop-me", "keep-alive", "te", "proxy-authorization", "x-strangler-shadow"):
        assert dropped not in headers
    assert headers["x-forwarded-for"] == "127.0.0.1"  # the client's claim is not trusted
    assert headers["x-forwarded-host"] == "proxy.test"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736")
    assert len(headers["x-request-id"]) == 32


def test_forwarded_headers_from_a_trusted_peer_are_kept(make_proxy):
    with client_for(make_proxy(TRUSTED_PEERS="127.0.0.1")) as client:
        headers = client.get("/echo/x", headers={"X-Forwarded-For": "203.0.113.9"}).json()[
            "headers"
        ]
    assert headers["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"


def test_the_request_id_is_passed_on_and_returned(proxy_client):
    response = proxy_client.get("/echo/x", headers={"X-Request-ID": "rid-123"})

    assert response.json()["headers"]["x-request-id"] == "rid-123"
    assert response.headers["X-Request-ID"] == "rid-123"
    assert len(proxy_client.get("/echo/x").headers["X-Request-ID"]) == 32


HOP_BY_HOP_REPLY = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/plain\r\n"
    b"Set-Cookie: a=1; Path=/\r\n"
    b"Set-Cookie: b=2; Path=/\r\n"
    b"Connection: close, X-Secret-Hop\r\n"
    b"X-Secret-Hop: must not pass\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"Proxy-Authenticate: Basic\r\n"
    b"Content-Length: 2\r\n\r\nok"
)


def test_repeated_response_headers_survive_and_hop_by_hop_ones_do_not(make_proxy):
    with raw_upstream(HOP_BY_HOP_REPLY) as url, client_for(make_proxy(MONOLITH_URL=url)) as client:
        response = client.get("/anything")

    assert response.text == "ok"
    assert response.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]
    for dropped in ("x-secret-hop", "keep-alive", "proxy-authenticate", "connection"):
        assert dropped not in response.headers


def test_an_invalid_upstream_response_gets_502(make_proxy):
    with (
        raw_upstream(b"NONSENSE\r\n\r\n") as url,
        client_for(make_proxy(MONOLITH_URL=url)) as client,
    ):
        response = client.get("/anything")

    assert response.status_code == 502
    assert response.json()["request_id"] == response.headers["X-Request-ID"]


def test_bodies_are_forwarded_both_ways(proxy_client):
    body = bytes(range(256)) * 300
    echoed = proxy_client.post("/echo/upload", content=body).json()
    assert echoed["body_bytes"] == len(body)

    chunked = proxy_client.post("/echo/chunked", content=iter([b"a" * 1000, b"b" * 1000])).json()
    assert chunked["body_bytes"] == 2000

    assert len(proxy_client.get("/big", params={"bytes": 500_000}).content) == 500_000


def test_a_body_over_the_limit_is_refused_with_413_whether_sized_or_chunked(proxy_client):
    sized = proxy_client.post("/echo/x", content=b"x" * 100_001)
    chunked = proxy_client.post("/echo/x", content=iter([b"x" * 60_000, b"x" * 60_000]))

    for response in (sized, chunked):
        assert response.status_code == 413
        assert response.json()["code"] == "body_too_large"
        assert response.json()["request_id"] == response.headers["X-Request-ID"]


def test_paths_are_normalised_before_they_are_matched_and_forwarded(proxy_client):
    set_mode(proxy_client, "billing", "service")

    echoed = proxy_client.get("/users/..//billing/./x").json()

    assert echoed["upstream"] == "billing"
    assert echoed["path"] == "/billing/x"


def test_the_admin_prefix_is_never_forwarded(proxy_client):
    response = proxy_client.get("/_strangler/nothing-here")
    dotted = proxy_client.get("/x/../_strangler/routes")

    assert response.status_code == 404
    assert "upstream" not in response.json()
    assert dotted.status_code == 401  # the admin API answered, not an upstream


def test_only_idempotent_requests_are_retried_when_a_connection_fails(make_proxy):
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    with flaky_upstream(reply) as url, client_for(make_proxy(MONOLITH_URL=url)) as client:
        read = client.get("/anything")  # connection 1 drops, the retry on 2 answers
        write = client.post("/anything", content=b"x")  # connection 3 drops: no retry

    assert (read.status_code, read.text) == (200, "ok")
    assert write.status_code == 502


# --- modes -------------------------------------------------------------------


def test_service_mode_sends_the_route_to_the_service(proxy_client):
    set_mode(proxy_client, "billing", "service")
    assert served_by(proxy_client.get("/billing/plans")) == "billing"
    assert served_by(proxy_client.get("/echo/x")) == "monolith"


def test_a_canary_is_sticky_per_user(proxy_client):
    set_mode(proxy_client, "billing", "canary", 50)

    sides = {
        user: {
            served_by(proxy_client.get("/billing/x", headers={"X-User-ID": user})) for _ in range(3)
        }
        for user in (f"user-{i}" for i in range(40))
    }

    assert all(len(side) == 1 for side in sides.values())
    assert {"monolith", "billing"} == set().union(*sides.values())


def test_a_canary_key_can_come_from_a_cookie(proxy_client):
    set_mode(proxy_client, "billing", "canary", 50)
    seen = {
        served_by(proxy_client.get("/billing/x", headers={"Cookie": f"user_id=u{i}"}))
        for i in range(30)
    }
    assert seen == {"monolith", "billing"}


def test_shadow_returns_the_monolith_answer_and_stores_mismatches(proxy, proxy_client):
    set_mode(proxy_client, "differs", "shadow")

    same = proxy_client.get("/differs/same")
    really = proxy_client.get("/differs/really")

    assert same.json()["total"] == really.json()["total"] == 10  # the monolith's answer, unchanged
    mismatches = poll(
        lambda: proxy_client.get("/_strangler/routes/differs/mismatches", headers=ADMIN).json(),
        message="the mismatch was not stored",
    )
    assert len(mismatches) == 1
    assert mismatches[0]["path"] == "/differs/really"
    assert mismatches[0]["diff"] == ["$.total: 10 != 11"]
    metrics = proxy_client.get("/_strangler/metrics").text
    assert 'strangler_shadow_total{outcome="mismatch",route="differs"} 1.0' in metrics
    assert 'strangler_shadow_total{outcome="match",route="differs"} 1.0' in metrics


def test_a_shadow_with_the_same_bytes_counts_as_a_match_and_stores_nothing(proxy, proxy_client):
    set_mode(proxy_client, "differs", "shadow")

    for _ in range(3):
        assert proxy_client.get("/differs/identical").json() == {"total": 10}

    metrics = poll(
        lambda: (
            (text := proxy_client.get("/_strangler/metrics").text)
            and 'strangler_shadow_total{outcome="match",route="differs"} 3.0' in text
            and text
        ),
        message="the three matches were not counted",
    )
    assert 'outcome="mismatch"' not in metrics
    assert proxy_client.get("/_strangler/routes/differs/mismatches", headers=ADMIN).json() == []


def test_writes_are_never_shadowed(proxy_client):
    set_mode(proxy_client, "billing", "shadow")

    assert served_by(proxy_client.post("/billing/write", json={})) == "monolith"
    assert served_by(proxy_client.get("/billing/read")) == "monolith"

    # the echo upstreams name themselves, so every shadowed request mismatches
    mismatches = poll(
        lambda: proxy_client.get("/_strangler/routes/billing/mismatches", headers=ADMIN).json()
    )
    assert [(m["method"], m["path"]) for m in mismatches] == [("GET", "/billing/read")]


def test_a_safe_request_falls_back_to_the_monolith_when_the_service_is_down(make_proxy):
    proxy = make_proxy(BILLING_URL=f"http://127.0.0.1:{free_port()}")
    with client_for(proxy) as client:
        set_mode(client, "billing", "service")
        assert served_by(client.get("/billing/x")) == "monolith"
        refused = client.post("/billing/x", json={})
        assert refused.status_code == 502
        assert refused.json()["code"] == "bad_gateway"


# --- admin API ---------------------------------------------------------------


def test_the_admin_api_needs_a_token(proxy_client):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        response = proxy_client.get("/_strangler/routes", headers=headers)
        assert response.status_code == 401
        assert response.json()["code"] == "unauthorized"


def test_a_team_changes_only_its_own_routes(proxy_client):
    other = set_mode(proxy_client, "users", "service", token=TOKENS["billing-team"])
    own = set_mode(proxy_client, "billing", "service", token=TOKENS["billing-team"])
    admin = set_mode(proxy_client, "users", "service", token=TOKENS["admin"])

    assert other.status_code == 403
    assert other.json()["code"] == "forbidden"
    assert own.status_code == 200
    assert admin.status_code == 200


def test_a_stale_revision_gets_409(proxy_client):
    set_mode(proxy_client, "billing", "shadow")

    stale = proxy_client.patch(
        "/_strangler/routes/billing",
        headers=ADMIN,
        json={"mode": "service", "reason": "old view", "revision": 1},
    )

    assert stale.status_code == 409
    assert stale.json()["code"] == "stale_revision"


def test_a_bad_mode_or_percent_gets_422(proxy_client):
    def patch(**body):
        return proxy_client.patch(
            "/_strangler/routes/billing", headers=ADMIN, json={"reason": "r", "revision": 1, **body}
        )

    assert patch(mode="sideways").status_code == 422
    assert patch(mode="canary", percent=101).status_code == 422
    assert patch(mode="canary").status_code == 422
    assert patch(mode="shadow", percent=40).status_code == 422


def test_listing_and_history_show_each_step(proxy_client):
    for mode, percent in (("shadow", None), ("canary", 25), ("service", None), ("monolith", None)):
        assert (
            set_mode(proxy_client, "billing", mode, percent, reason=f"to {mode}").status_code == 200
        )

    listing = proxy_client.get("/_strangler/routes", headers=ADMIN).json()
    history = proxy_client.get("/_strangler/routes/billing/history", headers=ADMIN).json()

    assert listing["revision"] == 5
    assert [e["after"]["mode"] for e in history] == [
        "monolith",
        "service",
        "canary",
        "shadow",
        "monolith",
    ]
    assert history[2]["after"]["percent"] == 25
    assert history[0]["reason"] == "to monolith"


def test_the_admin_api_is_documented_with_openapi(proxy_client):
    spec = proxy_client.get("/_strangler/openapi.json").json()
    assert "/_strangler/routes/{name}" in spec["paths"]
    assert "patch" in spec["paths"]["/_strangler/routes/{name}"]


# --- shadow never hurts the primary -------------------------------------------


@pytest.fixture(scope="module")
def slow_service(tmp_path_factory):
    server = start_upstream("slow-billing", tmp_path_factory.mktemp("slow"), DELAY_SECONDS="10")
    yield server
    server.stop(timeout=0.5)  # its workers sleep through the shadow requests


@pytest.mark.parametrize("service", ["slow", "down"])
def test_a_slow_or_down_shadow_changes_neither_status_nor_latency(make_proxy, request, service):
    url = (
        request.getfixturevalue("slow_service").url
        if service == "slow"
        else f"http://127.0.0.1:{free_port()}"
    )
    with client_for(make_proxy(BILLING_URL=url)) as client:
        set_mode(client, "echo", "shadow")
        started = time.monotonic()
        responses = [client.get(f"/echo/{i}") for i in range(5)]
        elapsed = time.monotonic() - started

    assert [served_by(r) for r in responses] == ["monolith"] * 5
    assert elapsed < 1.0


def test_shadow_copies_are_sampled_and_bounded(make_proxy):
    with client_for(make_proxy(SHADOW_SAMPLE=0.0)) as unsampled:
        set_mode(unsampled, "differs", "shadow")
        assert unsampled.get("/differs/really").json()["total"] == 10
        assert unsampled.get("/differs/really").json()["total"] == 10
        metrics = unsampled.get("/_strangler/metrics").text

    assert 'strangler_shadow_total{outcome="skipped",route="differs"} 2.0' in metrics
    assert 'outcome="mismatch"' not in metrics


def test_a_route_samples_its_shadow_copies_of_its_own(make_proxy):
    """A busy route shadows a share of its reads; a quiet one all of them,
    whatever the proxy's default — and a later move keeps the route's share."""
    proxy = make_proxy(SHADOW_SAMPLE=0.0)
    admin = {"Authorization": f"Bearer {TOKENS['admin']}"}
    with client_for(proxy) as client:
        assert set_mode(client, "differs", "shadow", shadow_sample=1.5).status_code == 422
        assert set_mode(client, "differs", "shadow", shadow_sample=1.0).status_code == 200
        assert set_mode(client, "differs", "shadow", reason="again").status_code == 200
        assert (
            client.get("/_strangler/routes/differs", headers=admin).json()["shadow_sample"] == 1.0
        )
        assert client.get("/differs/really").json()["total"] == 10
        poll(
            lambda: (
                'strangler_shadow_total{outcome="mismatch",route="differs"} 1.0'
                in client.get("/_strangler/metrics").text
            ),
            message="the route's own sample did not shadow its request",
        )
        assert set_mode(client, "differs", "shadow", shadow_sample=None).status_code == 200
        client.get("/differs/really")
        poll(
            lambda: (
                'strangler_shadow_total{outcome="skipped",route="differs"} 1.0'
                in client.get("/_strangler/metrics").text
            ),
            message="back to the default sample (none), the request was still shadowed",
        )
