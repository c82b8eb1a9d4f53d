"""gunicorn settings of the proxy: servicekit's, plus what a proxy needs.

``gunicorn --config python:strangler_proxy.gunicorn_conf strangler_proxy.main:app``
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from typing import Any

from servicekit.gunicorn_conf import *  # noqa: F403  (the shared settings)
from servicekit.gunicorn_conf import logconfig_dict as shared_logconfig

# Metrics of every worker, summed at scrape time (prometheus multiprocess
# mode). Set before anything imports prometheus_client, which reads it once.
_METRICS_DIR_PREFIX = "strangler-metrics-"
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=_METRICS_DIR_PREFIX)

# One event loop per worker (uvloop, httptools): a request costs no thread
# hand-off, and a slow client holds a socket, not a worker. See server.py.
worker_class = "strangler_proxy.worker.ProxyWorker"
# The proxy decides whom to trust itself (PROXY_TRUSTED_PEERS); gunicorn's
# default would let any local client set X-Forwarded-Proto or SCRIPT_NAME.
forwarded_allow_ips = ""
# The proxy writes its own access log line (with route, mode and upstream).
accesslog = None  # type: ignore[assignment]


_logging: dict[str, Any] = copy.deepcopy(shared_logconfig)
# gunicorn logs access whenever a logconfig_dict is given; ours is richer, so mute its own.
_logging["loggers"]["gunicorn.access"]["level"] = "WARNING"
logconfig_dict = _logging


def on_exit(server):  # type: ignore[no-untyped-def]
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if os.path.basename(directory).startswith(_METRICS_DIR_PREFIX):
        shutil.rmtree(directory, ignore_errors=True)


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
