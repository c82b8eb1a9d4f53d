"""The floor under any Python proxy: bytes relayed, nothing understood.

Each client connection gets its own upstream connection, and whatever
arrives on one side is written to the other, on uvloop, in as many
processes as the proxy has workers (SO_REUSEPORT). No HTTP parsing, no
routing, no headers, no records: what is left is what every asyncio proxy
pays before it reads a byte — the wake-ups, the system calls, the loop.
`make bench` runs it beside the proxy and nginx, so the CPU per request
splits into that floor and what the proxy's own work adds. It is a
measuring stick only: it knows nothing of HTTP, so it is never deployed.

    python bench/relay.py LISTEN_PORT UPSTREAM_PORT [PROCESSES]
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from typing import cast

import uvloop


class _Upstream(asyncio.Protocol):
    def __init__(self, client: asyncio.Transport) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class _Client(asyncio.Protocol):
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.upstream: asyncio.Transport | None = None
        self.early: list[bytes] = []  # what the client sent before the upstream answered

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            upstream, _ = await loop.create_connection(
                lambda: _Upstream(self.transport), "127.0.0.1", self.upstream_port
            )
        except OSError:
            self.transport.close()
            return
        if self.transport.is_closing():  # the client left while we connected
            upstream.close()
            return
        self.upstream = upstream
        for data in self.early:
            upstream.write(data)
        self.early.clear()

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.early.append(data)
        else:
            self.upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def _serve(listen_port: int, upstream_port: int) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(("127.0.0.1", listen_port))
    listener.listen(1024)
    server = await asyncio.get_running_loop().create_server(
        lambda: _Client(upstream_port), sock=listener
    )
    await server.serve_forever()


def main() -> None:
    listen_port, upstream_port = int(sys.argv[1]), int(sys.argv[2])
    processes = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    for _ in range(processes - 1):
        if os.fork() == 0:
            break  # a child serves; the first process forks the others
    uvloop.run(_serve(listen_port, upstream_port))


if __name__ == "__main__":
    main()
