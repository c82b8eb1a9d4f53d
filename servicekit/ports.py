"""Where each process of `make run` listens, said in one place.

``PROXY_PORT``, ``MONOLITH_PORT``, ``BILLING_PORT`` and ``MOVER_PORT`` move a
process (the Procfile binds each to its variable) *and* every peer that calls
it: each deployable's default URL for a peer comes from here, so setting the
four ports is all it takes to run the system elsewhere on the machine. A
deployable's own ``*_URL`` setting still wins, for peers on other hosts.
"""

from __future__ import annotations

import os

__all__ = ["DEFAULT_PORTS", "local_url", "port"]

#: The process names of the Procfile, and the ports they listen on by default.
DEFAULT_PORTS = {"proxy": 8000, "monolith": 8001, "billing": 8002, "mover": 8003}


def port(process: str) -> int:
    """The port ``process`` listens on: ``<PROCESS>_PORT``, else its default."""
    return int(os.environ.get(f"{process.upper()}_PORT") or DEFAULT_PORTS[process])


def local_url(process: str) -> str:
    """The base URL of ``process`` on this machine."""
    return f"http://127.0.0.1:{port(process)}"
