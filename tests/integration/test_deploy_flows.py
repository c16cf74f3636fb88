"""The core flows against a real nginx, through the `local` host and over real SSH."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from testkit.project import Project, fab_path

pytestmark = pytest.mark.integration


def test_deploy_v1_then_v2_moves_traffic_and_keeps_v1_warm(project: Project) -> None:
    out = project.deploy("v1").stdout
    assert "<-- health" in out and "<-- switch" in out  # one line per phase, with duration
    assert project.front_version() == "v1"
    project.deploy("v2")
    assert project.front_version() == "v2"
    st = project.status()
    assert st["live"] == "green" and st["consistent"] is True
    host = next(iter(st["app_hosts"].values()))
    assert host["blue"]["running"] and host["blue"]["healthy"]  # the warm old slot
    assert st["slots"]["blue"]["version"] == "v1"
    assert [h["action"] for h in st["history"]] == ["deploy", "deploy"]
    assert all(h["result"] == "ok" for h in st["history"])


def test_redeploying_the_same_artifact_uploads_nothing(project: Project) -> None:
    project.deploy("v1")
    project.deploy("v2")
    out = project.deploy("v1").stdout
    assert "0 bytes sent (already on every host)" in out
    assert project.front_version() == "v1"


def test_switch_back_and_forth(project: Project) -> None:
    project.deploy("v1")
    project.deploy("v2")
    project.fab("switch")
    assert project.front_version() == "v1"
    project.fab("switch")
    assert project.front_version() == "v2"
    project.fab("switch", "--to", "blue")
    assert project.front_version() == "v1"
    assert project.status()["live"] == "blue"


def test_rollback_returns_to_previous_release(project: Project) -> None:
    project.deploy("v1")
    project.deploy("v2")
    out = project.fab("rollback").stdout
    assert "rolled back demo to v1" in out
    assert project.front_version() == "v1"
    hist = project.status()["history"][-1]
    assert hist["action"] == "rollback" and hist["rolled_back_release"].startswith("v2-")


def test_unhealthy_build_leaves_traffic_on_the_old_release(project: Project) -> None:
    project.deploy("v1")
    proc = project.deploy("v4-unhealthy", "--set", "health.timeout=2", check=False)
    assert proc.returncode != 0
    err = proc.stderr
    assert "phase=health" in err and "did not become healthy" in err
    assert "host=" in err and "traffic was NOT switched: it stays on blue" in err
    assert "last log lines of green" in err
    assert project.front_version() == "v1"
    st = project.status()
    assert st["live"] == "blue" and st["slots"]["green"]["status"] == "failed"
    host = next(iter(st["app_hosts"].values()))
    assert host["green"]["running"] is False  # the failed release was stopped
    assert st["history"][-1]["result"] == "failed"
    # and re-running with a good build converges
    project.deploy("v2")
    assert project.front_version() == "v2"


def test_rollback_restarts_previous_release_when_its_slot_was_reused(project: Project) -> None:
    project.deploy("v1")
    project.deploy("v2")  # v1 warm in blue
    project.deploy("v4-unhealthy", "--set", "health.timeout=1", check=False)  # reuses blue
    project.fab("rollback")
    assert project.front_version() == "v1"


def test_broken_template_restores_previous_config(project: Project) -> None:
    project.deploy("v1")
    before = (project.nginx.conf_dir / "demo.conf").read_text()
    tpl = project.dir / "nginx_templates" / "broken.conf.j2"
    tpl.parent.mkdir()
    tpl.write_text("# {{ marker }}\nupstream demo_live { server {{ servers[0] }}; }\n"
                   "server { listen {{ listen }}; location / { proxy_pass http://demo_live }\n")
    proc = project.deploy("v2", "--set", 'nginx.template="nginx_templates/broken.conf.j2"',
                          check=False)
    assert proc.returncode != 0
    assert "nginx -t rejected the rendered config" in proc.stderr
    assert "previous" in proc.stderr
    assert (project.nginx.conf_dir / "demo.conf").read_text() == before
    assert project.front_version() == "v1"
    st = project.status()
    assert st["live"] == "blue" and st["consistent"]


def test_jinja_syntax_error_names_file_and_line(project: Project) -> None:
    project.deploy("v1")
    tpl = project.dir / "bad.conf.j2"
    tpl.write_text("# {{ marker }}\n{% if %}\n")
    proc = project.deploy("v2", "--set", 'nginx.template="bad.conf.j2"', check=False)
    assert "bad.conf.j2:2" in proc.stderr and "phase=render" in proc.stderr
    assert "--> upload" not in proc.stdout  # refused before anything changed
    assert project.front_version() == "v1"


def test_second_deploy_is_refused_while_the_first_holds_the_lock(project: Project) -> None:
    project.deploy("v1")
    hooks = project.dir / "hooks"
    hooks.mkdir()
    go_on = project.dir / "go-on"  # the first deploy holds the lock until the test says so
    (hooks / "pre-deploy").write_text(
        f"#!/bin/sh\ni=0; while [ ! -e {go_on} ] && [ $i -lt 600 ]; do sleep 0.1; "
        "i=$((i+1)); done\n")
    (hooks / "pre-deploy").chmod(0o755)
    first = subprocess.Popen([fab_path(), "deploy", "--artifact", str(project.artifacts["v2"]),
                              "--version", "v2", "--who", "alice"], cwd=project.dir,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = next((project.dir / "srv").glob("*/lock"), None)
        deadline = time.monotonic() + 10
        while lock is None and time.monotonic() < deadline:
            time.sleep(0.05)
            lock = next((project.dir / "srv").glob("*/lock"), None)
        (hooks / "pre-deploy").unlink()
        second = project.deploy("v3", check=False)
        assert second.returncode == 3
        assert "alice" in second.stderr and "fab unlock" in second.stderr
    finally:
        go_on.touch()
        out, err = first.communicate(timeout=60)
    assert first.returncode == 0, out + err
    assert project.front_version() == "v2"


def test_unlock_breaks_a_stale_lock_and_says_whose_it_was(project: Project) -> None:
    project.deploy("v1")
    lock = project.dir / "srv" / "demo" / "lock"
    lock.mkdir()
    (lock / "owner.json").write_text(json.dumps({
        "who": "bob", "action": "deploy", "token": "t", "started_at": 1.0,
        "machine": "ci-7", "pid": 4242, "build_url": ""}))
    refused = project.deploy("v2", check=False)
    assert "bob" in refused.stderr and "ci-7" in refused.stderr
    out = project.fab("unlock").stdout
    assert "bob" in out
    project.deploy("v2")
    assert project.front_version() == "v2"


def test_a_lock_whose_heartbeat_expired_is_taken_over_and_recorded(project: Project) -> None:
    project.deploy("v1")
    lock = project.dir / "srv" / "demo" / "lock"
    lock.mkdir()
    (lock / "owner.json").write_text(json.dumps({
        "who": "carol", "action": "deploy", "token": "t", "started_at": time.time() - 4000,
        "machine": "laptop-9", "pid": 4242, "build_url": "", "heartbeat": time.time() - 3600}))
    out = project.deploy("v2").stdout
    assert "broke a stale lock held by carol" in out and "heartbeat is 360" in out
    assert project.front_version() == "v2"
    broken = [h for h in project.status()["history"] if h["action"] == "unlock"]
    assert broken and broken[-1]["automatic"] and broken[-1]["broken_lock"]["who"] == "carol"


def test_foreign_process_on_idle_port_is_never_killed(project: Project) -> None:
    import socket

    project.deploy("v1")
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", project.green))
    squatter.listen()
    try:
        proc = project.deploy("v2", "--set", "process.port_free_timeout=0.5", check=False)
        assert proc.returncode != 0
        assert f"port {project.green} is held by a process bluegreen did not start" in proc.stderr
        assert "phase=stop" in proc.stderr
        assert project.front_version() == "v1"
        squatter.getsockname()  # still ours, still open
    finally:
        squatter.close()


def test_dry_run_changes_nothing(project: Project) -> None:
    project.deploy("v1")
    state = (project.dir / "srv" / "demo" / "state.json").read_text()
    out = project.deploy("v2", "--dry-run").stdout
    assert "DRY RUN: nothing was changed" in out
    plan = out.split("DRY RUN: nothing was changed")[1]
    # one line per step in words, true to the mode; the commands only under --verbose
    assert "upload demo-v2.tar.gz" in plan and "start " in plan and "setsid" not in plan
    if project.mode == "lua":
        assert "/bluegreen/live?port=" in plan and "-s reload" not in plan
    else:
        assert "reload nginx" in plan
    verbose = project.deploy("v2", "--dry-run", "--verbose").stdout
    assert "upload" in verbose and "setsid" in verbose
    assert ("-s reload" in verbose) == (project.mode == "reload")
    assert (project.dir / "srv" / "demo" / "state.json").read_text() == state
    assert project.front_version() == "v1"
    assert not list((project.dir / "srv" / "demo" / "releases").glob("v2-*"))


def test_missing_artifact_is_a_clear_error(project: Project) -> None:
    proc = project.fab("deploy", "--artifact", "nope.tar.gz", check=False)
    assert proc.returncode != 0
    assert "artifact" in proc.stderr and "nope.tar.gz" in proc.stderr
    assert "phase=upload" in proc.stderr


def test_bad_config_is_a_clear_error(project: Project) -> None:
    proc = project.fab("status", "--set", "health.timeout=soon", check=False)
    assert proc.returncode == 2
    assert "health.timeout" in proc.stderr and "expected a number" in proc.stderr


def test_hooks_get_bluegreen_environment_and_failing_pre_hook_aborts(project: Project) -> None:
    project.deploy("v1")
    hooks = project.dir / "hooks"
    hooks.mkdir()
    record = project.dir / "hook-env.json"
    (hooks / "post-switch").write_text(
        "#!/usr/bin/env python3\nimport json, os\n"
        f"json.dump({{k: v for k, v in os.environ.items() if k.startswith('BLUEGREEN_')}}, "
        f"open({str(record)!r}, 'w'))\n")
    (hooks / "post-switch").chmod(0o755)
    project.deploy("v2", env={"BUILD_URL": "https://ci.example/job/demo/7/"})
    env = json.loads(record.read_text())
    assert env["BLUEGREEN_APP"] == "demo" and env["BLUEGREEN_SLOT"] == "green"
    assert env["BLUEGREEN_VERSION"] == "v2" and env["BLUEGREEN_PORT"] == str(project.green)
    assert env["BLUEGREEN_BUILD_URL"] == "https://ci.example/job/demo/7/"
    (hooks / "pre-deploy").write_text("#!/bin/sh\necho no deploys on fridays >&2\nexit 1\n")
    (hooks / "pre-deploy").chmod(0o755)
    proc = project.deploy("v3", check=False)
    assert "hook pre-deploy failed" in proc.stderr
    assert project.front_version() == "v2"
    assert not list(Path(project.dir / "srv" / "demo" / "releases").glob("v3-*"))


def test_lua_mode_switches_without_a_reload(project: Project) -> None:
    if project.mode != "lua":
        pytest.skip("reload mode reloads by design")
    project.deploy("v1")
    project.deploy("v2")
    workers = sorted(project.nginx.worker_pids())
    project.fab("switch")
    project.fab("rollback")
    assert project.front_version() == "v2"
    assert sorted(project.nginx.worker_pids()) == workers  # same workers: nothing reloaded
    marker = (project.nginx.conf_dir / "demo.conf").read_text()
    assert f"port={project.green}" in marker  # the file on disk stays the truth


def test_vetoed_switch_then_rollback_serves_the_previous_release(project: Project) -> None:
    project.deploy("v1")
    project.deploy("v2")  # v1 warm in blue
    hooks = project.dir / "hooks"
    hooks.mkdir()
    (hooks / "pre-switch").write_text("#!/bin/sh\necho 'smoke test failed' >&2\nexit 1\n")
    (hooks / "pre-switch").chmod(0o755)
    proc = project.deploy("v3", check=False)  # reuses blue, healthy, then vetoed
    assert "hook pre-switch failed" in proc.stderr
    assert project.front_version() == "v2"
    (hooks / "pre-switch").unlink()
    refused = project.fab("switch", check=False)  # blue holds v3, which never finished
    assert "did not finish" in refused.stderr and project.front_version() == "v2"
    project.fab("rollback")
    assert project.front_version() == "v1"  # v1 restarted in blue, not the vetoed v3


def test_failed_verify_after_apply_restores_traffic(project: Project) -> None:
    project.deploy("v1")
    source = (Path(__file__).resolve().parents[2] / "nginx_templates"
              / ("bluegreen-lua.conf.j2" if project.mode == "lua" else "bluegreen.conf.j2"))
    text = source.read_text()
    text = text.replace("add_header X-Bluegreen-Slot {{ live_slot }} always;",
                        "add_header X-Bluegreen-Slot nope always;")
    text = text.replace("add_header X-Bluegreen-Slot $bluegreen_slot always;",
                        "add_header X-Bluegreen-Slot nope always;")
    assert "X-Bluegreen-Slot nope" in text
    (project.dir / "lying.conf.j2").write_text(text)
    proc = project.deploy("v2", "--set", 'nginx.template="lying.conf.j2"',
                          "--set", "nginx.verify_timeout=1.5", check=False)
    assert proc.returncode != 0 and "phase=verify" in proc.stderr
    assert "restored" in proc.stderr
    assert project.front_version() == "v1"  # in lua mode too: the zone was set back
    st = project.status()
    assert st["live"] == "blue" and st["consistent"]
    project.deploy("v2")  # and the next deploy converges
    assert project.front_version() == "v2"


def test_deploy_whose_lock_was_broken_does_not_switch(project: Project) -> None:
    project.deploy("v1")
    hooks = project.dir / "hooks"
    hooks.mkdir()
    # someone believes this deploy is dead and breaks its lock while it runs
    (hooks / "pre-switch").write_text(f"#!/bin/sh\nexec {fab_path()} unlock --who bob >/dev/null\n")
    (hooks / "pre-switch").chmod(0o755)
    proc = project.deploy("v2", check=False)
    assert proc.returncode == 3
    assert "lock was broken while this run held it" in proc.stderr
    assert project.front_version() == "v1"
