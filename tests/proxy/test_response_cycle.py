"""The server writes a response's head with its first body bytes: one write."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.flow_control import FlowControl

from strangler_proxy.server import ProxyResponseCycle


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def cycle(transport: FakeTransport, method: str = "GET", keep_alive: bool = True) -> Any:
    return ProxyResponseCycle(
        scope={"method": method, "http_version": "1.1"},  # type: ignore[typeddict-item]
        transport=transport,  # type: ignore[arg-type]
        flow=FlowControl(transport),  # type: ignore[arg-type]
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=[],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: None,
    )


START = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}


def test_the_head_goes_out_with_the_first_body_bytes() -> None:
    async def scenario() -> list[bytes]:
        transport = FakeTransport()
        answer = cycle(transport)
        await answer.send(START)
        assert transport.writes == []  # held, not lost
        await answer.send({"type": "http.response.body", "body": b"he", "more_body": True})
        await answer.send({"type": "http.response.body", "body": b"llo", "more_body": False})
        return transport.writes

    writes = asyncio.run(scenario())
    assert len(writes) == 2
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and writes[0].endswith(b"\r\n\r\nhe")
    assert writes[1] == b"llo"


def test_a_head_answer_sends_its_head_before_any_close() -> None:
    """uvicorn writes no body for HEAD, and closes a connection that is not kept."""

    async def scenario(keep_alive: bool) -> FakeTransport:
        transport = FakeTransport()
        answer = cycle(transport, "HEAD", keep_alive)
        await answer.send(START)
        await answer.send({"type": "http.response.body", "body": b"", "more_body": False})
        return transport

    for keep_alive in (True, False):
        transport = asyncio.run(scenario(keep_alive))
        assert len(transport.writes) == 1
        assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
        assert transport.closed is not keep_alive


def test_an_empty_body_message_lets_a_held_head_go() -> None:
    """What the dispatcher sends before it cuts a connection mid-body."""

    async def scenario() -> list[bytes]:
        transport = FakeTransport()
        answer = cycle(transport)
        await answer.send(START)
        await answer.send({"type": "http.response.body", "body": b"", "more_body": True})
        return transport.writes

    writes = asyncio.run(scenario())
    assert len(writes) == 1 and writes[0].endswith(b"\r\n\r\n")
