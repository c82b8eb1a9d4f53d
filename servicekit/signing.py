"""Service-to-service trust: requests signed with HMAC-SHA256.

Internal endpoints (an inbox, an internal API) answer only requests signed by
a deployable holding one of the shared keys. The signature covers::

    <timestamp> "." <METHOD> "." <path> "." <body>

so a captured request can be replayed neither to another endpoint nor with
another body, and not at all once ``DEFAULT_TOLERANCE`` has passed. Three
headers carry it::

    X-Strangler-Key-Id: k2
    X-Strangler-Timestamp: 1795740000
    X-Strangler-Signature: v1=<hex digest>

A keyring holds every key currently accepted; it signs with the first. To
rotate: add the new key *second* everywhere, then move it first everywhere
(everyone signs with it), then drop the old one. Keys are configured as
``"k2:new-secret,k1:old-secret"``.

Pure Python, no Flask: :mod:`servicekit.internal` applies it to requests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from typing import Protocol

__all__ = [
    "DEFAULT_TOLERANCE",
    "DEVELOPMENT_KEYS",
    "KEY_ID_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Keyring",
    "SignatureRejected",
]

logger = logging.getLogger(__name__)

KEY_ID_HEADER = "X-Strangler-Key-Id"
TIMESTAMP_HEADER = "X-Strangler-Timestamp"
SIGNATURE_HEADER = "X-Strangler-Signature"
SCHEME = "v1"
#: How far a request's timestamp may be from the receiver's clock, either way.
DEFAULT_TOLERANCE = 300
#: Lets `make run` work with no configuration. Anyone can read it here, so a
#: deployment that uses it trusts everyone: a warning says so at start-up.
DEVELOPMENT_KEYS = "dev:insecure-development-key-do-not-deploy"


class HeaderLookup(Protocol):
    """A dict of headers, or a case-insensitive one (werkzeug's, httpx's)."""

    def get(self, key: str, /) -> str | None: ...


class SignatureRejected(Exception):
    """The request is unsigned, badly signed or stale; ``str()`` says which."""


@dataclasses.dataclass(frozen=True)
class Keyring:
    """The keys a deployable accepts, in order; it signs with the first."""

    keys: tuple[tuple[str, bytes], ...]
    clock: Callable[[], float] = time.time
    tolerance: int = DEFAULT_TOLERANCE

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("a keyring needs at least one key")

    @classmethod
    def parse(cls, spec: str | None, *, owner: str = "this deployable") -> Keyring:
        """``"k1:secret,k2:secret"``; empty means the development key (with a warning)."""
        if not spec:
            logger.warning(
                "%s signs and accepts internal requests with the DEVELOPMENT key: set its "
                "INTERNAL_KEYS before deploying",
                owner,
            )
            spec = DEVELOPMENT_KEYS
        keys = []
        for item in spec.split(","):
            key_id, separator, secret = item.strip().partition(":")
            if not separator or not key_id or not secret:
                raise ValueError(f"a key is 'id:secret'; got {item.strip()!r}")
            keys.append((key_id, secret.encode()))
        return cls(tuple(keys))

    def sign(self, method: str, path: str, body: bytes) -> dict[str, str]:
        """The headers that sign this request with the first key."""
        key_id, secret = self.keys[0]
        timestamp = str(int(self.clock()))
        return {
            KEY_ID_HEADER: key_id,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: f"{SCHEME}={_digest(secret, timestamp, method, path, body)}",
        }

    def verify(self, method: str, path: str, body: bytes, headers: HeaderLookup) -> str:
        """Return the key id that signed the request; raise :class:`SignatureRejected`."""
        key_id = headers.get(KEY_ID_HEADER)
        timestamp = headers.get(TIMESTAMP_HEADER)
        signature = headers.get(SIGNATURE_HEADER)
        if not (key_id and timestamp and signature):
            raise SignatureRejected(
                f"internal endpoint: sign the request ({KEY_ID_HEADER}, {TIMESTAMP_HEADER}, "
                f"{SIGNATURE_HEADER})"
            )
        secret = dict(self.keys).get(key_id)
        if secret is None:
            raise SignatureRejected(f"unknown signing key {key_id!r}")
        try:
            age = abs(self.clock() - int(timestamp))
        except ValueError:
            raise SignatureRejected("the timestamp is not a number of seconds") from None
        if age > self.tolerance:
            raise SignatureRejected(f"the signature is stale (more than {self.tolerance}s off)")
        scheme, _, given = signature.partition("=")
        expected = _digest(secret, timestamp, method, path, body)
        if scheme != SCHEME or not hmac.compare_digest(given.encode(), expected.encode()):
            raise SignatureRejected("the signature does not match the request")
        return key_id


def _digest(secret: bytes, timestamp: str, method: str, path: str, body: bytes) -> str:
    message = b".".join((timestamp.encode(), method.upper().encode(), path.encode(), body))
    return hmac.new(secret, message, hashlib.sha256).hexdigest()
