"""`traffic.router = "haproxy"` through the REAL `fab`, against a real haproxy (Debian's 2.6,
master-worker, `-f haproxy.cfg -f conf.d` as the README sets it up), through the `local`
host and over real SSH to a loopback sshd.

What haproxy itself routes to is read from its admin socket (`show servers state`), never
from bluegreen's files: a test passes only when haproxy serves the slot `fab` said.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.haproxy import HaproxyProject, PrivateHaproxy
from testkit.nginx import PrivateNginx
from testkit.project import fab_path, ssh_toml
from testkit.sshd import TestSshd

pytestmark = pytest.mark.integration

TEMPLATE = Path(__file__).resolve().parents[2] / "nginx_templates" / "haproxy.cfg.j2"


@pytest.fixture(params=["local", "ssh"])
def hproject(request: pytest.FixtureRequest, tmp_path: Path, artifacts: dict[str, Path]
             ) -> Iterator[HaproxyProject]:
    hap = PrivateHaproxy(tmp_path / "haproxy", include_dir=True).start()
    unused_nginx = PrivateNginx(tmp_path / "nginx-unused")  # never started: haproxy routes
    if request.param == "local":
        hosts, ssh = 'app = ["local"]', ""
    else:
        sshd: TestSshd = request.getfixturevalue("sshd")
        hosts, ssh = f'app = ["127.0.0.1:{sshd.port}"]', ssh_toml(sshd)
    proj = HaproxyProject(tmp_path / "app", unused_nginx, artifacts, hosts, ssh_toml=ssh,
                          haproxy=hap).write()
    try:
        yield proj
    finally:
        proj.stop_everything()
        hap.stop()


def slot_servers(proj: HaproxyProject) -> dict[str, str]:
    """slot -> admin state of its (one) server, as haproxy has it."""
    return {name.rsplit("-", 1)[1]: state for name, state in proj.routed().items()}


def test_deploy_switch_and_rollback_move_haproxy_with_no_reload(hproject: HaproxyProject
                                                                ) -> None:
    p = hproject
    out = p.deploy("v1").stdout
    assert "<-- switch" in out and p.front_version() == "v1"
    assert p.routed_slot() == "blue"
    worker = p.hap.worker_pid()  # the first deploy loaded our file: the one reload

    p.deploy("v2")
    assert p.front_version() == "v2" and p.routed_slot() == "green"
    assert slot_servers(p) == {"blue": "drain", "green": "ready"}  # v1 warm, draining
    p.fab("switch")
    assert p.front_version() == "v1" and p.routed_slot() == "blue"
    p.fab("switch", "--to", "green")
    assert p.front_version() == "v2"
    out = p.fab("rollback").stdout
    assert "rolled back demo to v1" in out and p.front_version() == "v1"
    p.deploy("v3")  # drains and retires green (v2), deploys v3 there
    assert p.front_version() == "v3"
    assert p.hap.worker_pid() == worker  # every switch went through the admin socket

    # the state file follows every switch: a reload (or restart) comes up where we are
    state = (p.hap.prefix / "demo.state").read_text()
    assert state.startswith("1\n") and f"-{p.green}-green 127.0.0.1 2 " in state
    p.hap.reload()
    assert p.routed_slot() == "green" and p.front_version() == "v3"

    st = p.status()
    assert st["live"] == "green" and st["consistent"] and st["exit_code"] == 0
    (view,) = st["traffic_hosts"].values()
    assert view["routes_to"] == "green" and view["file_says"] == "green"
    assert view["seen"].startswith("haproxy's server states: ")
    assert [h["action"] for h in st["history"]] == ["deploy", "deploy", "switch", "switch",
                                                    "rollback", "deploy"]


def test_a_failed_health_check_leaves_haproxy_untouched(hproject: HaproxyProject) -> None:
    p = hproject
    p.deploy("v1")
    before = p.target.read_text()
    proc = p.deploy("v4-unhealthy", "--set", "health.timeout=2", check=False)
    assert "phase=health" in proc.stderr and "traffic was NOT switched" in proc.stderr
    assert p.target.read_text() == before
    # the live slot was never touched; the idle one was drained and retired (maint) before
    # its old release was stopped, and stays out of rotation with the failed one in it
    assert slot_servers(p) == {"blue": "ready", "green": "maint"}
    assert p.front_version() == "v1" and p.routed_slot() == "blue"
    st = p.status()
    assert st["live"] == "blue" and st["consistent"] and st["slots"]["green"]["status"] == \
        "failed"
    p.deploy("v2")  # and the next good build converges
    assert p.front_version() == "v2"


def test_a_config_haproxy_rejects_is_restored(hproject: HaproxyProject) -> None:
    p = hproject
    p.deploy("v1")
    before = p.target.read_text()
    broken = p.dir / "broken.cfg.j2"
    broken.write_text(TEMPLATE.read_text().replace("balance roundrobin",
                                                   "balance roundrobin\n    bogus_keyword 1"))
    proc = p.deploy("v2", "--set", 'haproxy.template="broken.cfg.j2"', check=False)
    assert proc.returncode == 1
    assert "haproxy -c rejected the rendered config" in proc.stderr
    assert "unknown keyword 'bogus_keyword'" in proc.stderr
    assert p.target.read_text() == before
    assert p.front_version() == "v1" and p.routed_slot() == "blue"
    st = p.status()
    assert st["live"] == "blue" and st["consistent"]


def test_a_failed_verify_puts_the_file_and_the_servers_back(hproject: HaproxyProject) -> None:
    p = hproject
    p.deploy("v1")
    p.deploy("v2")
    before = (p.target.read_text(), p.routed())
    lying = p.dir / "lying.cfg.j2"
    lying.write_text(TEMPLATE.read_text().replace(
        "X-Bluegreen-Slot %[srv_name,field(-1,-)]", "X-Bluegreen-Slot nope"))
    # same shape? no: another template is another shape, so this also takes the reload path
    proc = p.fab("switch", "--set", 'haproxy.template="lying.cfg.j2"',
                 "--set", "haproxy.verify_timeout=1", check=False)
    assert proc.returncode == 1 and "phase=verify" in proc.stderr
    assert "restored" in proc.stderr
    assert (p.target.read_text(), p.routed()) == before
    assert p.front_version() == "v2" and p.front().headers["X-Bluegreen-Slot"] == "green"
    assert p.status()["consistent"]


def test_a_change_of_shape_reloads_and_lands_on_the_new_slot(hproject: HaproxyProject) -> None:
    p = hproject
    p.deploy("v1")
    p.deploy("v2")
    p.fab("switch")  # blue live, green draining: the state file says so
    worker = p.hap.worker_pid()
    out = p.deploy("v3", "--set", 'haproxy.check_interval="700ms"').stdout
    assert p.hap.worker_pid() != worker  # the shape changed: reloaded
    assert "inter 700ms" in p.target.read_text()
    assert p.front_version() == "v3" and p.routed_slot() == "green"
    assert "<-- switch" in out


def test_status_says_what_haproxy_routes_to_and_switch_converges(hproject: HaproxyProject
                                                                 ) -> None:
    p = hproject
    p.deploy("v1")
    p.deploy("v2")
    # someone moves traffic by hand on the admin socket
    names = {slot: name for name, slot in ((n, n.rsplit("-", 1)[1]) for n in p.routed())}
    p.hap.cli(f"set server demo/{names['blue']} state ready; "
              f"set server demo/{names['green']} state drain")
    st = p.status()
    (view,) = st["traffic_hosts"].values()
    assert (view["routes_to"], view["file_says"]) == ("blue", "green")
    assert not st["consistent"] and st["exit_code"] == 5
    text = p.fab("status", check=None).stdout
    assert "routes to blue (its file says green)" in text and "haproxy's server states" in text
    refused = p.fab("switch", check=False)
    assert "routes to blue" in refused.stderr and "fab switch --to" in refused.stderr
    p.fab("switch", "--to", "green")
    assert p.routed_slot() == "green" and p.status()["consistent"]


def test_an_interrupted_switch_is_recovered_on_haproxy(hproject: HaproxyProject) -> None:
    p = hproject
    p.deploy("v1")
    p.deploy("v2")
    lying = p.dir / "lying.cfg.j2"
    lying.write_text(TEMPLATE.read_text().replace(
        "X-Bluegreen-Slot %[srv_name,field(-1,-)]", "X-Bluegreen-Slot nope"))
    # kill -9 the switch after haproxy switched, while it waits for the front door
    proc = subprocess.Popen([fab_path(), "switch", "--set", 'haproxy.template="lying.cfg.j2"',
                             "--set", "haproxy.verify_timeout=30"], cwd=p.dir,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={k: v for k, v in os.environ.items()
                                 if not k.startswith("BLUEGREEN")})
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("--> verify"):
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    assert p.routed_slot() == "blue"  # left half-way: haproxy on blue, state says green
    st = p.status()  # status recovers first (no live run holds the lock)
    assert st["live"] == "green" and st["consistent"] and st["pending_switch"] is None
    assert p.routed_slot() == "green" and p.front_version() == "v2"
    assert "X-Bluegreen-Slot nope" not in p.target.read_text()
    assert [h for h in st["history"] if h["action"] == "recover"]


def test_dry_run_plans_one_haproxy_command_for_the_switch(hproject: HaproxyProject) -> None:
    p = hproject
    p.deploy("v1")
    p.deploy("v2")
    before = (p.target.read_text(), p.routed())
    out = p.fab("switch", "--dry-run").stdout
    plan = out.split("DRY RUN: nothing was changed")[1]
    # every planned step but file operations (SFTP) and observations is a remote command
    files = ("take ", "write ", "remove ", "append ")
    commands = [ln.split("] ", 1)[1] for ln in plan.splitlines() if "] " in ln
                and not ln.strip().startswith("[all]")
                and not ln.split("] ", 1)[1].startswith(files)]
    assert commands == ["haproxy -c, then switch haproxy to blue: set server ... state "
                        "ready/drain and weight on the admin socket, save the server "
                        "state"], plan
    assert (p.target.read_text(), p.routed()) == before
