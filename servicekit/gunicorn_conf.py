"""gunicorn settings shared by every deployable (``--config python:servicekit.gunicorn_conf``).

Values come from the environment so that the Procfile and tests can tune a
process without another file.
"""

from __future__ import annotations

import os

from servicekit.logs import LOG_FORMAT

workers = int(os.environ.get("WEB_WORKERS", "2"))
threads = int(os.environ.get("WEB_THREADS", "4"))
# Without SO_REUSEPORT, keep-alive connections can pile onto one worker.
reuse_port = True
# Longer than any proxy's upstream keep-alive expiry, so the proxy closes first.
keepalive = int(os.environ.get("WEB_KEEPALIVE", "75"))
timeout = int(os.environ.get("WEB_TIMEOUT", "30"))
graceful_timeout = 10
# Several gunicorns run side by side (monolith, service, proxy, tests): the
# runtime control socket would be one shared path, so none of them opens it.
control_socket_disable = True
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}o)s'

logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "servicekit.logs.RequestIdFilter"}},
    "formatters": {"default": {"format": LOG_FORMAT}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "default",
            "filters": ["request_id"],
        }
    },
    "root": {"level": os.environ.get("LOG_LEVEL", "INFO"), "handlers": ["console"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["console"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
    },
}
