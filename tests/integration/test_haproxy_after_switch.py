"""After the switch on `traffic.router = "haproxy"`, against a real haproxy (Debian's 2.6,
master-worker) and the demo app: the canary by weight with sticky cohorts, the preview
route, the watch window that reverts the two lying builds, all through the admin socket
with no reload. What haproxy routes to is read from haproxy itself."""

from __future__ import annotations

import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bluegreen.routers.base import in_canary
from testkit.cohorts import Users
from testkit.fabout import PhaseReader
from testkit.haproxy import HaproxyProject, PrivateHaproxy
from testkit.loadgen import LoadGen
from testkit.lying import build_lying
from testkit.nginx import PrivateNginx
from testkit.project import ssh_toml, wait_for
from testkit.sshd import TestSshd

pytestmark = pytest.mark.integration

TOKEN = "0123456789abcdef-preview-token-for-haproxy"

@pytest.fixture
def hproject(tmp_path: Path, artifacts: dict[str, Path]) -> Iterator[HaproxyProject]:
    hap = PrivateHaproxy(tmp_path / "haproxy", include_dir=True).start()
    unused_nginx = PrivateNginx(tmp_path / "nginx-unused")  # never started: haproxy routes
    arts = dict(artifacts)
    for crash in (False, True):
        built = build_lying(tmp_path, crash)
        arts[built.name.removesuffix(".tar.gz")] = built
    proj = HaproxyProject(tmp_path / "app", unused_nginx, arts, 'app = ["local"]',
                          haproxy=hap, env={"BG_PREVIEW": TOKEN},
                          extra_toml='[preview]\ntoken_env = "BG_PREVIEW"\n').write()
    try:
        yield proj
    finally:
        proj.stop_everything()
        hap.stop()


def fab_reading(project: HaproxyProject, *args: str, check: bool | None = True,
                timeout: float = 180) -> tuple[PhaseReader, str, str]:
    reader = PhaseReader()
    proc = project.fab(*args, on_line=lambda line, now: reader.feed(line, now),
                       timeout=timeout, check=check)
    return reader, proc.stdout, proc.stderr


def weights(proj: HaproxyProject) -> dict[str, int]:
    """server slot -> weight, as haproxy has it now."""
    from bluegreen.routers import haproxy_api as api

    text = proj.hap.cli(f"show servers state {proj.app}")
    return {s.slot: s.user_weight for s in api.parse_servers_state(text, proj.app)}


# ---------------------------------------------------------------- canary


def test_switch_weight_gives_new_users_a_cohort_keeps_them_and_survives_a_reload(
        hproject: HaproxyProject) -> None:
    p = hproject
    p.deploy("v1")
    p.deploy("v2", "--no-switch")
    worker = p.hap.worker_pid()
    out = p.fab("switch", "--weight", "30").stdout
    assert "30% of users on green" in out
    assert p.hap.worker_pid() == worker  # the share went through the admin socket
    assert p.routed() == {n: s for n, s in p.routed().items()}  # readable
    assert {slot: state for slot, state in
            ((n.rsplit("-", 1)[1], s) for n, s in p.routed().items())} == {
        "blue": "ready", "green": "drain"}  # no balanced request reaches the canary
    assert weights(p) == {"blue": 1, "green": 130}
    s = requests.Session()
    first = s.get(p.hap.url("/"), timeout=5)
    cookie = first.cookies.get("bluegreen_cohort")
    assert cookie and first.status_code == 200  # a user without a cohort got one
    side = first.headers["X-Bluegreen-Slot"]
    assert side == ("green" if in_canary(cookie, 30) else "blue")  # the lua router's hash
    assert {s.get(p.hap.url("/"), timeout=5).headers["X-Bluegreen-Slot"]
            for _ in range(20)} == {side}  # and keeps its side
    # the hash, cohort by cohort, is the one the lua router computes
    for i in range(200):
        c = f"u{i}"
        got = requests.get(p.hap.url("/"), cookies={"bluegreen_cohort": c},
                           timeout=5).headers["X-Bluegreen-Slot"]
        assert got == ("green" if in_canary(c, 30) else "blue"), c
    st = p.status()
    assert st["weights"] == {"blue": 70, "green": 30} and st["consistent"], st
    (view,) = st["traffic_hosts"].values()
    assert "canary share of 30%" in view["seen"]

    # a reload (an admin's `systemctl reload haproxy`) keeps the share: the state file
    p.hap.reload()
    assert p.hap.worker_pid() != worker
    assert weights(p) == {"blue": 1, "green": 130}
    assert requests.get(p.hap.url("/"), cookies={"bluegreen_cohort": cookie},
                        timeout=5).headers["X-Bluegreen-Slot"] == side
    assert p.status()["consistent"]
    # and so does a restart (stop, start): the state file again
    p.hap.stop()
    Path(p.hap.admin_socket).parent.mkdir(mode=0o700, exist_ok=True)  # stop() removed it
    p.hap.start()
    assert weights(p) == {"blue": 1, "green": 130}
    wait_for(lambda: requests.get(p.hap.url("/"), cookies={"bluegreen_cohort": cookie},
                                  timeout=5).headers.get("X-Bluegreen-Slot") == side,
             timeout=10, what=f"the cohort back on {side} after a restart")
    assert p.status()["consistent"]

    p.fab("switch", "--abort")
    assert {p.front().headers["X-Bluegreen-Slot"] for _ in range(30)} == {"blue"}
    assert {requests.get(p.hap.url("/"), cookies={"bluegreen_cohort": f"u{i}"},
                         timeout=5).headers["X-Bluegreen-Slot"] for i in range(50)} == {"blue"}
    assert weights(p) == {"blue": 1, "green": 1}
    st = p.status()
    assert st["weight"] == 0 and st["consistent"]


