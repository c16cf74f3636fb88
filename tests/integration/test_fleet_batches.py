"""Rolling deploys for real: four app hosts, each its own traffic host (its own lua nginx,
as behind a cloud balancer), in network namespaces, reached as the non-root deploy user.
A batch that fails switches the hosts already switched back; --keep-partial leaves them,
`fab status` shows which host serves what, and the same command resumes. Each batch's
switch is gated by the watch: a build that passes /health but answers 500 on real pages
(or a slot that dies) stops the rollout and puts the hosts back.

The hint tests at the end reach each printed hint of a rolling deploy, run exactly the
command it prints, and check the fleet converges (tests/faults/test_every_hint_works.py
lists them in its table)."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import signal
from collections.abc import Iterator

import pytest

from testkit.demo import build_artifacts
from testkit.fleet import FleetHost, FleetProject, TestFleet, fleet_available

pytestmark = [pytest.mark.integration, pytest.mark.fleet]

# every batch is watched (the gate); short, so the tests stay quick: 2 hosts x 5 probes a
# second plus the routers' counts pass min_requests (10) within the window
WATCH = "[watch]\nseconds = 2\ninterval = 0.2\n"


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetProject]:
    ok, reason = fleet_available()
    if not ok:
        pytest.skip(f"no fleet on this machine: {reason}")
    work = tmp_path_factory.mktemp("rolling")
    with TestFleet(4, 0, nginx_on_apps=True) as fleet:
        p = fleet.project(work / "app", build_artifacts(work / "dist",
                                                        ("v1", "v2", "v3", "v4-lying",
                                                         "v5", "v6")),
                          extra_toml=WATCH)
        try:
            yield p
        finally:
            p.stop_everything()


@contextlib.contextmanager
def broken_slot(host: FleetHost, app: str, slot: str, user: str) -> Iterator[None]:
    """The deploy user can no longer write `slot`'s directory on `host` (a disk or
    permission problem on one server): the slot cannot be stopped or started there."""
    path = host.srv / app / "slots" / slot
    path.mkdir(parents=True, exist_ok=True)
    uid, gid = pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid
    os.chown(path, 0, 0)
    path.chmod(0o755)
    try:
        yield
    finally:
        os.chown(path, uid, gid)


def test_rolling_deploy_switches_back_keeps_partial_and_resumes(proj: FleetProject) -> None:
    assert proj.fleet is not None
    proj.deploy("v1", timeout=120)  # the first release: every host at once
    assert set(proj.front_versions().values()) == {"v1"}

    out = proj.deploy("v2", "--batch", "50%", timeout=180).stdout
    assert "=== batch 1/2: app01 app02" in out and "=== batch 2/2: app03 app04" in out
    assert set(proj.front_versions().values()) == {"v2"}
    assert proj.status()["live"] == "green"

    # app03's idle slot (blue, where v3 goes) cannot be written by the deploy user
    with broken_slot(proj.fleet.host("app03"), proj.app, "blue", proj.fleet.user):
        failed = proj.deploy("v3", "--batch", "2", check=False, timeout=180)
        assert "rolling deploy stopped in batch 2/2" in failed.stderr, failed.stderr
        assert "switched 2 host(s) back to green (app01, app02)" in failed.stderr
        assert "app03: FAILED" in failed.stdout  # its own line, the moment it failed
        assert set(proj.front_versions().values()) == {"v2"}
        st = proj.status()
        assert st["live"] == "green" and st["consistent"] and st["rollout"] is None

        kept = proj.deploy("v3", "--batch", "2", "--keep-partial", check=False, timeout=180)
        assert "kept partial: 2 host(s) serve blue (app01, app02)" in kept.stderr, kept.stderr
        assert proj.front_versions() == {"app01": "v3", "app02": "v3", "app03": "v2",
                                         "app04": "v2"}
        st = proj.status()
        assert st["consistent"] and st["live"] == "green"
        assert {h: r["live"] for h, r in st["hosts_live"].items()} == {"app01": "blue",
                                                                      "app02": "blue"}
        assert st["rollout"]["done"] == ["app01", "app02"]
        text = proj.fab("status", check=None).stdout
        assert "ROLLING DEPLOY stopped: v3 -> blue on 2 host(s) (app01, app02)" in text
        # nothing else may move a fleet that stands on two slots
        refused = proj.deploy("v3", check=False, timeout=120)
        assert "is partial" in refused.stderr

    resumed = proj.deploy("v3", "--batch", "2", timeout=180).stdout
    assert "resuming the rolling deploy of v3: 2 of 4 host(s) already serve blue" in resumed
    assert "=== batch 1/1: app03 app04" in resumed
    assert set(proj.front_versions().values()) == {"v3"}
    st = proj.status()
    assert st["live"] == "blue" and st["rollout"] is None and st["consistent"]
    deploys = [e for e in proj.history_entries() if e["action"] == "deploy"]
    assert [(e["result"], e.get("phase")) for e in deploys[-5:]] == [
        ("ok", None), ("failed", "rollout"), ("failed", "rollout"), ("failed", "state"),
        ("ok", None)]
    assert deploys[-4]["rollout"]["switched_back"] == ["app01", "app02"]
    assert deploys[-1]["rollout"] == {"batch": "2", "hosts": 4, "done": 4, "failed": {},
                                      "status": "done"}


# ---------------------------------------------------------------- helpers


def start_from(proj: FleetProject, version: str) -> None:
    """Every host serves `version`, state agrees, no rollout (a plain deploy if needed)."""
    st = proj.status()
    if not (st["live"] and st["exit_code"] == 0 and st["rollout"] is None
            and set(proj.front_versions().values()) == {version}):
        proj.deploy(version, timeout=120)
    assert set(proj.front_versions().values()) == {version}


def converged(proj: FleetProject, version: str) -> None:
    """Every front door serves `version`, `fab status` says so with exit 0, and the next
    plain deploy works (and converges too)."""
    assert set(proj.front_versions().values()) == {version}
    st = proj.status()
    assert st["exit_code"] == 0 and st["consistent"] and st["rollout"] is None, st
    assert not st["hosts_live"], st
    nxt = "v1" if version != "v1" else "v2"
    proj.deploy(nxt, timeout=120)
    assert set(proj.front_versions().values()) == {nxt}
    st = proj.status()
    assert st["exit_code"] == 0 and st["consistent"] and st["rollout"] is None, st


def printed(text: str) -> list[list[str]]:
    """The `fab ...` commands a message prints between backticks, as argv lists."""
    return [cmd.split() for cmd in re.findall(r"`(fab [^`]+)`", text)]


def slot_pid(host: FleetHost, app: str, slot: str) -> int:
    return int((host.srv / app / "slots" / slot / "pid").read_text().split()[0])


def last_deploy(proj: FleetProject) -> dict[str, object]:
    return [e for e in proj.history_entries() if e["action"] == "deploy"][-1]


# ---------------------------------------------------------------- the watch gates each batch


def test_a_batch_that_answers_500_is_stopped_by_its_watch_and_switched_back(
        proj: FleetProject) -> None:
    start_from(proj, "v2")
    live = proj.status()["live"]
    ran = proj.deploy("v4-lying", "--batch", "2", check=False, timeout=180)
    assert ran.returncode != 0
    err = ran.stderr
    assert "Traceback" not in ran.stdout + err
    # the lying build passes /health (health and verify went through) ...
    assert "<-- verify" in ran.stdout and "--> watch     batch 1/2" in ran.stdout
    # ... and the batch's watch catches it on the real page, through both front doors
    assert re.search(r"rolling deploy stopped in batch 1/2: its watch on app01, app02 saw "
                     r"5xx 100\.0% > 1\.0% over \d+ s \(\d+ of \d+ requests failed\); "
                     r"v4-lying is marked bad", err), err
    assert f"switched 2 host(s) back to {live} (app01, app02): every host serves {live}" in err
    assert "=== batch 2/2" not in ran.stdout  # the rollout stopped there
    assert "[phase=watch host=app01,app02]" in err
    assert set(proj.front_versions().values()) == {"v2"}
    st = proj.status()
    assert st["exit_code"] == 0 and st["live"] == live and st["rollout"] is None
    entry = last_deploy(proj)
    assert entry["result"] == "failed" and entry["phase"] == "watch", entry
    assert entry["auto_reverted"] is True
    watch = entry["watch"]
    assert isinstance(watch, dict) and watch["batch"] == 1 and watch["hosts"] == [
        "app01", "app02"]
    assert watch["errors"] >= 10 and watch["source"] == "router counters + probes", watch
    assert entry["rollout"]["switched_back"] == ["app01", "app02"]  # type: ignore[index]
    bad = proj.state()["bad_releases"]
    assert any("5xx" in why and "app01, app02" in why for why in bad.values()), bad
    # the same artifact is refused now: a bad release is not rolled out again by accident
    again = proj.deploy("v4-lying", "--batch", "2", check=False, timeout=120)
    assert "was auto-reverted before" in again.stderr, again.stderr
    assert set(proj.front_versions().values()) == {"v2"}


@pytest.mark.parametrize(("keep", "version"), [
    pytest.param(False, "v5", id="all-back"), pytest.param(True, "v6", id="keep-partial")])
def test_a_breach_in_a_later_batch_switches_the_earlier_batches_back_too(
        proj: FleetProject, keep: bool, version: str) -> None:
    """Batch 1 passes its watch; batch 2's new slot dies on app03 during its watch: the
    release is marked bad and every host goes back, the earlier batch included; with
    --keep-partial only the breached batch does, and the printed `fab switch --to OLD`
    puts the kept hosts back. (Each case ships its own version: a breach marks it bad.)"""
    assert proj.fleet is not None
    start_from(proj, "v1")
    live = proj.status()["live"]
    new = "green" if live == "blue" else "blue"
    app03 = proj.fleet.host("app03")
    killed: list[int] = []

    def kill_on_batch_2_watch(line: str, _at: float) -> None:
        if line.startswith("--> watch     batch 2/2") and not killed:
            pid = slot_pid(app03, proj.app, new)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    ran = proj.fab("deploy", "--artifact", str(proj.artifacts[version]), "--version", version,
                   "--batch", "2", *(["--keep-partial"] if keep else []), check=False,
                   timeout=180, on_line=kill_on_batch_2_watch)
    assert killed, ran.stdout
    err = ran.stderr
    assert "Traceback" not in ran.stdout + err
    assert "<-- watch     2/2 ok" in ran.stdout  # batch 1 passed its gate
    assert re.search(r"batch 2/2: its watch on app03, app04 saw slot \w+ exited on app03 "
                     r"[\d.]+ s after the switch", err), err
    entry = last_deploy(proj)
    assert entry["phase"] == "watch" and entry["auto_reverted"] is True
    if not keep:
        assert f"switched 4 host(s) back to {live} (app01, app02, app03, app04)" in err, err
        assert set(proj.front_versions().values()) == {"v1"}
        st = proj.status()
        assert st["exit_code"] == 0 and st["rollout"] is None and not st["hosts_live"]
        assert entry["rollout"]["switched_back"] == [  # type: ignore[index]
            "app01", "app02", "app03", "app04"]
        return
    assert (f"switched the batch back to {live}, kept partial: 2 host(s) serve {new} "
            "(app01, app02)") in err, err
    assert proj.front_versions() == {"app01": version, "app02": version, "app03": "v1",
                                     "app04": "v1"}
    assert entry["rollout"]["switched_back"] == ["app03", "app04"]  # type: ignore[index]
    st = proj.status()
    assert st["consistent"] and st["rollout"]["done"] == ["app01", "app02"], st
    assert f"the kept hosts serve the bad release: `fab switch --to {live}`" in err
    cmd = printed(err)[0]
    assert cmd == ["fab", "switch", "--to", live]
    proj.fab(*cmd[1:], timeout=120)
    converged(proj, "v1")
    # and the bad release is not rolled out again by accident
    again = proj.deploy(version, "--batch", "2", check=False, timeout=120)
    assert "was auto-reverted before" in again.stderr, again.stderr


# ---------------------------------------------------------------- every batch hint works


def test_partial_rollout_refused_then_put_back_by_the_printed_switch(
        proj: FleetProject) -> None:
    """phases.py partial_rollout: a plain command on a fleet left on two slots is refused
    and prints `fab switch --to OLD`; that command puts every host back."""
    assert proj.fleet is not None
    start_from(proj, "v2")
    old = proj.status()["live"]
    with broken_slot(proj.fleet.host("app03"), proj.app, "green" if old == "blue" else "blue",
                     proj.fleet.user):
        proj.deploy("v3", "--batch", "2", "--keep-partial", check=False, timeout=180)
    assert proj.status()["rollout"]["done"] == ["app01", "app02"]
    refused = proj.fab("switch", check=False)
    assert "a rolling deploy of v3 is partial" in refused.stderr, refused.stderr
    assert f"or put every host back: `fab switch --to {old}`" in refused.stderr
    cmd = printed(refused.stderr)[-1]
    assert cmd == ["fab", "switch", "--to", old]
    proj.fab(*cmd[1:], timeout=120)
    converged(proj, "v2")


def test_rolling_deploy_finds_a_host_flipped_by_hand_and_the_printed_switch_converges(
        proj: FleetProject) -> None:
    """batches.py plan_rollout: one host's nginx was flipped by hand; the rolling deploy
    refuses before touching anything and prints `fab switch --to LIVE`."""
    assert proj.fleet is not None
    start_from(proj, "v1")
    live = proj.status()["live"]
    idle = "green" if live == "blue" else "blue"
    port = {"blue": proj.blue, "green": proj.green}[idle]
    flip = ("import urllib.request; print(urllib.request.urlopen(urllib.request.Request("
            f"'http://127.0.0.1:{proj.control_port}/bluegreen/live?port={port}', "
            "method='POST'), timeout=5).status)")
    assert proj.fleet.host("app02").run(["python3", "-c", flip]).stdout.strip() == "200"
    ran = proj.deploy("v3", "--batch", "2", check=False, timeout=120)
    assert f"state says app02 serves {live} but its nginx routes to {idle}" in ran.stderr, \
        ran.stderr
    assert "a switch was interrupted or nginx was changed by hand" in ran.stderr
    assert "=== batch" not in ran.stdout  # refused before anything moved
    cmd = printed(ran.stderr)[0]
    assert cmd == ["fab", "switch", "--to", live]
    proj.fab(*cmd[1:], timeout=120)
    converged(proj, "v1")


def test_keep_partial_status_shows_it_and_the_same_command_resumes(
        proj: FleetProject) -> None:
    """batches.py _stop (kept partial): `fix the failed hosts and run the same command
    again`; views.py: status says `resume with the same fab deploy --batch`. Both run."""
    assert proj.fleet is not None
    start_from(proj, "v1")
    old = proj.status()["live"]
    new = "green" if old == "blue" else "blue"
    command = ("--batch", "2", "--keep-partial")
    with broken_slot(proj.fleet.host("app03"), proj.app, new, proj.fleet.user):
        kept = proj.deploy("v2", *command, check=False, timeout=180)
    assert f"kept partial: 2 host(s) serve {new} (app01, app02)" in kept.stderr, kept.stderr
    assert "fix the failed hosts and run the same command again (it resumes)" in kept.stderr
    text = proj.fab("status", check=None).stdout
    assert (f"ROLLING DEPLOY stopped: v2 -> {new} on 2 host(s) (app01, app02); the others "
            f"serve {old}; failed: app03 - resume with the same `fab deploy --batch`, or "
            f"`fab switch --to {old}`") in text, text
    # the broken directory is fixed (broken_slot restored it): the very same command
    resumed = proj.deploy("v2", *command, timeout=180).stdout
    assert "resuming the rolling deploy of v2: 2 of 4 host(s) already serve" in resumed
    assert "retrying app03" in resumed and "=== batch 1/1: app03 app04" in resumed
    converged(proj, "v2")


def test_switch_back_that_fails_then_the_printed_switch_puts_every_host_back(
        proj: FleetProject) -> None:
    """batches.py _switch_back: the rollout stops and switching its first batch back fails
    too (app01's nginx directory became unwritable); once fixed, the printed `fab switch
    --to OLD` puts every host back."""
    assert proj.fleet is not None
    start_from(proj, "v2")
    old = proj.status()["live"]
    new = "green" if old == "blue" else "blue"
    target_dir = proj.fleet.host("app01").etc_nginx / "bluegreen"
    owner = target_dir.stat()
    locked: list[bool] = []

    def lock_app01_on_batch_2(line: str, _at: float) -> None:
        if line.startswith("=== batch 2/2") and not locked:
            os.chown(target_dir, 0, 0)  # the deploy user can no longer write app01's file
            locked.append(True)

    try:
        with broken_slot(proj.fleet.host("app03"), proj.app, new, proj.fleet.user):
            ran = proj.fab("deploy", "--artifact", str(proj.artifacts["v3"]), "--version",
                           "v3", "--batch", "2", check=False, timeout=180,
                           on_line=lock_app01_on_batch_2)
    finally:
        os.chown(target_dir, owner.st_uid, owner.st_gid)
    assert locked, ran.stdout
    err = ran.stderr
    assert f"switching its hosts back to {old} failed too" in err, err
    assert "Traceback" not in ran.stdout + err
    assert f"state still records the partial rollout: `fab switch --to {old}`" in err
    st = proj.status()
    assert st["rollout"] is not None and st["rollout"]["done"] == ["app01", "app02"], st
    cmd = printed(err)[-1]
    assert cmd == ["fab", "switch", "--to", old]
    proj.fab(*cmd[1:], timeout=120)
    converged(proj, "v2")
