"""After the switch, against a real nginx with the lua module and the demo app: a canary
walk under load (the split at each step, sticky cohorts, no failed request), a preview
through the real front door, maintenance mode in both modes, and the measured line every
operation ends with."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import requests

from bluegreen import config
from bluegreen.hosts import LocalHost
from bluegreen.routers.nginx_lua import NginxLuaRouter
from testkit.cohorts import Users
from testkit.fabout import PhaseReader
from testkit.loadgen import LoadGen
from testkit.lying import build_lying
from testkit.nginx import PrivateNginx
from testkit.project import Project, ssh_toml

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(
                  not Path("/usr/lib/nginx/modules/ngx_http_lua_module.so").exists(),
                  reason="no libnginx-mod-http-lua")]

TOKEN = "0123456789abcdef-preview-token-for-tests"


@pytest.fixture
def lua_project(tmp_path: Path, private_nginx_lua: PrivateNginx,
                artifacts: dict[str, Path]) -> Project:
    proj = Project(tmp_path / "app", private_nginx_lua, artifacts, mode="lua",
                   env={"BG_PREVIEW": TOKEN},
                   extra_toml='[preview]\ntoken_env = "BG_PREVIEW"\n').write()
    yield proj
    proj.stop_everything()


@pytest.fixture
def reload_project(tmp_path: Path, private_nginx: PrivateNginx,
                   artifacts: dict[str, Path]) -> Project:
    proj = Project(tmp_path / "app", private_nginx, artifacts, mode="reload").write()
    yield proj
    proj.stop_everything()


def fab_reading(project: Project, *args: str, timeout: float = 180) -> PhaseReader:
    reader = PhaseReader()
    project.fab(*args, on_line=lambda line, now: reader.feed(line, now), timeout=timeout)
    return reader


# ---------------------------------------------------------------- canary


def test_a_canary_walk_under_load_splits_by_weight_keeps_users_and_fails_nothing(
        lua_project: Project) -> None:
    proj = lua_project
    proj.watch_toml = "seconds = 3\ninterval = 0.2"
    proj.write()
    proj.deploy("v1")
    blue, green = "blue", "green"
    with Users(proj.nginx.url("/"), "bluegreen_cohort") as users:
        time.sleep(1.0)
        reader = fab_reading(proj, "deploy", "--artifact", str(proj.artifacts["v2"]),
                             "--version", "v2", "--canary", "5,25,100", "--step", "7")
        time.sleep(1.0)
    watches = [p for p in reader.phases if p.name == "watch"]
    assert [p.ok for p in watches] == [True, True, True], [p.__dict__ for p in reader.phases]
    failed = [h for h in users.hits if h.status != 200]
    assert not failed, Counter(f"{h.status} {h.error}" for h in failed)
    lines = []
    on_green_at: dict[int, set[str]] = {}
    for weight, phase in zip((5, 25, 100), watches, strict=True):
        hits = users.between(phase.start, phase.end)
        share = sum(h.slot == green for h in hits) / len(hits) * 100
        lines.append(f"{weight}%: {share:.2f}% of {len(hits)} requests on green")
        assert len(hits) >= 1500, lines  # enough to tell 3 points apart
        assert abs(share - weight) <= 3, lines
        sides = defaultdict(set)
        for h in hits:
            sides[h.user].add(h.slot)
        flapped = [u for u, s in sides.items() if len(s) > 1]
        assert not flapped, f"users on both sides at {weight}%: {flapped[:5]}"  # sticky
        on_green_at[weight] = {u for u, s in sides.items() if s == {green}}
        assert all(s <= {blue, green} for s in sides.values())
    # a step up only adds users: nobody on the canary at 5% is sent back at 25%
    assert on_green_at[5] <= on_green_at[25], lines
    print("\n".join(lines))
    st = proj.status()
    assert st["live"] == green and st["weight"] == 0 and st["consistent"]
    history = [h for h in st["history"] if h["action"] == "deploy"]
    assert history[-1]["result"] == "ok" and history[-1]["failed_requests"] == 0


def test_switch_weight_assigns_a_cohort_to_new_users_and_abort_returns_everyone(
        lua_project: Project) -> None:
    proj = lua_project
    proj.deploy("v1")
    proj.deploy("v2", "--no-switch")
    out = proj.fab("switch", "--weight", "30").stdout
    assert "30% of users on green" in out
    s = requests.Session()
    first = s.get(proj.nginx.url("/"), timeout=5)
    cookie = first.cookies.get("bluegreen_cohort")
    assert cookie and first.status_code == 200  # a user without a cohort got one
    sides = {s.get(proj.nginx.url("/"), timeout=5).headers["X-Bluegreen-Slot"]
             for _ in range(20)}
    assert sides == {first.headers["X-Bluegreen-Slot"]}  # and keeps its side
    st = proj.status()
    assert st["weights"] == {"blue": 70, "green": 30} and st["consistent"]
    proj.fab("switch", "--abort")
    assert {proj.front().headers["X-Bluegreen-Slot"] for _ in range(30)} == {"blue"}
    assert proj.status()["weight"] == 0


def test_reload_mode_refuses_a_canary_clearly(reload_project: Project) -> None:
    proj = reload_project
    proj.deploy("v1")
    proj.deploy("v2")
    proc = proj.fab("switch", "--weight", "10", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "a canary needs a router that can route by request on every traffic host" \
        in proc.stderr
    assert "(reload mode)" in proc.stderr
    assert proj.front_version() == "v2"


# ---------------------------------------------------------------- preview, promote


def test_a_preview_reaches_the_ready_slot_while_users_stay_on_the_live_one(
        lua_project: Project) -> None:
    proj = lua_project
    proj.deploy("v1")
    out = proj.deploy("v2", "--no-switch").stdout
    assert "<-- ready" in out and "preview: requests with header X-Bluegreen-Preview" in out
    assert "TOKEN" not in out and TOKEN not in out
    url = proj.nginx.url("/")
    plain = [requests.get(url, timeout=5).headers["X-App-Version"] for _ in range(10)]
    assert set(plain) == {"v1"}
    by_header = requests.get(url, headers={"X-Bluegreen-Preview": TOKEN}, timeout=5)
    by_cookie = requests.get(url, cookies={"bluegreen_preview": TOKEN}, timeout=5)
    wrong = requests.get(url, headers={"X-Bluegreen-Preview": TOKEN[:-1]}, timeout=5)
    assert by_header.headers["X-App-Version"] == "v2" == by_cookie.headers["X-App-Version"]
    assert wrong.headers["X-App-Version"] == "v1"
    assert TOKEN not in (proj.nginx.conf_dir / "demo.conf").read_text()
    st = proj.status()
    assert st["live"] == "blue" and st["ready"] == "green"
    assert st["slots"]["green"]["status"] == "ready"
    assert next(iter(st["traffic_hosts"].values()))["preview"] == "green"
    text = proj.fab("status", check=None).stdout
    assert "READY: green waits for `fab promote`" in text
    proj.fab("promote")
    assert proj.front_version() == "v2"
    st = proj.status()
    assert st["live"] == "green" and st["ready"] is None
    assert next(iter(st["traffic_hosts"].values()))["preview"] is None
    assert st["history"][-1]["action"] == "promote"


# ---------------------------------------------------------------- maintenance


@pytest.mark.parametrize("mode", ["lua", "reload"])
def test_maintenance_answers_503_with_the_message_and_leaves_the_slots_alone(
        request: pytest.FixtureRequest, mode: str) -> None:
    proj: Project = request.getfixturevalue(f"{mode}_project")
    proj.deploy("v1")
    proj.deploy("v2")
    workers = sorted(proj.nginx.worker_pids())
    out = proj.fab("maintenance", "on", "--message", 'Back at 14:00 "schema change"',
                   "--retry-after", "120").stdout
    assert "maintenance on" in out
    r = proj.front()
    assert r.status_code == 503 and r.headers["Retry-After"] == "120"
    assert r.text == 'Back at 14:00 "schema change"\n'
    if mode == "lua":  # no reload: the same workers answer
        assert sorted(proj.nginx.worker_pids()) == workers
    st = proj.status()
    host = next(iter(st["app_hosts"].values()))
    assert host["blue"]["running"] and host["green"]["running"]  # untouched, warm
    assert st["maintenance"]["message"] == 'Back at 14:00 "schema change"'
    assert st["consistent"] and st["exit_code"] in (0, 4)
    proj.fab("maintenance", "off")
    assert proj.front_version() == "v2" and proj.status()["maintenance"] is None
    bad = proj.fab("maintenance", "sideways", check=False)
    assert bad.returncode == 2 and "expected on or off" in bad.stderr


# ---------------------------------------------------------------- the measured switch


def test_every_operation_ends_with_what_users_saw_counted_by_nginx(
        lua_project: Project) -> None:
    proj = lua_project
    proj.deploy("v1")
    with LoadGen(proj.nginx.url(""), mix=None, label="measure") as gen:
        gen.wait(1.0)
        out = proj.deploy("v2").stdout
        rollback = proj.fab("rollback").stdout
        gen.wait(0.5)
    assert "failed of" in out and " requests during the switch (nginx's own counts)" in out
    entry = json.loads(proj.history.read_text().splitlines()[-2])
    assert entry["action"] == "deploy" and entry["failed_requests"] == 0
    assert entry["requests"] > 0
    assert f"0 failed of {entry['requests']:,} requests during the switch" in out
    assert "0 failed of" in rollback
    # the counters themselves, per slot, as the watch and the status page read them
    cfg = config.load(proj.dir / "bluegreen.toml")
    counted = NginxLuaRouter(cfg, LocalHost(config.HostSpec("local"), cfg)).counters()
    assert counted is not None
    assert counted["blue"].requests > 0 and counted["green"].requests > 0
    assert counted["green"].responses.get("2xx", 0) > 0 and counted["blue"].failed == 0
    assert counted["blue"].p99_ms is not None


def test_reload_mode_says_the_switch_was_not_measured(reload_project: Project) -> None:
    proj = reload_project
    proj.deploy("v1")
    out = proj.deploy("v2").stdout
    assert "failed requests during the switch: not measured (reload mode keeps no " \
           "per-request counters" in out
    entry = json.loads(proj.history.read_text().splitlines()[-1])
    assert "failed_requests" not in entry and "requests" not in entry


def test_over_ssh_the_control_listener_takes_a_preview_a_share_and_maintenance(
        tmp_path: Path, private_nginx_lua: PrivateNginx, artifacts: dict[str, Path],
        request: pytest.FixtureRequest) -> None:
    sshd = request.getfixturevalue("sshd")
    proj = Project(tmp_path / "app", private_nginx_lua, artifacts,
                   f'app = ["127.0.0.1:{sshd.port}"]', ssh_toml=ssh_toml(sshd), mode="lua",
                   env={"BG_PREVIEW": TOKEN},
                   extra_toml='[preview]\ntoken_env = "BG_PREVIEW"\n').write()
    try:
        proj.deploy("v1")
        proj.deploy("v2", "--no-switch")
        url = proj.nginx.url("/")
        assert requests.get(url, headers={"X-Bluegreen-Preview": TOKEN},
                            timeout=5).headers["X-App-Version"] == "v2"
        assert proj.front_version() == "v1"
        proj.fab("switch", "--weight", "20")
        assert proj.status()["weights"] == {"blue": 80, "green": 20}
        proj.fab("switch", "--abort")
        proj.fab("maintenance", "on", "--message", "über kurz: 5 min")
        r = proj.front()
        assert r.status_code == 503 and r.text == "über kurz: 5 min\n"
        proj.fab("maintenance", "off")
        out = proj.fab("promote").stdout
        assert "0 failed of" in out and proj.front_version() == "v2"
    finally:
        proj.stop_everything()


# ---------------------------------------------------------------- the watch window


@pytest.fixture
def watched(lua_project: Project, tmp_path: Path) -> Project:
    """The lua project with both lying builds beside the demo's, and a 10 s window."""
    for crash in (False, True):
        built = build_lying(tmp_path, crash)
        lua_project.artifacts[built.name.removesuffix(".tar.gz")] = built
    lua_project.watch_toml = "seconds = 10\ninterval = 0.2\nmax_error_rate = 0.01"
    return lua_project.write()


