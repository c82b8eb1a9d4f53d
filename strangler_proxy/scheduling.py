"""When a proxy worker's event loop may preempt the process on its core: at
once while it is lightly loaded, only at the end of that process's slice
while it is busy.

A proxy wakes two or three times per request, for microseconds each. When
one request is in flight, its client waits for exactly that hop, and the
wake-up should run at once (Linux's default policy, SCHED_OTHER, preempts
on wake-up). When many are in flight, they are waiting for the upstream,
which is then the bottleneck: beside it on the same cores, each wake-up that
preempts it costs it a switch and cold caches too, and slows every request
down. There the loop runs as SCHED_BATCH, which only gives up wake-up
preemption: a woken loop waits for the task on the core to end its slice
(a core that is idle runs it at once, as always). ``docs/architecture.md``
has the measurements.

Only the loop's thread changes policy. The worker's other threads (records,
shadow comparison, admin API) wake once a second or less, and they take the
GIL when they run: one that yielded while holding it would make the loop
wait for the end of someone else's slice. A thread the loop starts while it
yields would inherit that policy, so such threads set the default for
themselves (``default_policy``). Where these policies do not exist (not
Linux), nothing changes.
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["BUSY", "LIGHT", "WakeupPolicy", "default_policy"]

#: At most this many requests in flight in the worker: preempt on wake-up.
LIGHT = 1
#: From this many on: yield (the upstream is the bottleneck). In between,
#: the policy stays as it was, so that a load around a threshold does not
#: switch it back and forth.
BUSY = 4

_set_scheduler = getattr(os, "sched_setscheduler", None)


def _set(batch: bool) -> None:
    """This thread's policy (the calling thread's only, on Linux)."""
    if _set_scheduler is not None:
        _set_scheduler(0, os.SCHED_BATCH if batch else os.SCHED_OTHER, os.sched_param(0))


def default_policy() -> None:
    """This thread runs as SCHED_OTHER, whatever the thread that started it
    runs as (a thread pool's initializer)."""
    _set(False)


class WakeupPolicy:
    """The event loop thread's policy, told the worker's requests in flight
    as each begins and ends (``FrontDoor(on_load=...)``). The loop starts
    with the default policy."""

    def __init__(self, set_policy: Callable[[bool], None] = _set) -> None:
        self._set = set_policy
        self.batch = False

    def __call__(self, in_flight: int) -> None:
        if self.batch and in_flight <= LIGHT:
            self._set(False)
            self.batch = False
        elif not self.batch and in_flight >= BUSY:
            self._set(True)
            self.batch = True
