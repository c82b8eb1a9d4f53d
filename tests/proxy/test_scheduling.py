"""When a worker's event loop preempts on wake-up and when it yields
(scheduling.py), and how the front door tells it its load."""

from __future__ import annotations

import asyncio

from strangler_proxy.scheduling import BUSY, LIGHT, WakeupPolicy
from strangler_proxy.server import ClientConnection, FrontDoor, Request
from tests.proxy.test_front_door import SETTINGS, FakeTransport, run, settle


def test_the_loop_preempts_when_light_and_yields_when_busy_without_flapping():
    switched: list[bool] = []
    policy = WakeupPolicy(switched.append)
    for in_flight in [1, 2, BUSY - 1, BUSY, BUSY + 3, BUSY - 1, 2, LIGHT, 0, 2, BUSY]:
        policy(in_flight)
    # starts preempting (the default); busy: yield; light again: preempt;
    # busy: yield. Between the thresholds, nothing changes.
    assert switched == [True, False, True]
    assert policy.batch


def test_the_front_door_reports_the_requests_in_flight():
    run(_three_requests_in_flight)


async def _three_requests_in_flight() -> None:
    loads: list[int] = []
    release = asyncio.Event()

    async def answer(request: Request, client: ClientConnection) -> None:
        await release.wait()
        client.respond(200, [], b"ok")

    door = FrontDoor(answer, SETTINGS, on_load=loads.append)
    door.loop = asyncio.get_running_loop()
    connections = [ClientConnection(door) for _ in range(3)]
    for connection in connections:
        connection.connection_made(FakeTransport())  # type: ignore[arg-type]
        connection.data_received(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    await settle(lambda: door.in_flight == 3)
    release.set()
    await settle(lambda: door.in_flight == 0)
    assert loads == [1, 2, 3, 2, 1, 0]
