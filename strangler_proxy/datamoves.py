"""The proxy's client of the data mover: the state of a move (for the gate
and the listing) and the commands `strangler data ...` sends through the
admin API. Commands are signed like every internal call."""

from __future__ import annotations

import logging
from typing import Any

from servicekit.errors import DependencyUnavailable
from servicekit.httpclient import HttpClient
from servicekit.signing import Keyring

__all__ = ["DEFAULT_MOVER_TIMEOUT", "DataMoves"]

logger = logging.getLogger(__name__)

#: The mover answers from memory and one small query: a slow answer is a sick mover.
DEFAULT_MOVER_TIMEOUT = 2.0


class DataMoves:
    def __init__(
        self, url: str, keyring: Keyring, *, timeout: float = DEFAULT_MOVER_TIMEOUT
    ) -> None:
        self._client = HttpClient(
            url,
            name="the data mover",
            keyring=keyring,
            connect_timeout=timeout,
            read_timeout=timeout,
            read_retries=0,
        )

    def status(self, move: str) -> dict[str, Any] | None:
        """The move's status; None when the mover cannot say (down, or no such move)."""
        try:
            response = self._client.get(f"/moves/{move}")
        except DependencyUnavailable as unavailable:
            logger.info("no status for move %s: %s", move, unavailable)
            return None
        if response.status_code != 200:
            return None
        return response.json()  # type: ignore[no-any-return]

    def command(self, move: str, verb: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """POST a command; (status, body) as the mover answered. Raises
        DependencyUnavailable when the mover cannot be reached."""
        response = self._client.post(f"/moves/{move}/{verb}", json_body=body or {})
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, {"message": response.text}

    def close(self) -> None:
        self._client.close()
