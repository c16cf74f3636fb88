"""The new flags reach the flows, through `bluegreen ...` and through `fab ...`."""

from __future__ import annotations

from typing import Any

import pytest

from bluegreen import cli, runner, tasks


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    seen: list[tuple[str, dict[str, Any]]] = []

    def fake(action: str, **kw: Any) -> int:
        seen.append((action, kw))
        return 0
    monkeypatch.setattr(cli, "execute", fake)
    monkeypatch.setattr(tasks, "execute", fake)
    return seen


def test_bluegreen_command_passes_the_new_flags(calls: list) -> None:
    cli.main(["deploy", "--artifact", "a.tgz", "--no-switch"])
    cli.main(["deploy", "--artifact", "a.tgz", "--canary", "5,25,100", "--step", "30"])
    cli.main(["switch", "--weight", "10"])
    cli.main(["switch", "--abort"])
    cli.main(["promote"])
    cli.main(["maintenance", "on", "--message", "back at 2", "--retry-after", "120"])
    assert calls[0][1]["no_switch"] is True
    assert calls[1][1]["canary"] == "5,25,100" and calls[1][1]["step"] == 30.0
    assert calls[2][1]["weight"] == 10 and calls[3][1]["abort"] is True
    assert calls[4][0] == "promote"
    assert calls[5][0] == "maintenance" and calls[5][1]["state"] == "on"
    assert calls[5][1]["message"] == "back at 2" and calls[5][1]["retry_after"] == 120


def test_fab_tasks_pass_the_new_flags(calls: list) -> None:
    from invoke import Context
    tasks.switch(Context(), weight=25)
    tasks.switch(Context())
    tasks.deploy(Context(), artifact="a", canary="5,100")
    tasks.maintenance(Context(), "off")
    assert calls[0][1]["weight"] == 25 and calls[1][1]["weight"] is None
    assert calls[2][1]["canary"] == "5,100" and calls[2][1]["step"] is None
    assert calls[3][1]["state"] == "off"
    assert {"promote", "maintenance"} <= set(tasks.ns.task_names)


def test_maintenance_needs_on_or_off_before_anything_else(capsys: pytest.CaptureFixture
                                                          ) -> None:
    rc = runner.execute("maintenance", config="/nonexistent.toml", state="sideways")
    assert rc == 2
    err = capsys.readouterr().err
    assert "expected on or off, got 'sideways'" in err and "Traceback" not in err
