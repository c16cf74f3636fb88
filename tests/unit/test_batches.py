"""Rolling deploys (`fab deploy --batch`) against recording fake hosts: batch planning,
a whole rollout, a failed batch switched back or kept partial, max-fail, resuming, and
state files from before rolling deploys. No process, no network."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from bluegreen import batches, config, deploy
from bluegreen.config import Config, HostSpec
from bluegreen.errors import BluegreenError
from bluegreen.fleet import Fleet
from bluegreen.httpwire import HttpReply
from bluegreen.ledger import Ledger, Who
from bluegreen.plan import Plan
from bluegreen.report import Reporter
from bluegreen.run import Outcome, Run
from bluegreen.state import State
from bluegreen.testing import FakeHost, FakeWorld

HOSTS = ["a1", "a2", "a3", "a4"]


# ---------------------------------------------------------------- planning


@pytest.mark.parametrize(("spec", "total", "sizes"), [
    ("25%", 16, [4, 4, 4, 4]),
    ("25%", 10, [3, 3, 3, 1]),
    ("2", 5, [2, 2, 1]),
    ("100%", 7, [7]),
    ("1%", 16, [1] * 16),
    ("50", 4, [4]),
    ("33%", 3, [1, 1, 1]),
])
def test_plan_batches_cuts_hosts_in_order(spec: str, total: int, sizes: list[int]) -> None:
    labels = [f"h{i:02d}" for i in range(total)]
    planned = batches.plan_batches(labels, spec)
    assert [len(b) for b in planned] == sizes
    assert [h for b in planned for h in b] == labels


@pytest.mark.parametrize("spec", ["0", "0%", "101%", "-1", "x", "2.5", ""])
def test_batch_size_refuses_nonsense(spec: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        batches.batch_size(spec, 10)


def test_batch_of_no_hosts_is_no_batches() -> None:
    assert batches.plan_batches([], "25%") == []


# ---------------------------------------------------------------- the flow


class World(FakeWorld):
    """The fake world, plus hosts whose new release never turns healthy."""

    sick: set[str]
    interrupt_on: str = ""  # Ctrl-C while this host's new release is health-checked

    def opener(self, spec: HostSpec, cfg: Config) -> FakeHost:
        world = self

        class Host(FakeHost):
            def _app(self, port: int, path: str) -> HttpReply:
                release = world.running.get((self.label, port), "")
                if self.label == world.interrupt_on and release.startswith("v2"):
                    world.interrupt_on = ""
                    raise KeyboardInterrupt
                if self.label in world.sick and release.startswith("v2"):
                    return HttpReply(503)
                return super()._app(port, path)
        return Host(spec, cfg, self)


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.world = World()
        self.world.sick = set()
        self.out = io.StringIO()
        self.raw = {"app": "demo", "start": "{release}/bin/runner {port}",
                    "hosts": {"app": HOSTS}, "paths": {"root": "/srv"},
                    "health": {"timeout": 0.3, "interval": 0.01},
                    "nginx": {"target": "/etc/nginx/conf.d/demo.conf", "listen": "80",
                              "verify_timeout": 0.3, "drain_timeout": 0.1},
                    "hooks": {"dir": str(tmp_path / "hooks")},
                    # off unless a test is about the gate: 10 s a batch otherwise
                    "watch": {"seconds": 0}}

    def cfg(self, **fleet: object) -> Config:
        return config.from_dict({**self.raw, "fleet": fleet})

    def run(self, action: str, cfg: Config, dry_run: bool = False) -> Run:
        self.out = io.StringIO()
        report = Reporter(stream=self.out)
        fleet = Fleet(cfg, opener=self.world.opener, report=report,
                      plan=Plan() if dry_run else None)
        return Run(cfg, fleet, Ledger(cfg, fleet, Who("tester"), report), report,
                   Outcome(action))

    def artifact(self, name: str) -> Path:
        path = self.tmp_path / f"{name}.tar.gz"
        if path.exists():
            return path  # the same build again: a rerun resumes
        with tarfile.open(path, "w:gz") as tar:
            data = f"#!/bin/sh\necho {name}\n".encode()
            info = tarfile.TarInfo("bin/runner")
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
        return path

    def deploy(self, version: str, dry_run: bool = False, **fleet: object) -> Outcome:
        cfg = self.cfg(**fleet)
        run = self.run("deploy", cfg, dry_run)
        self.last = run
        if cfg.fleet.batch:
            return deploy.deploy_in_batches(run, self.artifact(version), version)
        return deploy.deploy(run, self.artifact(version), version)

    def state(self) -> dict:
        return json.loads(self.world.files["a1"]["/srv/demo/state.json"])

    def history(self) -> list[dict]:
        text = self.world.files["a1"]["/srv/demo/history.jsonl"].decode()
        return [json.loads(line) for line in text.splitlines()]

    def front(self) -> dict[str, str]:
        """The slot each host's nginx routes to."""
        return {h: {8081: "blue", 8082: "green"}[self.world.routed[h]] for h in HOSTS}


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    harness = Harness(tmp_path)
    harness.deploy("v1")  # the first release goes everywhere at once
    assert harness.front() == dict.fromkeys(HOSTS, "blue")
    return harness


