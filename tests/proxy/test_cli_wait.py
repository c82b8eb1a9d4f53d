"""`strangler set --wait`: a move the data gate refuses is asked again until
the gate opens or the wait runs out; any other refusal is final at once."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from strangler_proxy import cli

GATE = {"gate": ["changes reach the service 1.21 s late (at most 1 s)"]}


class ScriptedAdmin:
    """Answers PATCH with the scripted refusals, then with the moved route."""

    def __init__(self, refusals: list[cli.Refused]) -> None:
        self.refusals = refusals
        self.patches = 0

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        if method == "GET":
            return {"revision": 7}
        self.patches += 1
        if self.refusals:
            raise self.refusals.pop(0)
        return {"mode": kwargs["json"]["mode"], "percent": 0, "revision": 8}


def run(admin: ScriptedAdmin, *args: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(cli, "Admin", lambda url, token: admin)
    monkeypatch.setattr(cli, "POLL_SECONDS", 0.0)
    return CliRunner().invoke(cli.cli, ["set", "billing-invoices", "service", "-r", "go", *args])


def test_a_gate_refusal_is_asked_again_until_it_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    admin = ScriptedAdmin([cli.Refused("refused (409)", 409, GATE)] * 2)
    result = run(admin, "--wait", "30", monkeypatch=monkeypatch)
    assert result.exit_code == 0, result.output
    assert admin.patches == 3
    assert "billing-invoices: service (revision 8)" in result.output


def test_without_wait_a_gate_refusal_is_final(monkeypatch: pytest.MonkeyPatch) -> None:
    admin = ScriptedAdmin([cli.Refused("refused (409)", 409, GATE)])
    result = run(admin, monkeypatch=monkeypatch)
    assert result.exit_code == 1 and admin.patches == 1


def test_other_refusals_are_never_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    admin = ScriptedAdmin([cli.Refused("refused (409): revision moved", 409, {})])
    result = run(admin, "--wait", "30", monkeypatch=monkeypatch)
    assert result.exit_code == 1 and admin.patches == 1
    assert "revision moved" in result.output
