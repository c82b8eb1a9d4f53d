"""The one HTTP client a deployable uses to call another: timeouts, retries, a breaker.

Every call between deployables goes through :class:`HttpClient`, so each
has the same defences:

- **timeouts**: a short connect timeout (is anyone there?) and a read
  timeout (is it answering?) — never wait forever on another process;
- **retries for reads**: a GET that could not connect, timed out or got a
  502/503/504 is tried again with exponential backoff and jitter. Writes are
  not retried here: whoever writes knows whether a retry is safe (the
  outbox relay retries deliveries, which the receiver applies once);
- **a circuit breaker** (pybreaker): after ``breaker_failures`` failed calls in
  a row the client stops calling for ``breaker_reset`` seconds and fails at
  once, so a dead dependency costs callers nothing but an error;
- **signing**: with a :class:`~servicekit.signing.Keyring`, every request is
  signed for the internal endpoints of the other side.

What cannot be had is :class:`Unavailable`, a
:class:`~servicekit.errors.DependencyUnavailable`: the web layer answers it
with 503 and the error envelope. Answers below 500 are returned as they are:
a 404 is an answer, not a failure.
"""

from __future__ import annotations

import json
import logging
import random
import time
from typing import Any

import httpx
import pybreaker

from servicekit.errors import DependencyUnavailable
from servicekit.signing import Keyring

__all__ = [
    "DEFAULT_BREAKER_FAILURES",
    "DEFAULT_BREAKER_RESET",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_READ_RETRIES",
    "DEFAULT_READ_TIMEOUT",
    "HttpClient",
    "Unavailable",
]

logger = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 1.0
DEFAULT_READ_TIMEOUT = 5.0
DEFAULT_READ_RETRIES = 2
DEFAULT_BACKOFF = 0.1
DEFAULT_BREAKER_FAILURES = 5
DEFAULT_BREAKER_RESET = 10.0
#: Statuses that say "not now" rather than "no": worth another try, and a failure.
RETRYABLE_STATUSES = frozenset({502, 503, 504})


class Unavailable(DependencyUnavailable):
    code = "dependency_unavailable"


class _Failed(Exception):
    """A call that counts against the breaker (the dependency failed, not the caller)."""


class HttpClient:
    """Calls one other deployable at ``base_url``."""

    def __init__(
        self,
        base_url: str,
        *,
        name: str,
        keyring: Keyring | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        read_retries: int = DEFAULT_READ_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        breaker_failures: int = DEFAULT_BREAKER_FAILURES,
        breaker_reset: float = DEFAULT_BREAKER_RESET,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.name = name
        self._keyring = keyring
        self._read_retries = read_retries
        self._backoff = backoff
        self._client = httpx.Client(
            base_url=base_url,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            transport=transport,
        )
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=breaker_failures,
            reset_timeout=breaker_reset,
            exclude=[lambda error: not isinstance(error, _Failed)],
            throw_new_error_on_trip=False,
            name=name,
        )

    def get(self, path: str, *, params: dict[str, Any] | None = None) -> httpx.Response:
        """GET, retried with backoff while the dependency is not answering."""
        return self._call("GET", path, params=params, attempts=1 + self._read_retries)

    def post(
        self, path: str, *, json_body: Any, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """POST once; the caller decides whether and when to try again."""
        body = json.dumps(json_body, separators=(",", ":")).encode()
        return self._call("POST", path, content=body, headers=headers, attempts=1)

    def close(self) -> None:
        self._client.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        attempts: int,
        params: dict[str, Any] | None = None,
        content: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        request = self._client.build_request(
            method, path, params=params, content=content or None, headers=headers
        )
        if content:
            request.headers["Content-Type"] = "application/json"
        try:
            return self.breaker.call(self._send, request, attempts)  # type: ignore[no-any-return]
        except pybreaker.CircuitBreakerError:
            raise Unavailable(
                f"{self.name} is unavailable (circuit open after repeated failures); "
                "nothing was written, try again shortly",
                dependency=self.name,
            ) from None
        except _Failed as failure:
            raise Unavailable(
                f"{self.name} could not be reached: {failure}; nothing was written",
                dependency=self.name,
            ) from None

    def _send(self, request: httpx.Request, attempts: int) -> httpx.Response:
        problem = ""
        for attempt in range(attempts):
            if attempt:
                # Full jitter: retries from many callers do not arrive in step.
                time.sleep(random.uniform(0, self._backoff * 2 ** (attempt - 1)))
            if self._keyring is not None:
                # Signed per attempt: the timestamp must be fresh.
                body = request.read()
                request.headers.update(self._keyring.sign(request.method, request.url.path, body))
            try:
                response = self._client.send(request)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__} {exc}".strip()
                continue
            if response.status_code not in RETRYABLE_STATUSES:
                return response
            problem = f"it answered {response.status_code}"
            response.close()
        logger.warning("%s %s %s failed: %s", self.name, request.method, request.url, problem)
        raise _Failed(problem)