def test_rolling_deploy_switches_batch_by_batch_then_commits(h: Harness) -> None:
    out = h.deploy("v2", batch="2")
    assert out.result == "ok" and out.to_slot == "green"
    assert h.front() == dict.fromkeys(HOSTS, "green")
    text = h.out.getvalue()
    assert "=== batch 1/2: a1 a2" in text and "=== batch 2/2: a3 a4" in text
    # one closing line per step and batch, with the hosts counted and the slowest named
    assert text.count("<-- health    2/2 ok") == 2
    assert text.index("batch 1/2") < text.index("<-- switch    2/2 ok") < text.index("batch 2/2")
    st = h.state()
    assert st["live"] == "green" and st["previous"] == "blue"
    assert st["hosts"] == {} and st["rollout"] is None
    assert st["slots"]["green"]["status"] == "running"
    assert st["previous_release"]["version"] == "v1"
    assert h.history()[-1]["result"] == "ok"
    # each host's nginx routes to its own slots only: a batch switches alone
    conf = h.world.files["a3"]["/etc/nginx/conf.d/demo.conf"].decode()
    assert "127.0.0.1:8082" in conf and "a1:" not in conf


def test_failed_batch_switches_the_switched_hosts_back(h: Harness) -> None:
    h.world.sick.add("a3")
    with pytest.raises(batches.RolloutStopped) as err:
        h.deploy("v2", batch="2")
    assert "stopped in batch 2/2" in err.value.what and "a3" in err.value.what
    assert "switched 2 host(s) back to blue (a1, a2)" in err.value.what
    assert h.front() == dict.fromkeys(HOSTS, "blue")
    st = h.state()
    assert st["live"] == "blue" and st["hosts"] == {} and st["rollout"] is None
    assert st["slots"]["green"]["status"] == "failed"  # `fab switch` will not go there
    last = h.history()[-1]
    assert last["result"] == "failed" and last["rollout"]["switched_back"] == ["a1", "a2"]
    assert last["rollout"]["failed"] == {"a3": "health: " + last["rollout"]["failed"]["a3"]
                                         .split(": ", 1)[1]}
    # the new release of the failed batch no longer runs there
    assert ("a3", 8082) not in h.world.running and ("a4", 8082) not in h.world.running


