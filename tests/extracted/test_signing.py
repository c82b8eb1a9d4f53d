"""HMAC request signing between deployables (servicekit.signing)."""

from __future__ import annotations

import pytest

from servicekit.signing import (
    DEVELOPMENT_KEYS,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Keyring,
    SignatureRejected,
)

NOW = 1_800_000_000.0
BODY = b'{"event_id": "e1"}'


def keyring(spec: str, *, at: float = NOW) -> Keyring:
    parsed = Keyring.parse(spec)
    return Keyring(parsed.keys, clock=lambda: at)


def signed(spec: str = "k1:secret-one", *, at: float = NOW, body: bytes = BODY) -> dict[str, str]:
    return keyring(spec, at=at).sign("POST", "/internal/events", body)


def test_a_signed_request_is_accepted_and_names_its_key():
    assert keyring("k1:secret-one").verify("POST", "/internal/events", BODY, signed()) == "k1"


@pytest.mark.parametrize(
    ("headers", "method", "path", "body", "reason"),
    [
        ({}, "POST", "/internal/events", BODY, "sign the request"),
        (signed("k1:another-secret"), "POST", "/internal/events", BODY, "does not match"),
        (signed("k9:secret-one"), "POST", "/internal/events", BODY, "unknown signing key"),
        (signed(), "POST", "/internal/events", BODY + b" ", "does not match"),
        (signed(), "POST", "/internal/other", BODY, "does not match"),
        (signed(), "PUT", "/internal/events", BODY, "does not match"),
        (signed(at=NOW - 301), "POST", "/internal/events", BODY, "stale"),
        (signed(at=NOW + 301), "POST", "/internal/events", BODY, "stale"),
    ],
    ids=[
        "unsigned",
        "wrong-secret",
        "unknown-key-id",
        "tampered-body",
        "other-path",
        "other-method",
        "stale",
        "from-the-future",
    ],
)
def test_anything_else_is_rejected(headers, method, path, body, reason):
    with pytest.raises(SignatureRejected, match=reason):
        keyring("k1:secret-one").verify(method, path, body, headers)


def test_a_tampered_timestamp_or_scheme_is_rejected():
    headers = signed()

    with pytest.raises(SignatureRejected, match="does not match"):
        keyring("k1:secret-one").verify(
            "POST", "/internal/events", BODY, {**headers, TIMESTAMP_HEADER: str(int(NOW) - 1)}
        )
    with pytest.raises(SignatureRejected, match="does not match"):
        keyring("k1:secret-one").verify(
            "POST",
            "/internal/events",
            BODY,
            {**headers, SIGNATURE_HEADER: headers[SIGNATURE_HEADER].replace("v1=", "v2=")},
        )


def test_rotation_old_and_new_keys_are_both_accepted_and_the_first_signs():
    old_sender = signed("k1:old-secret")
    new_sender = signed("k2:new-secret,k1:old-secret")
    receiver = keyring("k2:new-secret,k1:old-secret")

    assert receiver.verify("POST", "/internal/events", BODY, old_sender) == "k1"
    assert receiver.verify("POST", "/internal/events", BODY, new_sender) == "k2"
    with pytest.raises(SignatureRejected):
        keyring("k2:new-secret").verify("POST", "/internal/events", BODY, old_sender)


def test_no_configured_keys_means_the_labelled_development_key(caplog):
    development = Keyring.parse("", owner="test deployable")

    assert development.keys == Keyring.parse(DEVELOPMENT_KEYS).keys
    assert "DEVELOPMENT key" in caplog.text and "test deployable" in caplog.text


@pytest.mark.parametrize("spec", ["nosecret", ":secret", "k1:"])
def test_a_malformed_key_is_a_configuration_error(spec):
    with pytest.raises(ValueError, match="id:secret"):
        Keyring.parse(spec)
