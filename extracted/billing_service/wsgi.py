"""Entry point for gunicorn: ``gunicorn extracted.billing_service.wsgi:app``."""

from extracted.billing_service.app import create_app
from servicekit.logs import configure_logging

configure_logging()
app = create_app()
