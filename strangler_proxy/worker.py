"""gunicorn's worker for the proxy (``worker_class`` in its gunicorn config):
one uvloop event loop per process serving the front door (``server.py``) on
the sockets gunicorn opened, telling gunicorn it is alive, and stopping
gracefully on its signals.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import uvloop
from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker

from strangler_proxy import config
from strangler_proxy.scheduling import WakeupPolicy
from strangler_proxy.server import FrontDoor

__all__ = ["ProxyWorker"]


class ProxyWorker(Worker):
    """Serves the dispatcher that gunicorn loaded (``strangler_proxy.main:app``)."""

    def init_signals(self) -> None:
        # The loop installs its own handlers (run): Python-level ones would run
        # only when the loop hands control back to the interpreter.
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGUSR1, self.handle_usr1)
        signal.siginterrupt(signal.SIGUSR1, False)

    def run(self) -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(self._serve())

    async def _serve(self) -> None:
        dispatcher: Any = self.wsgi
        settings = config.load()
        door = FrontDoor(
            dispatcher,
            settings,
            on_refused=dispatcher.refused,
            on_load=WakeupPolicy() if settings["YIELD_UNDER_LOAD"] else None,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            loop.add_signal_handler(sig, self._stop, door)
        heartbeat = loop.create_task(self._heartbeat(door))
        booted = False

        def started() -> None:
            nonlocal booted
            booted = True

        try:
            await door.serve(
                [getattr(s, "sock", s) for s in self.sockets],
                grace=float(self.cfg.graceful_timeout),
                started=started,
            )
        finally:
            heartbeat.cancel()
            dispatcher.shutdown()  # the records of the last requests are written
        if not booted:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    def _stop(self, door: FrontDoor) -> None:
        self.alive = False
        door.stop()

    async def _heartbeat(self, door: FrontDoor) -> None:
        """gunicorn kills a worker that has not said it is alive for
        ``timeout`` seconds; a worker whose master is gone stops."""
        interval = max(0.5, self.timeout / 2)
        while True:
            self.notify()
            if self.ppid != os.getppid():
                self.log.info("the master is gone (was %s): stopping", self.ppid)
                door.stop()
                return
            await asyncio.sleep(interval)
