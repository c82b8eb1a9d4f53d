"""Entry point for gunicorn: ``gunicorn monolith.wsgi:app``."""

from monolith.app import create_app
from servicekit.logs import configure_logging

configure_logging()
app = create_app()