def test_a_canary_walk_under_load_splits_by_weight_keeps_users_and_fails_nothing(
        hproject: HaproxyProject) -> None:
    p = hproject
    # the last step (100) is a whole switch watched for watch.seconds: 4 s gives it the
    # 1,500 requests on this shared 2-core machine that the 5 and 25 steps get from --step
    p.watch_toml = "seconds = 4\ninterval = 0.2"
    p.write()
    p.deploy("v1")
    with Users(p.hap.url("/"), "bluegreen_cohort", users=3000) as users:
        time.sleep(1.0)
        reader, out, _ = fab_reading(p, "deploy", "--artifact", str(p.artifacts["v2"]),
                                     "--version", "v2", "--canary", "5,25,100", "--step", "7")
        time.sleep(1.0)
    watches = [ph for ph in reader.phases if ph.name == "watch"]
    assert [ph.ok for ph in watches] == [True, True, True], out
    # each step's gate judged haproxy's own counters of the canary slot (show stat), not
    # only its probes: the requests it counted are the users' (a probe every 0.2 s would
    # make about 35 per 7 s step)
    for weight, ph in zip((5, 25, 100), watches, strict=True):
        m = re.match(r"(\d+) requests, 0 failed over [\d.]+ s \(router counters \+ probes\)",
                     ph.note)
        assert m and int(m[1]) > 100, (weight, ph.note)
    failed = [h for h in users.hits if h.status != 200]
    assert not failed, Counter(f"{h.status} {h.error}" for h in failed)
    lines = []
    on_green_at: dict[int, set[str]] = {}
    for weight, phase in zip((5, 25, 100), watches, strict=True):
        hits = users.between(phase.start, phase.end)
        share = sum(h.slot == "green" for h in hits) / len(hits) * 100
        cohorts = len({h.user for h in hits})
        lines.append(f"{weight}%: {share:.2f}% of {len(hits)} requests from {cohorts} "
                     "cohorts on green")
        assert len(hits) >= 1500, lines  # enough to tell 3 points apart
        assert abs(share - weight) <= 3, lines
        sides = defaultdict(set)
        for h in hits:
            sides[h.user].add(h.slot)
        flapped = [u for u, s in sides.items() if len(s) > 1]
        assert not flapped, f"users on both sides at {weight}%: {flapped[:5]}"  # sticky
        on_green_at[weight] = {u for u, s in sides.items() if s == {"green"}}
    assert on_green_at[5] <= on_green_at[25], lines  # a step up only adds users
    print("\n".join(lines))
    st = p.status()
    assert st["live"] == "green" and st["weight"] == 0 and st["consistent"]
    assert weights(p) == {"blue": 1, "green": 1}
    history = [h for h in st["history"] if h["action"] == "deploy"]
    assert history[-1]["result"] == "ok" and history[-1]["failed_requests"] == 0


# ---------------------------------------------------------------- preview, promote


def test_a_preview_reaches_the_ready_slot_and_a_wrong_token_does_not(
        hproject: HaproxyProject) -> None:
    p = hproject
    p.deploy("v1")
    worker = p.hap.worker_pid()
    out = p.deploy("v2", "--no-switch").stdout
    assert "<-- ready" in out and "preview: requests with header X-Bluegreen-Preview" in out
    assert TOKEN not in out
    assert p.hap.worker_pid() == worker  # no reload
    url = p.hap.url("/")
    assert {requests.get(url, timeout=5).headers["X-App-Version"] for _ in range(20)} == {"v1"}
    by_header = requests.get(url, headers={"X-Bluegreen-Preview": TOKEN}, timeout=5)
    by_cookie = requests.get(url, cookies={"bluegreen_preview": TOKEN}, timeout=5)
    assert by_header.headers["X-App-Version"] == "v2" == by_cookie.headers["X-App-Version"]
    for wrong in (TOKEN[:-1], TOKEN + "x", "", TOKEN.upper()):
        for sent in ({"headers": {"X-Bluegreen-Preview": wrong}},
                     {"cookies": {"bluegreen_preview": wrong}}):
            got = requests.get(url, timeout=5, **sent)  # type: ignore[arg-type]
            assert got.headers["X-App-Version"] == "v1", (wrong, sent)
    # the token is in no file haproxy reads; its sha1 only in a map of mode 600
    preview_map = p.hap.prefix / "demo-preview.map"
    assert TOKEN not in p.target.read_text()
    assert (preview_map.stat().st_mode & 0o777) == 0o600
    assert TOKEN not in preview_map.read_text() and "green" in preview_map.read_text()
    # a reload keeps the route (the map file), and a wrong token still goes to v1
    p.hap.reload()
    assert requests.get(url, headers={"X-Bluegreen-Preview": TOKEN},
                        timeout=5).headers["X-App-Version"] == "v2"
    assert requests.get(url, headers={"X-Bluegreen-Preview": "nope"},
                        timeout=5).headers["X-App-Version"] == "v1"
    st = p.status()
    assert st["live"] == "blue" and st["ready"] == "green" and st["consistent"]
    assert next(iter(st["traffic_hosts"].values()))["preview"] == "green"
    p.fab("promote")
    assert p.front_version() == "v2"
    st = p.status()
    assert st["live"] == "green" and st["ready"] is None
    assert next(iter(st["traffic_hosts"].values()))["preview"] is None
    assert preview_map.read_text() == ""