def test_keep_partial_leaves_switched_hosts_and_the_same_command_resumes(h: Harness) -> None:
    h.world.sick.add("a3")
    with pytest.raises(batches.RolloutStopped, match="kept partial: 2 host"):
        h.deploy("v2", batch="2", keep_partial=True)
    assert h.front() == {"a1": "green", "a2": "green", "a3": "blue", "a4": "blue"}
    st = h.state()
    assert st["live"] == "blue"
    assert {k: v["live"] for k, v in st["hosts"].items()} == {"a1": "green", "a2": "green"}
    assert st["rollout"]["done"] == ["a1", "a2"] and st["rollout"]["status"] == "stopped"
    # nothing else may touch a fleet on two slots
    with pytest.raises(BluegreenError, match="is partial"):
        h.deploy("v3")
    with pytest.raises(BluegreenError, match="is partial"):
        h.deploy("v3", batch="2")
    h.world.sick.clear()
    out = h.deploy("v2", batch="2")
    assert "resuming the rolling deploy of v2: 2 of 4 host(s) already serve green" \
        in h.out.getvalue()
    assert "=== batch 1/1: a3 a4" in h.out.getvalue()
    assert out.result == "ok" and h.front() == dict.fromkeys(HOSTS, "green")
    assert h.state()["rollout"] is None and h.state()["live"] == "green"


def test_max_fail_goes_on_without_the_failed_host_and_a_rerun_retries_it(h: Harness) -> None:
    h.world.sick.add("a2")
    with pytest.raises(BluegreenError, match="rolling deploy incomplete: 3 of 4") as err:
        h.deploy("v2", batch="2", max_fail=1)
    assert err.value.host == "a2"
    assert h.front() == {"a1": "green", "a2": "blue", "a3": "green", "a4": "green"}
    assert h.state()["rollout"]["status"] == "incomplete"
    assert "1 host(s) left out: a2" in h.out.getvalue()
    h.world.sick.clear()
    h.deploy("v2", batch="2", max_fail=1)
    assert "retrying a2" in h.out.getvalue() and "=== batch 1/1: a2" in h.out.getvalue()
    assert h.front() == dict.fromkeys(HOSTS, "green") and h.state()["rollout"] is None


def test_switch_to_the_old_slot_converges_a_partial_fleet(h: Harness) -> None:
    h.world.sick.add("a3")
    with pytest.raises(batches.RolloutStopped):
        h.deploy("v2", batch="2", keep_partial=True)
    cfg = h.cfg()
    deploy.switch(h.run("switch", cfg), "blue")
    assert h.front() == dict.fromkeys(HOSTS, "blue")
    st = h.state()
    assert st["hosts"] == {} and st["rollout"] is None and st["live"] == "blue"
    # the half-rolled slot is not a switch target until it is deployed again
    with pytest.raises(BluegreenError, match="did not finish"):
        deploy.switch(h.run("switch", cfg), "green")


def test_batches_need_every_app_host_to_be_its_own_traffic_host(h: Harness) -> None:
    h.raw["hosts"] = {"app": HOSTS, "traffic": ["a1"]}
    with pytest.raises(BluegreenError, match=r"hosts\.traffic lists 1 separate"):
        h.deploy("v2", batch="2")


def test_first_deploy_in_batches_is_refused(tmp_path: Path) -> None:
    fresh = Harness(tmp_path)
    with pytest.raises(BluegreenError, match="nothing is live yet"):
        fresh.deploy("v1", batch="2")


def test_state_files_from_before_rolling_deploys_still_load() -> None:
    old = json.dumps({"app": "demo", "format": 1, "live": "blue", "previous": "",
                      "previous_release": {}, "serial": 3, "updated_at": 1.0,
                      "slots": {"blue": {"release": "v1-abc", "status": "running"}}})
    st = State.from_json(old, "demo")
    assert st.hosts == {} and st.rollout is None and st.live_on("any") == "blue"
    again = State.from_json(st.to_json(), "demo")
    assert again == st


def test_a_dry_run_of_a_rolling_deploy_plans_every_batch_and_changes_nothing(
        h: Harness) -> None:
    before = {host: dict(fs) for host, fs in h.world.files.items()}
    out = h.deploy("v2", dry_run=True, batch="2")
    assert out.result == "ok"
    plan = h.last.fleet.plan
    assert plan is not None
    lines = "\n".join(plan.lines(verbose=False))
    assert "health on a1, a2" in lines and "verify on a3, a4" in lines
    assert h.world.files == before and h.front() == dict.fromkeys(HOSTS, "blue")


