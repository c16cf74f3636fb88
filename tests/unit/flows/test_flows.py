"""The flows against recording fake hosts: which phases run, in which order, and which
changes they make, for deploy, switch, rollback and each failure path. No process, no
network: milliseconds."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from bluegreen import config, deploy
from bluegreen.errors import BluegreenError
from bluegreen.fleet import Fleet
from bluegreen.ledger import Ledger, Who
from bluegreen.plan import Plan
from bluegreen.report import Reporter
from bluegreen.run import Outcome, Run
from bluegreen.testing import FakeWorld

TARGET = "/etc/nginx/conf.d/demo.conf"
TRAFFIC_LOCK = "/etc/nginx/conf.d/.bluegreen-traffic.lock"


def make_cfg(tmp_path: Path, **nginx: object) -> config.Config:
    return config.from_dict({
        "app": "demo", "start": "{release}/bin/runner {port}",
        "paths": {"root": "/srv"},
        "health": {"timeout": 0.5, "interval": 0.01},
        "nginx": {"target": TARGET, "listen": "80", "verify_timeout": 0.3,
                  "drain_timeout": 0.1, **nginx},
        "hooks": {"dir": str(tmp_path / "hooks")},
        "watch": {"seconds": 0},
    })


def artifact(tmp_path: Path, name: str) -> Path:
    """The same build every time it is asked for (gzip stamps the time: build it once)."""
    path = tmp_path / f"{name}.tar.gz"
    if path.exists():
        return path
    with tarfile.open(path, "w:gz") as tar:
        data = f"#!/bin/sh\necho {name}\n".encode()
        info = tarfile.TarInfo("bin/runner")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    return path


class Harness:
    def __init__(self, tmp_path: Path, **nginx: object) -> None:
        self.tmp_path = tmp_path
        self.cfg = make_cfg(tmp_path, **nginx)
        self.world = FakeWorld()
        self.out = io.StringIO()

    def run(self, action: str, *, dry_run: bool = False) -> Run:
        self.world.log.clear()
        self.out = io.StringIO()
        fleet = Fleet(self.cfg, plan=Plan() if dry_run else None, opener=self.world.opener)
        report = Reporter(stream=self.out)
        return Run(self.cfg, fleet, Ledger(self.cfg, fleet, Who("tester"), report), report,
                   Outcome(action))

    def deploy(self, version: str, **kw: bool) -> Run:
        run = self.run("deploy", **kw)
        deploy.deploy(run, artifact(self.tmp_path, version), version)
        return run

    def phases(self) -> list[str]:
        """The phases that ran, as `name ok|FAILED`."""
        return [" ".join(line[4:].split()[:2]) for line in self.out.getvalue().splitlines()
                if line.startswith("<-- ")]

    def changes(self) -> list[str]:
        return [line.split(": ", 1)[1] for line in self.world.log]

    def state(self) -> dict:
        return json.loads(self.world.files["local"]["/srv/demo/state.json"])

    def history(self) -> list[dict]:
        text = self.world.files["local"]["/srv/demo/history.jsonl"].decode()
        return [json.loads(line) for line in text.splitlines()]

    def front_slot(self) -> str | None:
        port = self.world.routed.get("local")
        return {self.cfg.slots.blue: "blue", self.cfg.slots.green: "green"}.get(port or 0)

    def hook(self, name: str, body: str = "") -> Path:
        marker = self.tmp_path / f"{name}.ran"
        path = self.tmp_path / "hooks" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"#!/bin/sh\nenv | grep ^BLUEGREEN_ > {marker}\n{body}\n")
        path.chmod(0o755)
        return marker


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_first_deploy_runs_every_phase_in_order_and_goes_live_on_blue(h: Harness) -> None:
    h.deploy("v1")
    assert h.phases() == ["inspect ok", "lock ok", "state ok", "upload ok", "stop ok",
                          "start ok", "health ok", "switch ok", "verify ok"]
    beats = [c for c in h.changes() if c == "write /srv/demo/lock/owner.json"]
    assert len(beats) == 1 + 7  # the lock itself, then one per visible phase after it
    assert [c for c in h.changes() if c != "write /srv/demo/lock/owner.json"] == [
        "take /srv/demo/lock", "upload v1.tar.gz",
        "verify, unpack into /srv/demo/releases/v1-" + h.state()["slots"]["blue"]["checksum"][:12]
        + ", prune old releases",
        "write state.json",
        "drain and stop slot blue (port 8081), check the port is free",
        "write /srv/demo/slots/blue/env",
        "start /srv/demo/releases/" + h.state()["slots"]["blue"]["release"]
        + " in slot blue (port 8081)",
        f"take {TRAFFIC_LOCK}", f"write {TRAFFIC_LOCK}/owner.json",
        "write intent.json", f"write {TARGET}",
        "test the new config with nginx -t, then reload nginx (waits for old workers)",
        "write state.json", f"remove {TRAFFIC_LOCK}/owner.json", f"remove {TRAFFIC_LOCK}",
        "remove /srv/demo/intent.json", "append history.jsonl",
        "remove /srv/demo/lock/owner.json", "remove /srv/demo/lock"]
    assert h.front_slot() == "blue" and h.state()["live"] == "blue"
    assert h.history()[-1]["result"] == "ok" and h.history()[-1]["to_slot"] == "blue"
    assert "/srv/demo/lock" not in h.world.files["local"]


def test_second_deploy_moves_traffic_to_green_and_keeps_blue_warm(h: Harness) -> None:
    h.deploy("v1")
    h.deploy("v2")
    state = h.state()
    assert state["live"] == "green" and state["previous"] == "blue"
    assert state["slots"]["blue"]["status"] == "running"
    assert state["previous_release"]["version"] == "v1"
    assert h.front_slot() == "green"
    assert ("local", 8081) in h.world.running and ("local", 8082) in h.world.running


def test_a_first_deploy_that_fails_its_health_check_says_nothing_was_live(h: Harness) -> None:
    v1 = artifact(h.tmp_path, "v1")
    from bluegreen import layout, release
    h.world.unhealthy.add(layout.release_id("v1", release.inspect(v1).checksum))
    with pytest.raises(BluegreenError) as err:
        deploy.deploy(h.run("deploy"), v1, "v1")
    assert err.value.phase == "health"
    assert "traffic was NOT switched: nothing was live before, and nothing is now" in \
        err.value.hint
    assert "stays on nothing" not in err.value.hint
    assert "read the app log above" in err.value.hint  # the log is in the message, above


def test_health_failure_stops_new_slot_leaves_traffic_runs_on_failure_and_records(
        h: Harness) -> None:
    h.deploy("v1")
    ran = h.hook("on-failure")
    h.world.unhealthy.add(h.state()["slots"]["blue"]["release"].replace("v1", "v2"))
    h.world.unhealthy = {r for r in h.world.unhealthy}
    run = h.run("deploy")
    v2 = artifact(h.tmp_path, "v2")
    from bluegreen import layout, release
    h.world.unhealthy.add(layout.release_id("v2", release.inspect(v2).checksum))
    with pytest.raises(BluegreenError) as err:
        deploy.deploy(run, v2, "v2")
    assert err.value.phase == "health"
    assert "traffic was NOT switched: it stays on blue" in err.value.hint
    assert h.phases() == ["inspect ok", "lock ok", "state ok", "upload ok", "stop ok",
                          "start ok", "health FAILED", "stop ok", "on-failure ok"]
    assert not any(c.startswith(f"write {TARGET}") for c in h.changes())
    assert ("local", 8082) not in h.world.running  # the new slot was stopped again
    assert h.front_slot() == "blue" and h.state()["slots"]["green"]["status"] == "failed"
    last = h.history()[-1]
    assert last["result"] == "failed" and last["phase"] == "health"
    assert "BLUEGREEN_FAILED_PHASE=health" in ran.read_text()
    assert "/srv/demo/lock" not in h.world.files["local"]


def test_rejected_nginx_config_restores_the_file_and_keeps_new_release_idle(
        h: Harness) -> None:
    h.deploy("v1")
    before = h.world.files["local"][TARGET]
    h.world.nginx_rejects = True
    with pytest.raises(BluegreenError) as err:
        h.deploy("v2")
    assert err.value.phase == "switch" and "nginx -t rejected" in err.value.what
    assert "the new release keeps running idle in green" in err.value.hint
    assert h.world.files["local"][TARGET] == before and h.front_slot() == "blue"
    assert h.state()["live"] == "blue" and h.state()["slots"]["green"]["status"] == "running"
    assert h.history()[-1]["phase"] == "switch"


def test_failed_verify_puts_the_previous_config_back_and_reloads(h: Harness) -> None:
    h.deploy("v1")
    before = h.world.files["local"][TARGET]
    h.world.fail_on["-s reload"] = "nginx: [alert] kill(1234, 1) failed"
    with pytest.raises(BluegreenError) as err:
        h.deploy("v2")
    assert err.value.phase == "switch"
    assert "the previous nginx config was restored on local" in err.value.hint
    assert h.world.files["local"][TARGET] == before and h.front_slot() == "blue"


def test_interrupt_during_verify_undoes_the_switch(h: Harness, monkeypatch) -> None:
    h.deploy("v1")
    before = h.world.files["local"][TARGET]

    def interrupted(self: object, applied: object, slot: str) -> float:
        raise KeyboardInterrupt
    monkeypatch.setattr("bluegreen.routers.nginx.NginxRouter.verify", interrupted)
    with pytest.raises(KeyboardInterrupt):
        h.deploy("v2")
    assert h.world.files["local"][TARGET] == before and h.front_slot() == "blue"
    assert h.changes()[-8:] == [
        f"write {TARGET}", "reload nginx with the previous file",
        f"remove {TRAFFIC_LOCK}/owner.json", f"remove {TRAFFIC_LOCK}",
        "remove /srv/demo/intent.json",
        "append history.jsonl", "remove /srv/demo/lock/owner.json", "remove /srv/demo/lock"]
    assert h.history()[-1]["result"] == "interrupted" and h.history()[-1]["phase"] == "verify"
    assert h.state()["live"] == "blue"
    assert "/srv/demo/lock" not in h.world.files["local"]


def test_switch_goes_back_to_the_warm_slot_with_a_health_check(h: Harness) -> None:
    h.deploy("v1")
    h.deploy("v2")
    run = h.run("switch")
    deploy.switch(run)
    assert h.phases() == ["lock ok", "health ok", "switch ok", "verify ok"]
    assert h.front_slot() == "blue" and h.state()["live"] == "blue"
    assert not any("start" in c or "upload" in c for c in h.changes())


def test_switch_refuses_a_slot_whose_deploy_did_not_finish(h: Harness) -> None:
    h.deploy("v1")
    h.world.nginx_rejects = True
    with pytest.raises(BluegreenError):
        h.deploy("v2")
    h.world.nginx_rejects = False
    state = h.state()
    state["slots"]["green"]["status"] = "starting"
    h.world.files["local"]["/srv/demo/state.json"] = json.dumps(state).encode()
    with pytest.raises(BluegreenError) as err:
        deploy.switch(h.run("switch"))
    assert "status: starting" in err.value.what and h.front_slot() == "blue"


def test_rollback_is_instant_while_the_old_slot_is_warm(h: Harness) -> None:
    h.deploy("v1")
    h.deploy("v2")
    deploy.rollback(h.run("rollback"))
    assert h.phases() == ["lock ok", "health ok", "switch ok", "verify ok"]
    assert h.front_slot() == "blue" and h.state()["slots"]["blue"]["version"] == "v1"
    assert h.history()[-1]["rolled_back_release"].startswith("v2-")


def test_rollback_restarts_the_previous_release_when_its_slot_was_reused(h: Harness) -> None:
    h.deploy("v1")
    h.deploy("v2")  # live green, v1 warm in blue
    from bluegreen import layout, release
    v3 = artifact(h.tmp_path, "v3")
    h.world.unhealthy.add(layout.release_id("v3", release.inspect(v3).checksum))
    with pytest.raises(BluegreenError):
        deploy.deploy(h.run("deploy"), v3, "v3")  # reuses blue, fails health
    deploy.rollback(h.run("rollback"))
    assert h.phases() == ["lock ok", "stop ok", "start ok", "health ok", "switch ok",
                          "verify ok"]
    assert h.front_slot() == "blue" and h.state()["slots"]["blue"]["version"] == "v1"


def test_dry_run_plans_in_words_and_changes_nothing(h: Harness) -> None:
    h.deploy("v1")
    files = {k: dict(v) for k, v in h.world.files.items()}
    run = h.deploy("v2", dry_run=True)
    assert h.world.files == files and h.front_slot() == "blue"
    assert h.world.log == []  # not one change reached a host
    lines = run.fleet.plan.lines()  # type: ignore[union-attr]
    assert "[local] upload v2.tar.gz" in lines[2]
    assert any(line.startswith("[all] health: GET /health on port 8082") for line in lines)
    assert any("then reload nginx" in line for line in lines)
    assert not any("setsid" in line for line in lines)
    assert any("setsid" in line for line in run.fleet.plan.lines(verbose=True))  # type: ignore[union-attr]


def test_lua_mode_flips_the_live_port_without_a_reload(tmp_path: Path) -> None:
    h = Harness(tmp_path, mode="lua", control_port=9999)
    h.deploy("v1")  # the first install needs a reload: there was no lua config before
    h.deploy("v2")
    assert "set live port 8082" in h.changes()
    assert not any("reload" in c for c in h.changes())
    assert h.world.lua_live["local"] == 8082 and h.state()["live"] == "green"


# ---------------------------------------------------------------- killed mid-switch (SIGKILL)

def killed_deploy(h: Harness, version: str, after: str) -> None:
    """A deploy whose process dies right after the change named `after`: no cleanup runs."""
    from bluegreen.testing import Killed
    h.world.kill_after = after
    with pytest.raises(Killed):
        h.deploy(version)
    h.world.kill_after, h.world.dead = "", False
    # What a SIGKILL leaves behind: the locks, the intent, whatever the hosts had by then.
    # Its pid is dead, so the next run breaks both locks (tested in test_lock_and_state);
    # here the "dead" process is this test's own, so the locks go by hand.
    for path in ("/srv/demo/lock/owner.json", "/srv/demo/lock",
                 f"{TRAFFIC_LOCK}/owner.json", TRAFFIC_LOCK):
        h.world.files["local"].pop(path, None)


@pytest.mark.parametrize("after", [f"write {TARGET}", "then reload nginx"])
def test_next_deploy_recovers_a_switch_killed_mid_way(h: Harness, after: str) -> None:
    h.deploy("v1")
    killed_deploy(h, "v2", after)
    assert "/srv/demo/intent.json" in h.world.files["local"]
    assert h.state()["live"] == "blue"
    h.deploy("v3")
    out = h.out.getvalue()
    assert "found an interrupted deploy" in out and "recovered interrupted deploy" in out
    recover = [e for e in h.history() if e["action"] == "recover"]
    assert len(recover) == 1 and recover[0]["restored_hosts"] == ["local"]
    assert h.state()["live"] == "green" and h.state()["slots"]["green"]["version"] == "v3"
    assert h.front_slot() == "green" and "/srv/demo/intent.json" not in h.world.files["local"]


def test_switch_killed_after_commit_but_before_clearing_the_journal(h: Harness) -> None:
    h.deploy("v1")
    from bluegreen.testing import Killed
    # the second state write is the commit; die right after it, before the journal goes
    writes = {"n": 0}
    original = h.world.opener

    def opener(spec, cfg):  # type: ignore[no-untyped-def]
        host = original(spec, cfg)
        note = host._note

        def counting(words: str) -> None:
            note(words)
            if words == "write state.json":
                writes["n"] += 1
                if writes["n"] == 2:
                    h.world.dead = True
        host._note = counting  # type: ignore[method-assign]
        return host
    h.world.opener = opener  # type: ignore[method-assign]
    with pytest.raises(Killed):
        h.deploy("v2")
    h.world.opener, h.world.dead = original, False  # type: ignore[method-assign]
    for path in ("/srv/demo/lock/owner.json", "/srv/demo/lock",
                 f"{TRAFFIC_LOCK}/owner.json", TRAFFIC_LOCK):
        h.world.files["local"].pop(path, None)
    assert h.state()["live"] == "green" and "/srv/demo/intent.json" in h.world.files["local"]
    deploy.switch(h.run("switch"))
    assert "nothing to undo, it had committed" in h.out.getvalue()
    assert h.front_slot() == "blue"  # and the switch it was asked for ran after


def test_lua_flip_killed_before_the_state_write_is_flipped_back(tmp_path: Path) -> None:
    h = Harness(tmp_path, mode="lua", control_port=9999)
    h.deploy("v1")
    h.deploy("v2")  # live green; the next deploy targets blue with a flip
    killed_deploy(h, "v3", "set live port")
    assert h.world.lua_live["local"] == h.cfg.slots.blue and h.state()["live"] == "green"
    deploy.rollback(h.run("rollback"))
    assert "recovered interrupted deploy" in h.out.getvalue()
    assert h.world.lua_live["local"] == h.cfg.slots.blue  # rollback went on to blue (v1)
    assert h.state()["live"] == "blue" and h.state()["slots"]["blue"]["version"] == "v1"


# ---------------------------------------------------------------- status tells the truth

def status_of(h: Harness) -> dict:
    from bluegreen import views
    run = h.run("status")
    return views.status(h.cfg, run.fleet)


def test_status_is_ok_only_when_consistent_and_the_live_slot_is_healthy(h: Harness) -> None:
    from bluegreen import views
    h.deploy("v1")
    st = status_of(h)
    assert st["exit_code"] == views.STATUS_OK and st["healthy"] and st["consistent"]
    h.world.crash("local", "blue")  # the live app died
    st = status_of(h)
    assert st["exit_code"] == views.STATUS_UNHEALTHY
    assert st["app_hosts"]["local"]["blue"]["running"] is False
    assert "not healthy everywhere" in views.format_status(st)


def test_status_reads_the_front_door_not_just_the_file(h: Harness) -> None:
    from bluegreen import views
    h.deploy("v1")
    h.deploy("v2")  # green live, blue warm
    h.world.routed["local"] = h.cfg.slots.blue  # nginx serves blue, whatever the file says
    st = status_of(h)
    assert st["traffic_hosts"]["local"]["routes_to"] == "blue"
    assert st["traffic_hosts"]["local"]["file_says"] == "green"
    assert not st["consistent"] and st["exit_code"] == views.STATUS_INCONSISTENT
    assert "(its file says green)" in views.format_status(st)


def test_status_shows_a_pending_switch_and_an_unreachable_host_as_unknown(h: Harness) -> None:
    from bluegreen import views
    from bluegreen.errors import CommandFailed
    h.deploy("v1")
    killed_deploy(h, "v2", f"write {TARGET}")
    st = status_of(h)
    assert st["pending_switch"].startswith("deploy ") and st["exit_code"] == 5
    assert "PENDING: interrupted deploy" in views.format_status(st)

    def unreachable(*a: object, **k: object) -> None:
        raise CommandFailed("SSH connection lost during a file operation", host="local")
    import unittest.mock

    from bluegreen.process import PlainBackend
    with unittest.mock.patch.object(PlainBackend, "running", unreachable):
        st = status_of(h)
    assert st["app_hosts"]["local"] == {"unknown": "SSH connection lost during a file operation"}
    assert "app host local: unknown: SSH connection lost" in views.format_status(st)
    assert "down" not in views.format_status(st).split("app host local")[1].splitlines()[0]


def test_history_filters_by_action_and_age_and_reads_like_a_log(h: Harness) -> None:
    from bluegreen import views
    h.deploy("v1")
    h.deploy("v2")
    deploy.rollback(h.run("rollback"))
    fleet = h.run("history").fleet
    assert [e["action"] for e in views.history(h.cfg, fleet)] == ["deploy", "deploy",
                                                                  "rollback"]
    assert [e["version"] for e in views.history(h.cfg, fleet, action="deploy")] == ["v1", "v2"]
    assert views.history(h.cfg, fleet, since=views.parse_since("1h")) != []
    assert views.history(h.cfg, fleet, since=views.parse_since("2099-01-01")) == []
    assert views.history(h.cfg, fleet, limit=1)[0]["action"] == "rollback"
    text = views.format_history(views.history(h.cfg, fleet))
    assert "rollback" in text.splitlines()[-1] and "green->blue" in text.splitlines()[-1]
    with pytest.raises(ValueError):
        views.parse_since("yesterday")


def test_a_second_app_on_the_same_nginx_waits_for_the_first_apps_switch(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    from bluegreen import lock
    from bluegreen.errors import LockHeld
    h.deploy("v1")
    # another app's switch holds this nginx (a live run: this very process)
    other = lock.new_owner("alice", "shop deploy")
    fs = h.world.files["local"]
    fs[TRAFFIC_LOCK] = b""
    fs[f"{TRAFFIC_LOCK}/owner.json"] = other.to_json().encode()
    monkeypatch.setattr("bluegreen.traffic.TRAFFIC_LOCK_WAIT", 0.3)
    with pytest.raises(LockHeld) as err:
        h.deploy("v2")
    assert "alice (shop deploy" in err.value.what
    assert "waiting for alice (shop deploy" in h.out.getvalue()
    assert h.front_slot() == "blue" and fs[TARGET].decode().count("slot=blue") == 1
    assert fs[f"{TRAFFIC_LOCK}/owner.json"] == other.to_json().encode()  # not ours to free
    del fs[f"{TRAFFIC_LOCK}/owner.json"], fs[TRAFFIC_LOCK]  # alice's switch ends
    h.deploy("v2")
    assert h.front_slot() == "green"


# ---------------------------------------------------------------- the watch window

def watching(tmp_path: Path) -> Harness:
    h = Harness(tmp_path)
    h.cfg = config.from_dict({**_raw(h.cfg), "watch": {"seconds": 1.0, "interval": 0.05,
                                                        "min_requests": 5}})
    return h


def _raw(cfg: config.Config) -> dict:
    return {"app": cfg.app, "start": cfg.start, "paths": {"root": "/srv"},
            "health": {"timeout": 0.5, "interval": 0.01},
            "nginx": {"target": TARGET, "listen": "80", "verify_timeout": 0.3,
                      "drain_timeout": 0.1},
            "hooks": {"dir": cfg.hooks.dir}}


def release_of(h: Harness, version: str) -> str:
    from bluegreen import layout, release
    return layout.release_id(version, release.inspect(artifact(h.tmp_path, version)).checksum)


def test_a_build_whose_pages_fail_is_reverted_by_the_watch_and_marked_bad(
        tmp_path: Path) -> None:
    h = watching(tmp_path)
    ran = h.hook("on-failure")
    h.deploy("v1")
    h.world.broken.add(release_of(h, "v2"))  # /health says 200, every page says 500
    with pytest.raises(BluegreenError) as err:
        h.deploy("v2")
    assert err.value.phase == "watch" and err.value.what.startswith("auto-reverted: 5xx 100.0%")
    assert h.phases()[-3:] == ["watch FAILED", "revert ok", "on-failure ok"]
    assert h.front_slot() == "blue"
    st = h.state()
    assert st["live"] == "blue" and st["slots"]["green"]["status"] == "bad"
    assert st["previous_release"]["version"] != "v2"  # rollback can never reach it
    assert next(iter(st["bad_releases"].values())).startswith("5xx 100.0%")
    last = h.history()[-1]
    assert last["result"] == "failed" and last["auto_reverted"] is True
    assert last["watch"]["errors"] >= 5 and "BLUEGREEN_FAILED_PHASE=watch" in ran.read_text()
    # the same artifact again: refused without --force, deployed with it
    with pytest.raises(BluegreenError) as again:
        h.deploy("v2")
    assert "auto-reverted before" in again.value.what and "--force" in again.value.hint
    h.world.broken.clear()  # (say, the database it needed is back)
    run = h.run("deploy")
    deploy.deploy(run, artifact(h.tmp_path, "v2"), "v2", force=True)
    assert h.front_slot() == "green"


def test_a_build_that_crashes_after_its_health_check_is_reverted(tmp_path: Path,
                                                                 monkeypatch) -> None:
    h = watching(tmp_path)
    h.deploy("v1")
    from bluegreen import watch
    real = watch.watch

    def crash_first(*args: object, **kwargs: object) -> watch.WatchReport:
        h.world.crash("local", "green")  # dies a moment after it went live
        return real(*args, **kwargs)  # type: ignore[arg-type]
    monkeypatch.setattr(watch, "watch", crash_first)
    with pytest.raises(BluegreenError) as err:
        h.deploy("v2")
    assert "slot green exited on local" in err.value.what
    assert h.front_slot() == "blue" and h.state()["live"] == "blue"


def test_a_good_build_passes_the_window_and_the_counts_are_recorded(tmp_path: Path) -> None:
    h = watching(tmp_path)
    h.deploy("v1")
    h.deploy("v2")
    assert h.front_slot() == "green" and "watch ok" in h.phases()
    seen = h.history()[-1]["watch"]
    assert seen["requests"] >= 5 and seen["errors"] == 0 and seen["breach"] is None


def test_rollback_never_goes_back_to_a_reverted_release(tmp_path: Path) -> None:
    h = watching(tmp_path)
    h.deploy("v1")
    h.deploy("v2")  # good: live green, v1 warm in blue
    h.world.broken.add(release_of(h, "v3"))
    with pytest.raises(BluegreenError):
        h.deploy("v3")  # into blue, reverted to green
    assert h.state()["live"] == "green"
    deploy.rollback(h.run("rollback"))  # goes to v1 (restarted in blue), never to v3
    assert h.state()["slots"]["blue"]["version"] == "v1" and h.front_slot() == "blue"


def test_the_lock_record_says_which_phase_runs_now(h: Harness, monkeypatch) -> None:
    from bluegreen import lock
    from bluegreen.routers.nginx import NginxRouter
    seen: list[str] = []
    real = NginxRouter.verify

    def spy(self: NginxRouter, applied: object, slot: str) -> float:
        owner = lock.parse_owner(h.world.files["local"]["/srv/demo/lock/owner.json"].decode())
        seen.append(f"{owner.phase} {owner.phase_started_at > owner.started_at}")
        return real(self, applied, slot)  # type: ignore[arg-type]
    monkeypatch.setattr(NginxRouter, "verify", spy)
    h.deploy("v1")
    assert seen == ["verify True"]


# ---------------------------------------------------------------- defects the fault suite found

def test_a_signal_at_the_commit_write_does_not_undo_a_committed_switch(
        h: Harness, monkeypatch) -> None:
    """SIGTERM during the state write that commits the switch: the commit completes, the
    switch stands, and the run says it committed (it does not claim an undo)."""
    from bluegreen import interrupts
    from bluegreen.run import Interrupted
    h.deploy("v1")
    real = h.world.opener

    def opener(spec, cfg):  # type: ignore[no-untyped-def]
        host = real(spec, cfg)
        note = host._note
        writes = {"n": 0}

        def on_note(words: str) -> None:
            note(words)
            if words == "write state.json":
                writes["n"] += 1
                if writes["n"] == 2:  # the commit's write: a signal arrives right now
                    interrupts._handler(15, None) if interrupts._in_flight else None
        host._note = on_note  # type: ignore[method-assign]
        return host
    h.world.opener = opener  # type: ignore[method-assign]
    interrupts.reset()
    try:
        with pytest.raises(Interrupted) as stop:
            h.deploy("v2")
    finally:
        interrupts.reset()
    assert "had committed" in stop.value.summary
    assert h.front_slot() == "green" and h.state()["live"] == "green"
    assert "/srv/demo/intent.json" not in h.world.files["local"]
    assert "had committed" in h.history()[-1]["error"]


def test_lua_recovery_of_a_same_shape_flip_flips_back_without_a_reload(tmp_path: Path) -> None:
    h = Harness(tmp_path, mode="lua", control_port=9999)
    h.deploy("v1")
    h.deploy("v2")
    killed_deploy(h, "v3", "set live port")
    deploy.switch(h.run("switch"), "green")  # any command recovers first
    recovered = h.changes()
    assert "set live port 8082" in recovered
    assert not any("reload" in c for c in recovered)


def test_status_still_reports_with_a_corrupt_state_file_or_journal(h: Harness) -> None:
    from bluegreen import views
    h.deploy("v1")
    fs = h.world.files["local"]
    fs["/srv/demo/state.json"] = b"{ not json"
    fs["/srv/demo/intent.json"] = b"garbage"
    st = status_of(h)
    assert st["exit_code"] == views.STATUS_INCONSISTENT
    assert st["traffic_hosts"]["local"]["routes_to"] == "blue"  # the router still says
    assert len(st["problems"]) == 2 and st["pending_switch"].startswith("unreadable journal")
    text = views.format_status(st)
    assert "UNREADABLE: state file /srv/demo/state.json is corrupt" in text
    assert views.history(h.cfg, h.run("history").fleet)[-1]["version"] == "v1"
