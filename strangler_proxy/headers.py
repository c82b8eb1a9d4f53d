"""Pure header rules: what a request may carry, what goes to the upstream and
what comes back to the client. Bytes in, bytes out; no I/O, unit-tested.

Header names arrive lower-cased (the server does it), values as bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from servicekit.requestids import is_acceptable_request_id

__all__ = [
    "HOP_BY_HOP",
    "BadRequest",
    "RequestFacts",
    "check_request",
    "request_id_from",
    "response_headers",
    "upstream_headers",
]

Headers = list[tuple[bytes, bytes]]

REQUEST_ID_HEADER = b"x-request-id"
#: Headers only the proxy sets; a client sending them is ignored.
INTERNAL_PREFIX = b"x-strangler-"
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
#: Never passed on: the proxy writes its own (Host, framing) or answers itself (Expect).
_NOT_FORWARDED = frozenset({b"host", b"x-request-id", b"expect", b"content-length"})
#: A host name or IPv4 address, or a bracketed IPv6 address, and an optional port.
_HOST = re.compile(
    rb"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)
#: RFC 9110 token characters: what a method may be made of.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class BadRequest(ValueError):
    """The request is refused before any upstream hears of it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RequestFacts:
    """What the dispatcher needs from the request's headers, read in one pass."""

    __slots__ = ("chunked", "connection_named", "content_length", "cookie", "host", "request_id")

    def __init__(self) -> None:
        self.content_length: int | None = None
        self.chunked = False
        self.host = b""
        self.cookie = b""
        self.request_id = b""
        self.connection_named: frozenset[bytes] = frozenset()


def check_request(method: str, http_version: str, headers: Headers) -> RequestFacts:
    """Refuse what nginx refuses (method, Host, framing); return what was read."""
    if not _TOKEN.fullmatch(method):
        raise BadRequest(400, "bad method")
    if method == "CONNECT":
        raise BadRequest(405, "CONNECT is not supported")
    facts = RequestFacts()
    hosts = 0
    lengths: set[bytes] = set()
    codings = 0
    for name, value in headers:
        if name == b"host":
            hosts += 1
            facts.host = value
        elif name == b"content-length":
            lengths.add(value.strip())
        elif name == b"transfer-encoding":
            codings += 1
            if value.strip().lower() != b"chunked":
                raise BadRequest(501, "only the chunked transfer coding is supported")
            facts.chunked = True
        elif name == b"cookie":
            facts.cookie = value if not facts.cookie else facts.cookie + b"; " + value
        elif name == b"x-request-id":
            facts.request_id = value
        elif name == b"connection":
            facts.connection_named = frozenset(token.strip().lower() for token in value.split(b","))
    if hosts > 1 or (hosts == 0 and http_version == "1.1"):
        raise BadRequest(400, "a request needs exactly one Host header")
    if hosts and not _HOST.fullmatch(facts.host):
        raise BadRequest(400, "bad Host header")
    if codings > 1 or (codings and lengths):
        raise BadRequest(400, "conflicting body framing")
    if len(lengths) > 1:
        raise BadRequest(400, "conflicting Content-Length headers")
    if lengths:
        (length,) = lengths
        if not length.isdigit() or len(length) > 18:
            raise BadRequest(400, "bad Content-Length")
        facts.content_length = int(length)
    return facts


def request_id_from(value: bytes) -> str | None:
    """The client's request id, if it is short and harmless (servicekit's one rule)."""
    text = value.decode("latin-1")
    return text if text and is_acceptable_request_id(text) else None


def canary_key(facts: RequestFacts, headers: Headers, header: bytes, cookie: bytes) -> bytes:
    """The caller's key for a sticky canary: a header, else a cookie, else b""."""
    for name, value in headers:
        if name == header and value:
            return value
    if facts.cookie:
        for part in facts.cookie.split(b";"):
            part = part.strip()
            if part.startswith(cookie):
                return part[len(cookie) :]
    return b""


def upstream_headers(
    headers: Headers,
    facts: RequestFacts,
    *,
    peer: str,
    trusted: bool,
    scheme: str,
    request_id: str,
) -> Headers:
    """The request's headers as an upstream gets them: hop-by-hop, internal,
    underscored and (from an untrusted peer) ``X-Forwarded-*`` ones dropped,
    forwarding ones set."""
    connection_named = facts.connection_named
    result: Headers = []
    prior_for = b""
    forwarded_proto = forwarded_host = False
    for name, value in headers:
        if (
            name in HOP_BY_HOP
            or name in _NOT_FORWARDED
            or name in connection_named
            or name.startswith(INTERNAL_PREFIX)
            # as nginx does: a WSGI upstream reads "SCRIPT_NAME" or "X_Forwarded_For"
            # as if the proxy had set it
            or b"_" in name
        ):
            continue
        if name.startswith(b"x-forwarded-"):
            if not trusted:
                continue
            if name == b"x-forwarded-for":
                prior_for = value if not prior_for else prior_for + b", " + value
                continue
            forwarded_proto = forwarded_proto or name == b"x-forwarded-proto"
            forwarded_host = forwarded_host or name == b"x-forwarded-host"
        result.append((name, value))
    address = peer.encode("ascii")
    result.append((b"x-forwarded-for", prior_for + b", " + address if prior_for else address))
    if not forwarded_proto:
        result.append((b"x-forwarded-proto", scheme.encode("ascii")))
    if not forwarded_host:
        result.append((b"x-forwarded-host", facts.host))
    result.append((b"x-request-id", request_id.encode("ascii")))
    return result


def response_headers(
    headers: Iterable[tuple[bytes, bytes]], request_id: str, held: float = 0.0
) -> Headers:
    """The upstream's response headers as the client gets them; a request the
    fence held says for how long (``Server-Timing: fence;dur=<ms>``)."""
    result: Headers = []
    has_request_id = False
    connection_named: set[bytes] = set()
    for name, value in headers:
        lowered = name.lower()
        if lowered in HOP_BY_HOP:
            if lowered == b"connection":
                connection_named.update(token.strip().lower() for token in value.split(b","))
            continue
        has_request_id = has_request_id or lowered == REQUEST_ID_HEADER
        result.append((name, value))
    if connection_named:  # rare: an upstream naming its own hop-by-hop headers
        result = [(name, value) for name, value in result if name.lower() not in connection_named]
        has_request_id = has_request_id and REQUEST_ID_HEADER not in connection_named
    if not has_request_id:
        result.append((b"X-Request-ID", request_id.encode("ascii")))
    if held:
        result.append((b"Server-Timing", f"fence;dur={held * 1000:.1f}".encode("ascii")))
    return result