def test_an_interrupted_rollout_keeps_what_it_committed_and_resumes(h: Harness) -> None:
    h.world.interrupt_on = "a3"
    with pytest.raises(KeyboardInterrupt):
        h.deploy("v2", batch="2")
    assert h.front() == {"a1": "green", "a2": "green", "a3": "blue", "a4": "blue"}
    st = h.state()
    assert st["rollout"]["status"] == "stopped" and st["rollout"]["done"] == ["a1", "a2"]
    assert h.history()[-1]["result"] == "interrupted"
    assert "/srv/demo/lock" not in h.world.files["a1"]  # released
    h.deploy("v2", batch="2")
    assert h.front() == dict.fromkeys(HOSTS, "green") and h.state()["rollout"] is None


# ---------------------------------------------------------------- the watch gates each batch


def release_of(h: Harness, version: str) -> str:
    from bluegreen import layout, release
    return layout.release_id(version, release.inspect(h.artifact(version)).checksum)


GATE = {"seconds": 0.4, "interval": 0.05, "min_requests": 4}


def test_each_batch_is_watched_and_reload_mode_says_once_it_counts_no_requests(
        h: Harness) -> None:
    h.raw["watch"] = GATE
    out = h.deploy("v2", batch="2")
    assert out.result == "ok" and h.front() == dict.fromkeys(HOSTS, "green")
    text = h.out.getvalue()
    assert "each batch watched 0.4s" in text
    assert text.count("--> watch     batch ") == 2 and text.count("<-- watch") == 2, text
    assert text.index("<-- verify") < text.index("--> watch     batch 1/2") < \
        text.index("=== batch 2/2")
    # the fake routers keep no counters (reload mode): said once, not per batch
    assert text.count("keeps no per-request counters") == 1, text
    assert out.watch is not None and out.watch["batch"] == 2 and out.watch["errors"] == 0


def test_a_batch_whose_pages_fail_stops_the_rollout_and_goes_back(h: Harness) -> None:
    h.raw["watch"] = GATE
    h.world.broken.add(release_of(h, "v2"))  # /health says 200, every page says 500
    with pytest.raises(BluegreenError) as err:
        h.deploy("v2", batch="2")
    what = err.value.what
    assert err.value.phase == "watch" and err.value.host == "a1,a2"
    assert what.startswith("rolling deploy stopped in batch 1/2: its watch on a1, a2 saw 5xx "
                           "100.0% > 1.0%"), what
    assert "switched 2 host(s) back to blue (a1, a2): every host serves blue" in what
    assert "=== batch 2/2" not in h.out.getvalue()
    assert h.front() == dict.fromkeys(HOSTS, "blue")
    st = h.state()
    assert st["rollout"] is None and st["hosts"] == {} and st["live"] == "blue"
    assert st["slots"]["green"]["status"] == "bad"
    assert [why[:10] for why in st["bad_releases"].values()] == ["5xx 100.0%"]
    entry = h.history()[-1]
    assert entry["result"] == "failed" and entry["phase"] == "watch"
    assert entry["auto_reverted"] is True and entry["rollout"]["switched_back"] == ["a1", "a2"]
    # the same artifact again is refused before anything moves
    with pytest.raises(BluegreenError, match="was auto-reverted before"):
        h.deploy("v2", batch="2")
    assert h.front() == dict.fromkeys(HOSTS, "blue")


def test_a_dry_run_plans_each_batch_watch_instead_of_watching(h: Harness) -> None:
    h.raw["watch"] = GATE
    h.deploy("v2", dry_run=True, batch="2")
    plan = h.last.fleet.plan
    assert plan is not None
    text = "\n".join(plan.lines())
    assert "watch on a1, a2" in text and "watch on a3, a4" in text, text
    assert h.front() == dict.fromkeys(HOSTS, "blue")
