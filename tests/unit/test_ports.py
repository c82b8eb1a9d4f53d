"""One place sets the ports: moving a process with its *_PORT variable moves
every peer's default URL for it, and the `strangler` command's too."""

from __future__ import annotations

import pytest

from extracted.billing_service.config import defaults as service_defaults
from monolith.config import defaults as monolith_defaults
from strangler_proxy import cli
from strangler_proxy import config as proxy_config
from tests.support.processes import free_port

PORTS = {
    "PROXY_PORT": "8100",
    "MONOLITH_PORT": "8101",
    "BILLING_PORT": "8102",
    "MOVER_PORT": "8103",
}


@pytest.fixture
def moved_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in PORTS.items():
        monkeypatch.setenv(name, value)


def test_every_peer_url_follows_the_ports(moved_ports: None) -> None:
    proxy = proxy_config.load()
    assert proxy["MONOLITH_URL"] == "http://127.0.0.1:8101"
    assert proxy["BILLING_URL"] == "http://127.0.0.1:8102"
    assert proxy["MOVER_URL"] == "http://127.0.0.1:8103"
    assert monolith_defaults()["BILLING_SERVICE_URL"] == "http://127.0.0.1:8102"
    assert service_defaults()["USERS_URL"] == "http://127.0.0.1:8101"
    assert service_defaults()["EVENTS_URL"] == "http://127.0.0.1:8101"


def test_the_defaults_are_the_procfiles(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PORTS:
        monkeypatch.delenv(name, raising=False)
    assert proxy_config.load()["MONOLITH_URL"] == "http://127.0.0.1:8001"
    assert service_defaults()["USERS_URL"] == "http://127.0.0.1:8001"


def test_strangler_finds_the_proxy_on_proxy_port(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    nobody = str(free_port())
    monkeypatch.setenv("PROXY_PORT", nobody)
    monkeypatch.delenv("STRANGLER_URL", raising=False)
    assert cli.main(["routes"]) == 1
    assert f"cannot reach the proxy at http://127.0.0.1:{nobody}" in capsys.readouterr().err
