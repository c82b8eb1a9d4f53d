"""Entry point for gunicorn: ``gunicorn --workers 1 datamover.wsgi:app``.

One worker: the moves run on its threads, and a second worker would only wait
for their leases.
"""

from datamover.app import create_app
from servicekit.logs import configure_logging

configure_logging()
app = create_app()
