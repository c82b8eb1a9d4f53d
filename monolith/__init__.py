"""The monolith: one deployable, one database, three modules. See README.md.

``flask --app monolith ...`` finds :func:`create_app` here.
"""

from monolith.app import create_app

__all__ = ["create_app"]