# ---------------------------------------------------------------- the watch window


@pytest.mark.parametrize("build", ["lying-500", "lying-crash"])
def test_a_lying_build_is_reverted_inside_the_watch_window(hproject: HaproxyProject,
                                                           build: str) -> None:
    p = hproject
    p.watch_toml = "seconds = 10\ninterval = 0.2\nmax_error_rate = 0.01"
    p.write()
    p.deploy("v1")
    gen = LoadGen(p.hap.url(""), mix=None, label=build).start()
    try:
        gen.wait(1.0)
        started = time.monotonic()
        reader, out, err = fab_reading(p, "deploy", "--artifact", str(p.artifacts[build]),
                                       "--version", build, check=False)
        took = time.monotonic() - started
        gen.wait(1.0)
    finally:
        result = gen.stop()
    watch = next((ph for ph in reader.phases if ph.name == "watch"), None)
    assert watch is not None and not watch.ok, out + err
    assert watch.end - watch.start < 10, out + err
    assert "auto-reverted" in err and "Traceback" not in err
    assert p.front_version() == "v1" and p.routed_slot() == "blue"
    st = p.status()
    assert st["live"] == "blue" and st["consistent"]
    assert st["slots"]["green"]["status"] == "bad"
    entry = json.loads(p.history.read_text().splitlines()[-1])
    assert entry["auto_reverted"] is True
    print(f"{build}: reverted {watch.end - watch.start:.2f} s into the window "
          f"(deploy {took:.1f} s); users saw {result.failed} failed of {result.total}")


def test_a_good_build_passes_the_window_with_no_failed_request(hproject: HaproxyProject
                                                                ) -> None:
    p = hproject
    p.watch_toml = "seconds = 3\ninterval = 0.2"
    p.write()
    p.deploy("v1")
    gen = LoadGen(p.hap.url(""), mix=None, label="good").start()
    try:
        gen.wait(1.0)
        reader, out, _ = fab_reading(p, "deploy", "--artifact", str(p.artifacts["v2"]),
                                     "--version", "v2")
        gen.wait(1.0)
    finally:
        result = gen.stop()
    watch = next(ph for ph in reader.phases if ph.name == "watch")
    assert watch.ok and p.front_version() == "v2"
    assert result.failed == 0 and result.total > 100, result
    assert "0 failed of" in out
    print(f"good build: 0 failed of {result.total} requests under load")


def test_over_ssh_haproxy_takes_a_preview_a_share_and_a_promote(
        tmp_path: Path, artifacts: dict[str, Path], request: pytest.FixtureRequest) -> None:
    sshd: TestSshd = request.getfixturevalue("sshd")
    hap = PrivateHaproxy(tmp_path / "haproxy", include_dir=True).start()
    proj = HaproxyProject(tmp_path / "app", PrivateNginx(tmp_path / "nginx-unused"), artifacts,
                          f'app = ["127.0.0.1:{sshd.port}"]', ssh_toml=ssh_toml(sshd),
                          haproxy=hap, env={"BG_PREVIEW": TOKEN},
                          extra_toml='[preview]\ntoken_env = "BG_PREVIEW"\n').write()
    try:
        proj.deploy("v1")
        proj.deploy("v2", "--no-switch")
        url = hap.url("/")
        assert requests.get(url, headers={"X-Bluegreen-Preview": TOKEN},
                            timeout=5).headers["X-App-Version"] == "v2"
        assert proj.front_version() == "v1"
        proj.fab("switch", "--weight", "20")
        assert proj.status()["weights"] == {"blue": 80, "green": 20}
        assert weights(proj) == {"blue": 1, "green": 120}
        proj.fab("switch", "--abort")
        out = proj.fab("promote").stdout
        assert "0 failed of" in out and "(haproxy's own counts)" in out
        assert proj.front_version() == "v2" and proj.status()["consistent"]
    finally:
        proj.stop_everything()
        hap.stop()
