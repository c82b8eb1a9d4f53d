"""The `strangler` command against a scripted admin API: `set --wait` asks a
move the data gate refuses again until the gate opens (any other refusal is
final at once), and a refusal reads as sentences, field by field."""

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
        self.revisions: list[int] = []

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        if method == "GET":
            return {"revision": 7}
        self.patches += 1
        self.revisions.append(kwargs["json"]["revision"])
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


def test_a_refusal_says_each_field_once_and_in_words() -> None:
    gate = cli._field_lines("cannot go: " + GATE["gate"][0], GATE)
    assert gate == ""  # the message says it already
    fields = cli._field_lines(
        "The request is not valid", {"json": {"percent": ["Must be between 0 and 100."]}}
    )
    assert fields == "\n  json.percent: Must be between 0 and 100."
    listed = cli._field_lines("refused", {"percent": ["Must be between 0 and 100.", "Odd."]})
    assert listed == "\n  percent: Must be between 0 and 100.; Odd."


def test_a_route_moved_between_read_and_write_is_moved_from_where_it_is_now(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stale = cli.Refused(
        "refused (409): route is at revision 9, not 7", 409, {"current_revision": 9}
    )
    admin = ScriptedAdmin([stale])
    result = run(admin, monkeypatch=monkeypatch)
    assert result.exit_code == 0, result.output
    assert admin.patches == 2 and admin.revisions == [7, 9]
    assert "changed meanwhile (revision 9)" in result.output


def test_a_revision_the_operator_gave_is_never_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    stale = cli.Refused(
        "refused (409): route is at revision 9, not 7", 409, {"current_revision": 9}
    )
    admin = ScriptedAdmin([stale])
    result = run(admin, "--revision", "7", monkeypatch=monkeypatch)
    assert result.exit_code == 1 and admin.patches == 1
