"""The pure header rules (``strangler_proxy.headers``): what a request may
carry, what an upstream gets and what the client gets back."""

from __future__ import annotations

import pytest

from strangler_proxy.headers import (
    BadRequest,
    check_request,
    request_id_from,
    response_headers,
    upstream_headers,
)


def forwarded(headers, *, trusted=False, peer="10.0.0.7"):
    facts = check_request("GET", "1.1", headers)
    result = upstream_headers(
        headers, facts, peer=peer, trusted=trusted, scheme="http", request_id="rid-1"
    )
    return dict(result), result


def test_hop_by_hop_connection_named_internal_and_underscored_headers_are_dropped():
    headers, _ = forwarded(
        [
            (b"host", b"proxy.test"),
            (b"connection", b"keep-alive, x-drop-me"),
            (b"x-drop-me", b"1"),
            (b"te", b"trailers"),
            (b"proxy-authorization", b"Basic x"),
            (b"x-strangler-shadow", b"1"),
            (b"script_name", b"/evil"),
            (b"expect", b"100-continue"),
            (b"traceparent", b"00-abc"),
        ]
    )
    assert set(headers) == {
        b"traceparent",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-request-id",
    }
    assert headers[b"x-forwarded-host"] == b"proxy.test"
    assert headers[b"x-request-id"] == b"rid-1"


@pytest.mark.parametrize(
    ("trusted", "expected_for", "expected_proto"),
    [(False, b"10.0.0.7", b"http"), (True, b"203.0.113.9, 10.0.0.7", b"https")],
)
def test_forwarding_headers_are_believed_only_from_a_trusted_peer(
    trusted, expected_for, expected_proto
):
    headers, result = forwarded(
        [
            (b"host", b"t"),
            (b"x-forwarded-for", b"203.0.113.9"),
            (b"x-forwarded-proto", b"https"),
        ],
        trusted=trusted,
    )
    assert headers[b"x-forwarded-for"] == expected_for
    assert headers[b"x-forwarded-proto"] == expected_proto
    assert [name for name, _ in result].count(b"x-forwarded-proto") == 1


@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        ("G@T", [(b"host", b"t")], 400),
        ("CONNECT", [(b"host", b"t")], 405),
        ("GET", [], 400),
        ("GET", [(b"host", b"a"), (b"host", b"b")], 400),
        ("GET", [(b"host", b"a/b")], 400),
        ("GET", [(b"host", b"..")], 400),
        ("GET", [(b"host", b"t"), (b"transfer-encoding", b"gzip")], 501),
        (
            "GET",
            [(b"host", b"t"), (b"transfer-encoding", b"chunked"), (b"content-length", b"3")],
            400,
        ),
        ("GET", [(b"host", b"t"), (b"content-length", b"3"), (b"content-length", b"4")], 400),
        ("GET", [(b"host", b"t"), (b"content-length", b"-1")], 400),
    ],
)
def test_what_nginx_refuses_is_refused(method, headers, status):
    with pytest.raises(BadRequest) as refused:
        check_request(method, "1.1", headers)
    assert refused.value.status == status


def test_a_plain_request_passes_with_its_facts():
    facts = check_request(
        "POST",
        "1.1",
        [(b"host", b"[::1]:8000"), (b"content-length", b"12"), (b"cookie", b"a=1")],
    )
    assert (facts.content_length, facts.chunked, facts.cookie) == (12, False, b"a=1")
    assert check_request("GET", "1.0", []).host == b""  # HTTP/1.0 may omit Host


def test_a_request_id_is_taken_only_when_short_and_harmless():
    assert request_id_from(b"<script>") is None
    assert request_id_from(b"trace-me.1:2") == "trace-me.1:2"
    assert request_id_from(b"x" * 129) is None
    assert request_id_from(b"a b") is None


def test_response_headers_drop_hop_by_hop_and_keep_repeats():
    result = response_headers(
        [
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
            (b"Connection", b"close, X-Secret"),
            (b"X-Secret", b"no"),
            (b"Transfer-Encoding", b"chunked"),
        ],
        "rid-1",
    )
    assert result == [
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"X-Request-ID", b"rid-1"),
    ]
