"""Entry point for gunicorn: ``gunicorn --config python:strangler_proxy.gunicorn_conf
strangler_proxy.main:app`` (the config names the worker class, worker.ProxyWorker,
which serves ``app``, the dispatcher, on its front door).

Each worker imports this after the fork, so each builds its own pools,
database engine and background threads.
"""

import gc
import sys

from servicekit.logs import configure_logging
from strangler_proxy.bootstrap import bootstrap

#: The event loop shares the GIL with the background threads (records, shadow
#: comparison, admin API); by default a thread that wants the GIL waits up to
#: 5 ms for another to let go, which a request on the loop would pay in full.
GIL_SWITCH_INTERVAL = 0.001

sys.setswitchinterval(GIL_SWITCH_INTERVAL)
configure_logging()
app = bootstrap().app
# What the worker built at start (the admin app, SQLAlchemy's mappings, the
# route table) lives as long as it does: out of the collector's sight, a full
# collection no longer walks it, and no request waits behind that walk.
gc.collect()
gc.freeze()
