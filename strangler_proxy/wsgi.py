"""Entry point for gunicorn: ``gunicorn strangler_proxy.wsgi:app``.

Each worker imports this after the fork, so each builds its own pools,
database engine and route-table poller.
"""

from strangler_proxy.app import create_app
from strangler_proxy.logs import configure_proxy_logging

configure_proxy_logging()
app = create_app()