@pytest.mark.parametrize("build", ["lying-500", "lying-crash"])
def test_a_lying_build_is_reverted_inside_the_watch_window(watched: Project, build: str
                                                           ) -> None:
    """nginx's own counters of the new slot (lua mode) see the 500s, or the watch sees
    the slot's process gone: back to the warm slot inside the window, marked bad."""
    p = watched
    p.deploy("v1")
    gen = LoadGen(p.nginx.url("/"), label=build).start()
    try:
        gen.wait(1.0)
        reader = PhaseReader()
        proc = p.fab("deploy", "--artifact", str(p.artifacts[build]), "--version", build,
                     on_line=lambda line, now: reader.feed(line, now), check=False)
        gen.wait(1.0)
    finally:
        result = gen.stop()
    out, err = proc.stdout, proc.stderr
    watch = next((ph for ph in reader.phases if ph.name == "watch"), None)
    assert proc.returncode == 1 and watch is not None and not watch.ok, out + err
    assert watch.end - watch.start < 10, out + err  # inside the window
    assert "auto-reverted" in err and "Traceback" not in out + err
    assert p.front_version() == "v1"
    st = p.status()
    assert st["live"] == "blue" and st["consistent"], st
    assert st["slots"]["green"]["status"] == "bad", st
    entry = json.loads(p.history.read_text().splitlines()[-1])
    assert entry["auto_reverted"] is True
    # users: only the lying build's own answers failed, and every request after the load
    # client's last failure was answered by v1 again
    assert result.failed < result.total, result.summary()
    assert {"v1"} <= set(result.versions()), result.versions()
    print(f"{build}: reverted {watch.end - watch.start:.2f} s into the window; users saw "
          f"{result.failed} failed of {result.total}")


def test_a_good_build_passes_the_window_with_no_failed_request(watched: Project) -> None:
    p = watched
    p.watch_toml = "seconds = 3\ninterval = 0.2"
    p.write()
    p.deploy("v1")
    gen = LoadGen(p.nginx.url("/"), label="good").start()
    try:
        gen.wait(1.0)
        reader = fab_reading(p, "deploy", "--artifact", str(p.artifacts["v2"]),
                             "--version", "v2")
        gen.wait(1.0)
    finally:
        result = gen.stop()
    watch = next(ph for ph in reader.phases if ph.name == "watch")
    assert watch.ok and p.front_version() == "v2"
    assert result.failed == 0 and result.total > 100, result.summary()
