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

#: The mover answers a status from memory and one small query: a slow answer is a sick mover.
DEFAULT_MOVER_TIMEOUT = 2.0
#: A command may wait for the mover's loop to finish a step, or for a table lock.
DEFAULT_COMMAND_TIMEOUT = 60.0


class DataMoves:
    def __init__(
        self,
        url: str,
        keyring: Keyring,
        *,
        timeout: float = DEFAULT_MOVER_TIMEOUT,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
    ) -> None:
        self._client = HttpClient(
            url,
            name="the data mover",
            keyring=keyring,
            connect_timeout=timeout,
            read_timeout=timeout,
            read_retries=0,
        )
        self._commands = HttpClient(
            url,
            name="the data mover",
            keyring=keyring,
            connect_timeout=timeout,
            read_timeout=command_timeout,
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
        try:
            status = response.json()
        except ValueError:  # something else answers on the mover's port
            return None
        return status if isinstance(status, dict) else None

    def command(self, move: str, verb: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """POST a command; (status, body) as the mover answered. Raises
        DependencyUnavailable when the mover cannot be reached."""
        response = self._commands.post(f"/moves/{move}/{verb}", json_body=body or {})
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            answer = {"message": f"the data mover answered {response.status_code}"}
        return response.status_code, answer

    def close(self) -> None:
        self._client.close()
        self._commands.close()
