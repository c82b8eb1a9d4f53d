"""Entry point for gunicorn: ``gunicorn --config python:strangler_proxy.gunicorn_conf
strangler_proxy.asgi:app`` (the config names the worker class, server.ProxyWorker).

Each worker imports this after the fork, so each builds its own pools,
database engine and background thread.
"""

from servicekit.logs import configure_logging
from strangler_proxy.bootstrap import bootstrap

configure_logging()
app = bootstrap().app
