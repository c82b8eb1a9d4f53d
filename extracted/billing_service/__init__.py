"""The billing service: billing, extracted from the monolith. See README.md.

``flask --app extracted.billing_service ...`` finds :func:`create_app` here.
"""

from extracted.billing_service.app import create_app

__all__ = ["create_app"]
