"""The front door (server.py) on a fake transport: how requests are framed in
and answers framed out, without sockets. The hostile cases over real sockets
are in test_hardening.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from strangler_proxy.server import BodyRefused, ClientConnection, FrontDoor, Request

SETTINGS = {
    "MAX_BODY_BYTES": 100,
    "MAX_HEADER_BYTES": 4096,
    "HEADER_TIMEOUT": 0.2,
    "SEND_TIMEOUT": 1.0,
    "CLIENT_KEEPALIVE": 0.2,
}


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000)

    @property
    def text(self) -> bytes:
        return b"".join(self.writes)


Answer = Callable[[Request, ClientConnection], Awaitable[None]]


def serve(answer: Answer, **settings: Any) -> tuple[ClientConnection, FakeTransport, list[Request]]:
    """A connection whose handler records each request and runs ``answer``."""
    seen: list[Request] = []

    async def handler(request: Request, client: ClientConnection) -> None:
        seen.append(request)
        await answer(request, client)

    door = FrontDoor(handler, {**SETTINGS, **settings})
    door.loop = asyncio.get_running_loop()
    connection = ClientConnection(door)
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    return connection, transport, seen


async def settle(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the condition never held"
        await asyncio.sleep(0.005)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


GET = b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n"


async def hello(request: Request, client: ClientConnection) -> None:
    client.start(200, [(b"content-length", b"5")])
    await client.write(b"hello")
    client.end()


def test_the_head_goes_out_with_the_first_body_bytes() -> None:
    async def scenario() -> None:
        connection, transport, _ = serve(hello)
        connection.data_received(GET)
        await settle(lambda: bool(transport.writes))
        assert len(transport.writes) == 1
        assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n")
        assert transport.writes[0].endswith(b"\r\n\r\nhello")
        assert not transport.closed  # keep-alive

    run(scenario)


def test_a_head_answer_sends_its_head_alone_at_the_end() -> None:
    async def scenario() -> None:
        connection, transport, _ = serve(hello)
        connection.data_received(b"HEAD /x HTTP/1.1\r\nHost: t\r\n\r\n")
        await settle(lambda: bool(transport.writes))
        assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"]

    run(scenario)


def test_an_answer_of_unknown_length_is_chunked_for_http_1_1() -> None:
    async def streamed(request: Request, client: ClientConnection) -> None:
        client.start(200, [])
        await client.write(b"abc")
        await client.write(b"")  # nothing to frame: not the last chunk
        await client.write(b"de")
        client.end()

    async def scenario() -> None:
        connection, transport, _ = serve(streamed)
        connection.data_received(GET)
        await settle(lambda: transport.text.endswith(b"0\r\n\r\n"))
        head, _, body = transport.text.partition(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head
        assert body == b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        assert not transport.closed

    run(scenario)


def test_an_http_1_0_client_gets_the_body_delimited_by_the_close() -> None:
    async def streamed(request: Request, client: ClientConnection) -> None:
        client.start(200, [])
        await client.write(b"abc")
        client.end()

    async def scenario() -> None:
        connection, transport, _ = serve(streamed)
        connection.data_received(b"GET /x HTTP/1.0\r\n\r\n")
        await settle(lambda: transport.closed)
        head, _, body = transport.text.partition(b"\r\n\r\n")
        assert b"chunked" not in head
        assert b"connection: close" in head
        assert body == b"abc"

    run(scenario)


def test_pipelined_requests_are_answered_in_order_one_at_a_time() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()

        async def slow_first(request: Request, client: ClientConnection) -> None:
            if request.target == b"/first":
                await gate.wait()
            client.respond(200, [], request.target)

        connection, transport, seen = serve(slow_first)
        connection.data_received(
            b"GET /first HTTP/1.1\r\nHost: t\r\n\r\nGET /second HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        await asyncio.sleep(0.02)
        assert [r.target for r in seen] == [b"/first"]  # the second waits its turn
        assert not transport.reading  # and no more is read meanwhile
        gate.set()
        await settle(lambda: transport.text.endswith(b"/second"))
        assert transport.text.index(b"/first") < transport.text.index(b"/second")
        assert transport.reading

    run(scenario)


def test_a_head_the_parser_refuses_never_reaches_the_handler() -> None:
    async def scenario() -> None:
        connection, transport, seen = serve(hello)
        # RFC 9112 6.3: a request whose last transfer coding is not chunked
        connection.data_received(b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n")
        await settle(lambda: transport.closed)
        assert transport.text.startswith(b"HTTP/1.1 400 ")
        assert b'"request_id"' in transport.text  # the project's JSON error envelope
        assert seen == []

    run(scenario)


def test_continue_is_sent_only_when_the_body_is_asked_for() -> None:
    async def scenario() -> None:
        asked = asyncio.Event()

        async def reader(request: Request, client: ClientConnection) -> None:
            await asked.wait()
            body = await client.read_body(request, timeout=1.0)
            client.respond(200, [], body)

        connection, transport, _ = serve(reader)
        connection.data_received(
            b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
        )
        await asyncio.sleep(0.02)
        assert transport.writes == []
        asked.set()
        await settle(lambda: transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"])
        connection.data_received(b"abc")
        await settle(lambda: transport.text.endswith(b"abc"))
        assert b"HTTP/1.1 200 OK" in transport.text

    run(scenario)


def test_a_body_over_the_limit_is_refused_while_it_arrives() -> None:
    async def scenario() -> None:
        refusals: list[int] = []

        async def reader(request: Request, client: ClientConnection) -> None:
            try:
                await client.read_body(request, timeout=1.0)
            except BodyRefused as refusal:
                refusals.append(refusal.status)
                client.respond(refusal.status, [], b"", close=True)

        connection, transport, _ = serve(reader)
        connection.data_received(
            b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        connection.data_received(b"%x\r\n%s\r\n" % (150, b"x" * 150))
        await settle(lambda: transport.closed)
        assert refusals == [413]

    run(scenario)


@pytest.mark.parametrize(
    "sent, expected",
    [(b"", b""), (b"GET /x HTTP/1.1\r\nHost: t\r\n", b"HTTP/1.1 408 ")],
    ids=["nothing sent: closed quietly", "half a head: 408"],
)
def test_a_connection_that_says_too_little_is_closed_in_time(sent: bytes, expected: bytes) -> None:
    async def scenario() -> None:
        connection, transport, seen = serve(hello)
        if sent:
            connection.data_received(sent)
        await settle(lambda: transport.closed, timeout=1.0)
        assert transport.text.startswith(expected)
        assert seen == []

    run(scenario)


def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive() -> None:
    async def scenario() -> None:
        connection, transport, _ = serve(hello, CLIENT_KEEPALIVE=0.1, HEADER_TIMEOUT=5.0)
        connection.data_received(GET)
        await settle(lambda: bool(transport.writes))
        assert not transport.closed
        await settle(lambda: transport.closed, timeout=1.0)
        assert len(transport.writes) == 1  # closed quietly: no answer to a request never sent

    run(scenario)
