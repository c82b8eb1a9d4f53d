"""Internal endpoints between deployables: signed requests, the HTTP inbox, the poster.

Events cross from one deployable to another like this::

    outbox -> OutboxRelay -> EventPoster
           -- signed POST /internal/events -->
    inbox_blueprint -> EventBus -> handlers (applied once, inbox table)

- :class:`EventPoster` is a relay's ``deliver``: it POSTs the envelope's JSON,
  signed, and raises unless the other side answered 2xx — so the relay
  retries with backoff and parks what keeps failing.
- :func:`inbox_blueprint` is the receiving end: it verifies the signature
  (401, nothing changed), parses the envelope (422), and hands it to the
  deployable's :class:`~servicekit.inbox.EventBus`, which applies it once per
  handler. 200 when applied — or ignored, because a consumer must tolerate
  event types it does not handle — and 503 when a handler failed, so that
  the sender tries again.

These routes are plain Flask blueprints, not flask-smorest ones: they are
not part of the public API, nor of its OpenAPI document.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, jsonify, request

from servicekit.events import Envelope
from servicekit.httpclient import HttpClient
from servicekit.inbox import EventBus, HandlerFailed
from servicekit.signing import Keyring, SignatureRejected
from servicekit.web import error_response

__all__ = ["INBOX_PATH", "EventPoster", "inbox_blueprint", "require_signature"]

logger = logging.getLogger(__name__)

INBOX_PATH = "/internal/events"


class DeliveryRefused(Exception):
    """The receiving inbox answered, but not with 2xx."""


def require_signature(blueprint: Blueprint, keyring: Keyring) -> None:
    """Refuse every request to ``blueprint`` that ``keyring`` cannot verify (401)."""

    @blueprint.before_request
    def _verify() -> Response | None:
        try:
            key_id = keyring.verify(
                request.method, request.path, request.get_data(cache=True), request.headers
            )
        except SignatureRejected as rejected:
            logger.warning("refused %s %s: %s", request.method, request.path, rejected)
            return error_response(401, str(rejected))
        logger.debug("signed by key %s", key_id)
        return None


def inbox_blueprint(bus: EventBus, keyring: Keyring) -> Blueprint:
    """``POST /internal/events``: another deployable's events, applied once each."""
    blueprint = Blueprint("internal_inbox", __name__)
    require_signature(blueprint, keyring)

    @blueprint.post(INBOX_PATH)
    def receive() -> Response:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            return error_response(422, "the body must be an event envelope (a JSON object)")
        try:
            envelope = Envelope.from_json(data)
        except ValueError as invalid:
            return error_response(422, f"not a valid envelope: {invalid}")
        if envelope.event_type not in bus.subscriptions():
            # Tolerated, not refused: the publisher may be newer than this consumer.
            return jsonify(event_id=envelope.event_id, outcome="ignored")
        try:
            bus.deliver(envelope)
        except HandlerFailed as failed:
            return error_response(503, f"event {envelope.event_id} not applied: {failed}")
        except (TypeError, ValueError) as undecodable:
            # The payload lacks a field the handler needs: retrying will not help,
            # the sender's relay parks it for an operator after a few attempts.
            return error_response(422, f"event {envelope.event_id} cannot be read: {undecodable}")
        return jsonify(event_id=envelope.event_id, outcome="applied")

    return blueprint


class EventPoster:
    """A relay's ``deliver``: POST each envelope to another deployable's inbox."""

    def __init__(self, client: HttpClient, path: str = INBOX_PATH) -> None:
        self._client = client
        self._path = path

    def __call__(self, envelope: Envelope) -> None:
        response = self._client.post(self._path, json_body=envelope.to_json())
        if not response.is_success:
            raise DeliveryRefused(
                f"{self._client.name} answered {response.status_code}: {_message(response)}"
            )


def _message(response: Any) -> str:
    try:
        return str(response.json().get("message", response.text))[:500]
    except ValueError:
        return str(response.text)[:500]
